"""The team tracking setup on one machine: PostgreSQL (runs, metrics, the model registry), an S3 store
(artifacts, and the DVC remote's bucket) and `mlflow server` in front of both, proxying artifacts so
that clients need only its URL, never S3 keys.

`make team-up` / `make team-down` (i.e. `python -m unitask.teamstack up|down|status`) and the
integration tests start and stop it through `TeamStack`. The S3 store is moto's server, in memory,
unless `--s3-endpoint` names an S3-compatible store (keys from the AWS_* environment). Secrets never
leave `root`: the database password is generated at initdb into `root/credentials.json` (mode 600)
and passed to the server in its environment only, like the S3 keys.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unitask.errors import ConfigError, UnitaskError

MLFLOW_BUCKET = "unitask-mlflow"  # the server's --artifacts-destination
DATA_BUCKET = "unitask-data"  # the DVC remote `team` (.dvc/config)
DATABASE = "mlflow"
PG_USER = "postgres"  # the unprivileged account PostgreSQL runs as when we are root (initdb refuses root)
DEFAULT_ROOT = Path("mlflow/team/.data")
CREDENTIALS = "credentials.json"  # under the root: the database password (mode 600)


@dataclass
class Ports:
    mlflow: int = 5000
    postgres: int = 5433
    s3: int = 9000


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _check_free(host: str, port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"team setup: {what} port {host}:{port} is in use ({exc.strerror})",
                hint=f"stop what listens there, or pick another port with --{what}-port",
            ) from None


def postgres_bin() -> Path:
    """The folder with PostgreSQL's server programs: pg_ctl on PATH, else Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if debian:
        return debian[-1].parent
    raise ConfigError(
        "team setup: PostgreSQL's server programs (initdb, pg_ctl) are not installed",
        hint="`make postgres` installs Debian's package (apt-get install postgresql), or put a PostgreSQL bin folder on PATH",
    )


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int, marker: str) -> bool:
    """The process `pid` exists and its command line contains `marker` (so a reused pid is left alone)."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _terminate(processes: list[tuple[int, str]], timeout: float = 20) -> None:
    """SIGTERM the process groups that these (pid, marker) lead (each started in its own session), wait
    for all of them together, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        processes = [(pid, marker) for pid, marker in processes if _alive(pid, marker)]
        for pid, _ in processes:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while processes and time.monotonic() < deadline:
            for pid, _ in processes:
                try:
                    os.waitpid(pid, os.WNOHANG)  # our child (the tests): reap it
                except ChildProcessError:
                    pass
            processes = [(pid, marker) for pid, marker in processes if _alive(pid, marker)]
            time.sleep(0.1)


class TeamStack:
    """PostgreSQL + S3 + `mlflow server`, with their data, logs and pids under `root`."""

    def __init__(self, root: Path, host: str = "127.0.0.1", ports: Ports | None = None, s3_endpoint: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.host = host
        self.ports = ports or Ports()
        self.s3_endpoint = s3_endpoint  # an existing S3-compatible store; None: start moto
        self.state_file = self.root / "state.json"
        self.logs = self.root / "logs"
        self.pgdata = self.root / "postgres"
        self.s3_keys = {
            "AWS_ACCESS_KEY_ID": "moto-" + secrets.token_hex(4),  # moto accepts any keys
            "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    # ---- what clients need ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.ports.mlflow}"

    @property
    def s3_url(self) -> str:
        return self.s3_endpoint or f"http://{self.host}:{self.ports.s3}"

    # ---- start and stop --------------------------------------------------------------------------
    def start(self) -> None:
        """Start PostgreSQL, the S3 store and the MLflow server; on any failure stop what started."""
        if self.status().get("healthy"):
            raise ConfigError(f"team setup: already running from {self.root}", hint="`make team-down` stops it")
        self.stop()  # what a crashed or rebooted earlier stack left behind
        _check_free("127.0.0.1", self.ports.postgres, "postgres")
        if self.s3_endpoint is None:
            _check_free(self.host, self.ports.s3, "s3")
        _check_free(self.host, self.ports.mlflow, "mlflow")
        self.logs.mkdir(parents=True, exist_ok=True)
        state: dict[str, Any] = {"url": self.url, "s3_url": self.s3_url, "ports": asdict(self.ports), "host": self.host}
        try:
            self._start_postgres(state)
            if self.s3_endpoint is None:
                self._save(state, s3=self._spawn([sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.ports.s3)], "s3"))
            self._save(state, mlflow=self._spawn_mlflow())  # starts while the S3 store gets ready
            if self.s3_endpoint is None:
                self._wait(lambda: _answers(self.s3_url), "the S3 store (moto)", state["s3"], "moto.server", "s3")
            self._buckets()
            self._wait(lambda: healthy(self.url), "the MLflow server", state["mlflow"], "mlflow", "mlflow", timeout=180)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop whatever `start` recorded in root/state.json (also from another process: `make team-down`)."""
        state = self._state()
        _terminate([(state[name], marker) for name, marker in (("mlflow", "mlflow"), ("s3", "moto.server")) if name in state])
        if state.get("postgres"):
            self._pg(["pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop"], check=False)
        self.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        state = self._state()
        if state:
            state["healthy"] = healthy(state["url"])
        return state

    # ---- the three services ----------------------------------------------------------------------
    def _start_postgres(self, state: dict[str, Any]) -> None:
        if not (self.pgdata / "PG_VERSION").is_file():
            password = secrets.token_urlsafe(24)
            self._initdb(password)
            # created 0600: the password is never readable by others, not even for a moment
            fd = os.open(self.root / CREDENTIALS, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps({"postgres_user": DATABASE, "postgres_password": password}))
        log = self.logs / "postgres.log"
        log.touch()
        self._own(log)
        options = f"-c listen_addresses=127.0.0.1 -c port={self.ports.postgres} -c unix_socket_directories=''"
        self._pg(["pg_ctl", "-D", str(self.pgdata), "-l", str(log), "-w", "-t", "60", "-o", options, "start"], log=log)
        self._save(state, postgres=True)
        import psycopg

        with psycopg.connect(self.database_url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DATABASE}")

    def _initdb(self, password: str) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.pgdata.chmod(0o700)
        self._own(self.pgdata)
        fd, pwfile = tempfile.mkstemp(prefix="unitask-pw-")
        try:
            os.write(fd, password.encode())
            os.close(fd)
            self._own(Path(pwfile))
            self._pg(["initdb", "-D", str(self.pgdata), "-U", DATABASE, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                      "-E", "UTF8", "--no-locale", "--no-instructions"])  # fmt: skip
        finally:
            os.unlink(pwfile)

    def _buckets(self) -> None:
        import boto3
        from botocore.exceptions import ClientError

        client = boto3.client("s3", endpoint_url=self.s3_url, **self.s3_credentials())
        for bucket in (MLFLOW_BUCKET, DATA_BUCKET):
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError:
                client.create_bucket(Bucket=bucket)

    def _spawn_mlflow(self) -> int:
        env = {
            **os.environ,
            **self._s3_env(),
            "MLFLOW_BACKEND_STORE_URI": self.database_url().replace("postgresql://", "postgresql+psycopg://", 1),
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no GenAI job runners (7 more processes)
        }
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", self.host, "--port", str(self.ports.mlflow),
               "--workers", "1", "--serve-artifacts", "--artifacts-destination", f"s3://{MLFLOW_BUCKET}"]  # fmt: skip
        return self._spawn(cmd, "mlflow", env)

    def database_password(self) -> str:
        return json.loads((self.root / CREDENTIALS).read_text())["postgres_password"]

    def database_url(self, database: str = DATABASE) -> str:
        """postgresql://mlflow:PASSWORD@127.0.0.1:PORT/DATABASE (the password is URL-safe)."""
        return f"postgresql://{DATABASE}:{self.database_password()}@127.0.0.1:{self.ports.postgres}/{database}"

    # ---- helpers ---------------------------------------------------------------------------------
    def _s3_env(self) -> dict[str, str]:
        if self.s3_endpoint is None:
            return self.s3_keys
        return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}

    def s3_credentials(self) -> dict[str, str]:
        env = self._s3_env()
        names = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key", "AWS_DEFAULT_REGION": "region_name"}
        return {arg: env[var] for var, arg in names.items() if var in env}

    def _as_root(self) -> bool:
        return os.geteuid() == 0

    def _own(self, path: Path) -> None:
        """As root, hand `path` to the PostgreSQL account (created when missing)."""
        if not self._as_root():
            return
        import pwd

        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", PG_USER], check=True)
        shutil.chown(path, PG_USER, PG_USER)

    def _pg(self, args: list[str], log: Path | None = None, check: bool = True) -> None:
        """Run a PostgreSQL program (as the postgres account when we are root), in its own session."""
        user = PG_USER if self._as_root() else None
        cmd = [str(postgres_bin() / args[0]), *args[1:]]
        done = subprocess.run(cmd, user=user, capture_output=True, text=True, start_new_session=True, cwd="/")
        if check and done.returncode != 0:
            detail = (done.stdout + done.stderr).strip() + (f"\n{_tail(log)}" if log else "")
            hint = "see the message above"
            if user and "ermission denied" in detail:
                hint = f"the '{PG_USER}' account must be able to reach {self.pgdata}: allow it into the parent folders (chmod o+x) or use --root elsewhere"
            raise ConfigError(f"team setup: {args[0]} failed:\n{detail}", hint=hint)

    def _spawn(self, cmd: list[str], name: str, env: dict[str, str] | None = None) -> int:
        """Start `cmd` in its own session, output to logs/<name>.log; its pid."""
        with (self.logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True, cwd=self.root).pid  # fmt: skip

    def _wait(self, ready: Any, what: str, pid: int, marker: str, name: str, timeout: float = 60) -> None:
        log = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not _alive(pid, marker):
                raise ConfigError(f"team setup: {what} exited while starting; its log ({log}) ends:\n{_tail(log)}")
            time.sleep(0.25)
        raise ConfigError(f"team setup: {what} did not answer within {timeout:.0f} s; its log ({log}) ends:\n{_tail(log)}")

    def _state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}

    def _save(self, state: dict[str, Any], **entries: Any) -> None:
        state.update(entries)
        self.state_file.write_text(json.dumps(state, indent=1))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _print_up(stack: TeamStack) -> None:
    store = "moto, in memory: its objects are lost at team-down" if stack.s3_endpoint is None else "your store"
    print(f"""team setup is up (data, logs: {stack.root})
  MLflow      {stack.url}   runs in PostgreSQL 127.0.0.1:{stack.ports.postgres}, artifacts in s3://{MLFLOW_BUCKET} through the server
  S3          {stack.s3_url}   ({store})
clients:      unitask <stage> --set tracking.uri={stack.url}   (or tracking.uri in params.yaml; no S3 keys)
DVC remote:   dvc remote modify --local team endpointurl {stack.s3_url}
              and S3 keys in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY{"; moto takes any" if stack.s3_endpoint is None else ""})
stop:         make team-down""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unitask.teamstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="data, logs and pids (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface of the MLflow server and S3 store (default: %(default)s)")
    parser.add_argument("--mlflow-port", type=int, default=Ports.mlflow)
    parser.add_argument("--postgres-port", type=int, default=Ports.postgres)
    parser.add_argument("--s3-port", type=int, default=Ports.s3)
    parser.add_argument("--s3-endpoint", metavar="URL", help="use this S3-compatible store (keys from AWS_* variables) instead of starting moto")
    args = parser.parse_args(argv)
    stack = TeamStack(args.root, args.host, Ports(args.mlflow_port, args.postgres_port, args.s3_port), args.s3_endpoint)
    try:
        if args.command == "up":
            started = time.monotonic()
            stack.start()
            _print_up(stack)
            print(f"started in {time.monotonic() - started:.1f} s")
        elif args.command == "down":
            stack.stop()
            print("team setup stopped (PostgreSQL data stays in " + str(stack.pgdata) + ")")
        else:
            state = stack.status()
            print(json.dumps(state, indent=1) if state else "team setup: not running")
            return 0 if state.get("healthy") else 1
    except UnitaskError as exc:
        print(f"unitask: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
