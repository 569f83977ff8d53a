"""The team setup, for real on loopback: PostgreSQL (Debian's package), an S3 store (moto's server) and
`mlflow server` with proxied artifacts, started by `unitask.teamstack` as `make team-up` does. The smoke
chain logs to it through DVC, a model is registered and loaded by alias, the DVC S3 remote round-trips
the data, and no credential lands anywhere it should not."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CHAIN_TIMEOUT, REPO, logged_model_files
from test_dvc_pipeline import _merge
from unitask.teamstack import DATA_BUCKET, MLFLOW_BUCKET, Ports, TeamStack, healthy, free_port

BIN = Path(sys.executable).parent
TASK = "sms_spam"
# planted in the chain's environment: it must show up in no file, run, log or compiled pipeline
FAKE_SECRET = "unitask-fake-secret-" + secrets.token_hex(6)
CLIENT_ENV = {"AWS_ACCESS_KEY_ID": "unitask-fake-key-id", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def stack():
    """The team setup on free loopback ports; its root lies in /tmp, where the postgres account reaches it."""
    root = Path(tempfile.mkdtemp(prefix="unitask-team-"))
    root.chmod(0o755)
    team = TeamStack(root, ports=Ports(free_port(), free_port(), free_port()))
    started = time.monotonic()
    team.start()
    print(f"\nteam setup started in {time.monotonic() - started:.1f} s")
    yield team
    team.stop()
    shutil.rmtree(root, ignore_errors=True)


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", "OMP_NUM_THREADS": "1", **CLIENT_ENV}


def _run(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env())
    if ok:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _only(params: dict[str, Any], task: str) -> None:
    """Keep one task: replacing `tasks:` is all it takes (stage task lists default to every declared task)."""
    params["tasks"] = {task: params["tasks"][task]}


@pytest.fixture(scope="module")
def clone(stack, tmp_path_factory) -> dict[str, Any]:
    """A scratch copy of the project on the smoke profile, one task, tracking to the team server, the
    committed DVC remote pointed at the stack's S3 store. `dvc repro` runs the chain up to the fine-tunes;
    the rest runs by CLI up to `unitask register` (DVC's register stage also wants the fusion model)."""
    root = tmp_path_factory.mktemp("team-clone")
    for name in ["params.yaml", "dvc.yaml", "data.dvc", ".dvcignore", "src"]:
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, root / name))
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), yaml.safe_load((REPO / "tests/smoke.yaml").read_text()))
    _only(params, TASK)
    params["tracking"]["uri"] = stack.url
    params["register"]["include_fusion"] = False  # fusion needs the text+image task (5,000 images): not here
    params["llm"]["tasks"] = []  # a real decoder LLM: tests/test_llm.py (evaluate then skips its models)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run([str(BIN / "unitask"), "dvc"], root)  # the DVC stages of the one task
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")  # the committed remote `team`
    _run([str(BIN / "dvc"), "remote", "modify", "--local", "team", "endpointurl", stack.s3_url], root)
    _run([str(BIN / "unitask"), "data", "fetch"], root)
    _run([str(BIN / "dvc"), "commit", "--force", "-q", "data.dvc"], root)  # data.dvc now holds the one task
    started = time.monotonic()
    log = ""
    for command in ([BIN / "dvc", "repro", "finetune"], [BIN / "unitask", "baseline"], [BIN / "unitask", "multitask"],
                    [BIN / "unitask", "evaluate"], [BIN / "unitask", "register"]):  # fmt: skip
        done = _run([str(part) for part in command], root)
        log += done.stdout + done.stderr
    print(f"\nsmoke chain (one task, prepare .. register) against the team server: {time.monotonic() - started:.1f} s")
    return {"root": root, "log": log}


def _client(stack: TeamStack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.url, registry_uri=stack.url)


def _runs(stack: TeamStack) -> dict[str, Any]:
    client = _client(stack)
    experiment = client.get_experiment_by_name("unitask")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.timeout(CHAIN_TIMEOUT)
def test_the_smoke_chain_logs_runs_metrics_and_artifacts_to_the_team_server(stack, clone):
    import boto3
    import mlflow
    import psycopg

    runs = _runs(stack)
    for name in (f"prepare:{TASK}", f"validate:{TASK}", "pretrain", f"finetune:{TASK}", "multitask", "register"):
        assert name in runs and runs[name].info.status == "FINISHED", sorted(runs)
    finetune = runs[f"finetune:{TASK}"]
    assert f"test/{TASK}/macro_f1" in finetune.data.metrics and finetune.data.params["task"] == TASK
    assert finetune.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients hold no S3 endpoint
    client = _client(stack)
    mlflow.set_tracking_uri(stack.url)
    assert {"model.safetensors", "labels.json"} <= logged_model_files(finetune)  # the fine-tune's LoggedModel
    history = client.get_metric_history(finetune.info.run_id, "loss")
    assert history, "per-step training metrics reached the server"

    # where the server put them: run rows in PostgreSQL, artifact bytes in the S3 bucket
    with psycopg.connect(stack.database_url()) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM runs")}
    assert set(runs) <= names
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, **stack.s3_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=MLFLOW_BUCKET, Prefix=finetune.info.experiment_id)["Contents"]]
    (model,) = mlflow.search_logged_models(experiment_ids=[finetune.info.experiment_id], output_format="list",
                                           filter_string=f"source_run_id = '{finetune.info.run_id}'")
    assert any(k.endswith("/model.safetensors") and model.model_id in k for k in keys), keys  # a LoggedModel's bytes


def test_unitask_register_registers_a_version_that_loads_by_alias(stack, clone):
    import mlflow

    from unitask.inference import load_predictor

    client = _client(stack)
    model = client.get_registered_model("unitask")
    assert model.aliases == {"challenger": "1", "champion": "1"}  # the first version: nothing to beat
    version = client.get_model_version_by_alias("unitask", "champion")
    assert client.get_run(version.run_id).info.run_name == "register"
    assert json.loads((clone["root"] / "reports/register.json").read_text())["version"] == 1

    rows = [{"task": TASK, "text": "WINNER! claim your free prize now"}, {"task": TASK, "text": "see you at lunch"}]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(stack.url)
    try:
        served = mlflow.pyfunc.load_model("models:/unitask@champion").predict(rows)  # through the server's proxy
    finally:
        mlflow.set_tracking_uri(previous)
    assert served == load_predictor(clone["root"] / "models/multitask").predict(rows)
    assert {answer["label"] for answer in served} <= {"ham", "spam"}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_dvc_s3_remote_round_trips_the_data(stack, clone):
    import boto3

    root = clone["root"]
    before = {name: _digests(root / name) for name in ("data/raw", "data/prepared", "models/finetune")}
    assert before["data/raw"] and before["models/finetune"]
    targets = ["data.dvc", "finetune", "--with-deps"]  # what the chain ran (not the baseline)
    _run([str(BIN / "dvc"), "push", *targets], root)
    for name in (".dvc/cache", "data/raw", f"data/prepared/{TASK}", "models/pretrained", f"models/finetune/{TASK}"):
        shutil.rmtree(root / name)  # the cache and every output (git keeps the .gitignore files beside them)
    _run([str(BIN / "dvc"), "pull", *targets], root)
    assert {name: _digests(root / name) for name in before} == before
    assert json.loads(_run([str(BIN / "dvc"), "status", "--json", *targets], root).stdout) == {}
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, **stack.s3_credentials())
    assert s3.list_objects_v2(Bucket=DATA_BUCKET, Prefix="dvc/files/md5/")["KeyCount"] > 0


def test_dvc_push_to_a_store_that_is_down_fails_clearly(clone):
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    root = clone["root"]
    dvc = str(BIN / "dvc")
    _run([dvc, "remote", "modify", "--local", "team", "endpointurl", down], root)
    started = time.monotonic()
    done = _run([dvc, "push"], root, ok=False)
    print(f"\ndvc push to a store that is down failed in {time.monotonic() - started:.1f} s")
    assert done.returncode != 0
    assert f'Could not connect to the endpoint URL: "{down}/{DATA_BUCKET}/dvc/' in done.stderr


def test_no_credential_lands_in_files_runs_logs_or_the_compiled_pipeline(stack, clone, tmp_path):
    root = clone["root"]
    package = tmp_path / "pipeline.yaml"
    compiled = _run([str(BIN / "unitask"), "pipeline", "compile", "--output", str(package)], root)
    server_secrets = [stack.database_password(), stack.s3_keys["AWS_SECRET_ACCESS_KEY"]]

    texts = {"chain output": clone["log"], "compile output": compiled.stdout + compiled.stderr,
             "compiled pipeline": package.read_text()}  # fmt: skip
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(root).parts:
            texts[str(path.relative_to(root))] = path.read_bytes().decode("utf-8", "replace")
    for run in _runs(stack).values():
        texts[f"run {run.info.run_name}"] = json.dumps([run.data.params, run.data.tags])
    for name, text in texts.items():
        assert FAKE_SECRET not in text, f"the client's S3 secret leaked into {name}"
        assert not any(s in text for s in server_secrets), f"a server credential leaked into {name}"
    assert any(name.startswith("data/raw/") for name in texts) and any(name.startswith("run ") for name in texts)
    # the server's own logs hold neither its database password nor its S3 keys
    for log in (stack.root / "logs").iterdir():
        assert not any(s in log.read_text(errors="replace") for s in server_secrets), log


# ---- what is tracked: Kubernetes manifests and the repository ------------------------------------

K8S = REPO / "mlflow/k8s"
# literal credentials: an AWS key id, a password inside a URL, and (in config files and docs) a key or
# password given a value that is neither a placeholder (<...>, $(...), ${...}) nor an environment variable's name
KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
URL_PASSWORD = re.compile(r"://[^/\s:@$<>]+:(?!\$\(|<|\{|[A-Z_]+@)[^/\s@]+@")
ASSIGNED = re.compile(
    r"(?i:(?:aws_)?(?:access_key_id|secret_access_key|session_token|password|passwd))\s*[=:]\s*['\"]?"
    r"(?![<$({])(?![A-Z0-9_]+\b)[^\s'\"<>,}]{6,}"
)


def credentials_in(text: str, code: bool = False) -> list[str]:
    """The literal credentials in `text`; in code (`code`), only key ids and URL passwords."""
    patterns = [KEY_ID, URL_PASSWORD] + ([] if code else [ASSIGNED])
    return [m.group(0) for pattern in patterns for m in pattern.finditer(text)]


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_the_k8s_manifests_reference_secrets_and_hold_no_credentials():
    kustomization = _documents("kustomization.yaml")[0]
    kinds = {d["kind"]: d for name in kustomization["resources"] for d in _documents(name)}
    assert set(kinds) == {"ConfigMap", "Deployment", "Service"}  # the Secret template is never applied as is
    deployment, service, config = kinds["Deployment"], kinds["Service"], kinds["ConfigMap"]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["name"] == "mlflow" and service["spec"]["ports"][0]["port"] == 5000
    (container,) = pod["spec"]["containers"]
    assert "--serve-artifacts" in container["args"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    env = {e["name"]: e for e in container["env"]}
    refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert refs == {
        "PGPASSWORD": {"name": "unitask-mlflow-db", "key": "password"},
        "AWS_ACCESS_KEY_ID": {"name": "unitask-s3", "key": "AWS_ACCESS_KEY_ID"},
        "AWS_SECRET_ACCESS_KEY": {"name": "unitask-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"] == "postgresql+psycopg://$(PGUSER):$(PGPASSWORD)@$(PGHOST):$(PGPORT)/$(PGDATABASE)"
    assert {"PGHOST", "PGUSER", "PGDATABASE", "MLFLOW_ARTIFACTS_DESTINATION"} <= set(config["data"])
    assert config["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert not {"PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(config["data"])

    template = {d["metadata"]["name"]: d for d in _documents("secret.template.yaml")}
    assert {r["name"] for r in refs.values()} <= set(template)
    for ref in refs.values():
        value = template[ref["name"]]["stringData"][ref["key"]]
        assert value.startswith("<") and value.endswith(">"), f"{ref}: the template holds a placeholder only"
    for path in K8S.iterdir():
        assert credentials_in(path.read_text()) == [], path


def test_no_tracked_file_holds_a_credential():
    """Every file git tracks or would add, but tests/ (whose fixtures plant fake secrets on purpose)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    files = [REPO / name for name in listed.split("\0") if name and not name.startswith("tests/") and (REPO / name).is_file()]
    assert REPO / ".dvc/config" in files and REPO / "mlflow/k8s/secret.template.yaml" in files
    found = []
    for path in files:
        text = path.read_bytes()[:1_000_000].decode("utf-8", "replace")
        found += [f"{path.relative_to(REPO)}: {c}" for c in credentials_in(text, code=path.suffix == ".py")]
    assert found == []
    # DVC's remote keys and endpoint go to the untracked config.local (or the environment)
    remote = (REPO / ".dvc/config").read_text()
    assert "url = s3://" in remote and not re.search(r"access_key|secret|endpointurl|credentialpath", remote)
    private = [".dvc/config.local", "mlflow/team/.data/credentials.json"]
    ignored = subprocess.run(["git", "check-ignore", *private], cwd=REPO, capture_output=True, text=True)
    assert ignored.stdout.split() == private


def test_the_credential_patterns_find_what_they_should():
    for leak in ["aws_secret_access_key = wJalrXUtnFEMI/K7MDENG", "postgresql://mlflow:hunter22@db:5432/mlflow",
                 "password: s3cr3t-value", "AKIAIOSFODNN7EXAMPLE", "secret_access_key=abcdef123"]:  # fmt: skip
        assert credentials_in(leak), leak
    for fine in ["password: <database password>", "postgresql+psycopg://$(PGUSER):$(PGPASSWORD)@$(PGHOST)/x",
                 "secret_access_key = ${AWS_SECRET_ACCESS_KEY}", "http://mlflow:5000",
                 "{AWS_SECRET_ACCESS_KEY: AWS_SECRET_ACCESS_KEY}", "postgresql://mlflow:PASSWORD@host/db"]:  # fmt: skip
        assert credentials_in(fine) == [], fine
    assert credentials_in("password = secrets.token_urlsafe(24)", code=True) == []


def test_the_k8s_deployment_runs_the_server_as_the_kubelet_would_set_it_up(stack, tmp_path):
    """The container's args and env (ConfigMap, Secrets, $(VAR) expansion), pointed at the test stack's
    PostgreSQL and S3 instead of the cluster's, serve runs and proxied artifacts. Local adjustments only:
    loopback host, a free port (and it among the allowed hosts), one worker, the S3 endpoint."""
    import boto3
    import mlflow

    documents = {d["kind"]: d for name in ("configmap.yaml", "deployment.yaml") for d in _documents(name)}
    port = free_port()
    config = {**documents["ConfigMap"]["data"], "PGHOST": "127.0.0.1", "PGPORT": str(stack.ports.postgres),
              "MLFLOW_S3_ENDPOINT_URL": stack.s3_url}  # fmt: skip
    config["MLFLOW_SERVER_ALLOWED_HOSTS"] += f",127.0.0.1:{port}"
    password = stack.database_password()
    secret_values = {("unitask-mlflow-db", "password"): password, **{("unitask-s3", k): v for k, v in stack.s3_keys.items()}}
    (container,) = documents["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = dict(config)
    for item in container["env"]:  # in order, as the kubelet expands $(VAR) from the variables before it
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = secret_values[ref["name"], ref["key"]] if ref else re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    args = list(container["args"])
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port)), ("--workers", "1")):
        args[args.index(flag) + 1] = value
    log = tmp_path / "server.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "PG"))}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], env={**base, **env},
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not healthy(url):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.25)
        client = mlflow.MlflowClient(tracking_uri=url)
        experiment = client.create_experiment("k8s-manifest-check")
        run = client.create_run(experiment)
        (tmp_path / "note.txt").write_text("through the manifest's server\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        client.set_terminated(run.info.run_id)
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    # the same database and bucket as the stack's own server
    assert _client(stack).get_run(run.info.run_id).info.status == "FINISHED"
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, **stack.s3_credentials())
    key = f"{experiment}/{run.info.run_id}/artifacts/note.txt"
    assert s3.get_object(Bucket=MLFLOW_BUCKET, Key=key)["Body"].read() == b"through the manifest's server\n"
