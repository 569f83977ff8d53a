"""The team setup, for real on loopback: PostgreSQL (Debian's package), an S3 store (moto's server) and
`mlflow server` with proxied artifacts, started by `unitask.teamstack` as `make team-up` does. The smoke
chain logs to it through DVC, a model is registered and loaded by alias, the DVC S3 remote round-trips
the data, and no credential lands anywhere it should not."""

from __future__ import annotations

import hashlib
import json
import os
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

from conftest import REPO
from test_dvc_pipeline import _merge
from unitask.teamstack import DATA_BUCKET, MLFLOW_BUCKET, Ports, TeamStack, free_port

BIN = Path(sys.executable).parent
TASK = "sms_spam"
MODEL = f"unitask-finetune-{TASK}"
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


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", "OMP_NUM_THREADS": "1", **CLIENT_ENV, **extra}


def _run(args: list[str], cwd: Path, ok: bool = True, **extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env(**extra))
    if ok:
        assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def clone(stack, tmp_path_factory) -> dict[str, Any]:
    """A scratch copy of the project on the smoke profile, one task, tracking to the team server, the
    committed DVC remote pointed at the stack's S3 store; `dvc repro` up to the fine-tunes has run."""
    root = tmp_path_factory.mktemp("team-clone")
    for name in ["params.yaml", "dvc.yaml", "data.dvc", ".dvcignore", "src"]:
        src = REPO / name
        (shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, root / name))
    params = _merge(yaml.safe_load((root / "params.yaml").read_text()), yaml.safe_load((REPO / "tests/smoke.yaml").read_text()))
    params["tasks"] = {TASK: params["tasks"][TASK]}
    params["finetune"]["tasks"] = [TASK]
    params["tracking"]["uri"] = stack.url
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _run([str(BIN / "dvc"), "init", "-q"], root)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")  # the committed remote `team`
    _run([str(BIN / "dvc"), "remote", "modify", "--local", "team", "endpointurl", stack.s3_url], root)
    _run([str(BIN / "unitask"), "data", "fetch"], root)
    _run([str(BIN / "dvc"), "commit", "--force", "-q", "data.dvc"], root)  # data.dvc now holds the one task
    started = time.monotonic()
    repro = _run([str(BIN / "dvc"), "repro", "finetune"], root)
    print(f"\nsmoke chain (dvc repro finetune, one task) against the team server: {time.monotonic() - started:.1f} s")
    return {"root": root, "log": repro.stdout + repro.stderr}


def _client(stack: TeamStack) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.url, registry_uri=stack.url)


def _runs(stack: TeamStack) -> dict[str, Any]:
    client = _client(stack)
    experiment = client.get_experiment_by_name("unitask")
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def register(stack: TeamStack, run_id: str) -> Any:
    """Register the fine-tune run's model folder and make it `champion`.
    (`unitask register` serves the multi-task model; this registers the smoke chain's fine-tune.)"""
    client = _client(stack)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return version


def test_the_smoke_chain_logs_runs_metrics_and_artifacts_to_the_team_server(stack, clone):
    import boto3
    import psycopg

    runs = _runs(stack)
    for name in (f"prepare:{TASK}", f"validate:{TASK}", "pretrain", f"finetune:{TASK}"):
        assert name in runs and runs[name].info.status == "FINISHED", sorted(runs)
    finetune = runs[f"finetune:{TASK}"]
    assert "test.macro_f1" in finetune.data.metrics and finetune.data.params["task"] == TASK
    assert finetune.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients hold no S3 endpoint
    client = _client(stack)
    assert {"model/model.safetensors", "model/labels.json"} <= {f.path for f in client.list_artifacts(finetune.info.run_id, "model")}
    history = client.get_metric_history(finetune.info.run_id, "loss")
    assert history, "per-step training metrics reached the server"

    # where the server put them: run rows in PostgreSQL, artifact bytes in the S3 bucket
    password = json.loads((stack.root / "credentials.json").read_text())["postgres_password"]
    with psycopg.connect(stack._dsn(password, "mlflow")) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM runs")}
    assert set(runs) <= names
    s3 = boto3.client("s3", endpoint_url=stack.s3_url, **stack._s3_credentials())
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=MLFLOW_BUCKET, Prefix=finetune.info.experiment_id)["Contents"]]
    assert f"{finetune.info.experiment_id}/{finetune.info.run_id}/artifacts/model/model.safetensors" in keys


def test_a_registered_version_loads_by_alias(stack, clone, tmp_path):
    import mlflow
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    finetune = _runs(stack)[f"finetune:{TASK}"]
    version = register(stack, finetune.info.run_id)
    client = _client(stack)
    assert client.get_model_version_by_alias(MODEL, "champion").version == version.version == "1"
    assert client.get_model_version(MODEL, "1").run_id == finetune.info.run_id

    mlflow.set_registry_uri(stack.url)
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path), tracking_uri=stack.url))
    local = clone["root"] / "models/finetune" / TASK
    assert (folder / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["WINNER! claim your free prize now", "see you at lunch"], return_tensors="pt", padding=True)
    with torch.no_grad():
        served = AutoModelForSequenceClassification.from_pretrained(folder).eval()(**batch).logits
        trained = AutoModelForSequenceClassification.from_pretrained(local).eval()(**batch).logits
    assert torch.equal(served, trained)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_dvc_s3_remote_round_trips_the_data(stack, clone):
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
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_url, **stack._s3_credentials())
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
    password = json.loads((stack.root / "credentials.json").read_text())["postgres_password"]
    server_secrets = [password, stack.s3_keys["AWS_SECRET_ACCESS_KEY"]]

    texts = {"dvc repro output": clone["log"], "compile output": compiled.stdout + compiled.stderr,
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
