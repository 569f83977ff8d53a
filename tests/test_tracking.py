"""Where runs go when the tracking server is away: a stage refuses to start, with one clear message,
unless a local fallback store is configured explicitly, and then it says so and tags the runs."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import text_project
from unitask.cli import main
from unitask.config import load_config
from unitask.errors import ConfigError
from unitask.tracking import FALLBACK_TAG, preflight


@pytest.fixture
def closed_url():
    """The URL of a loopback port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_server_stops_a_training_stage_before_any_work(tmp_path, capsys, closed_url, monkeypatch):
    from unitask.training import finetune

    built = []  # a spy on the real build_trainer: the model must not even be built
    real = finetune.build_trainer
    monkeypatch.setattr(finetune, "build_trainer", lambda *args, **kwargs: built.append(args) or real(*args, **kwargs))
    params = text_project(tmp_path, "classification", tracking={"uri": closed_url})
    assert main(["finetune", "--params", str(params), "--task", "toy"]) == 2
    assert built == []
    err = capsys.readouterr().err
    assert f"unitask: error: tracking.uri: the MLflow server {closed_url} is unreachable: cannot reach {closed_url}/health" in err
    assert "fix: start the server (`make team-up` for the local team setup) or fix tracking.uri" in err
    assert "tracking.fallback_uri" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "params.yaml"]  # no checkpoint, model or run


def test_a_server_that_never_answers_fails_after_tracking_timeout(tmp_path):
    with socket.socket() as server:  # accepts connections (the kernel's backlog), never replies
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        cfg = load_config(text_project(tmp_path, "classification", tracking={"uri": url, "timeout": 0.5}))
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"is unreachable: cannot reach .*/health \(timed out\)"):
            preflight(cfg)
        assert time.monotonic() - started < 3


def test_the_explicit_fallback_logs_locally_and_says_so(tmp_path, capsys, closed_url):
    import mlflow

    params = text_project(tmp_path, "classification", tracking={"uri": closed_url, "fallback_uri": "sqlite:///mlflow/fallback.db"})
    assert main(["baseline", "--params", str(params)]) == 0
    err = capsys.readouterr().err
    store = f"sqlite:///{tmp_path / 'mlflow/fallback.db'}"
    assert f"unitask: WARNING: the MLflow server {closed_url} is unreachable" in err
    assert f"runs of this process are logged to {store} instead (tracking.fallback_uri), not to the server" in err
    runs = mlflow.MlflowClient(tracking_uri=store).search_runs(
        [mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("unitask").experiment_id]
    )
    assert [(r.info.run_name, r.data.tags[FALLBACK_TAG]) for r in runs] == [("baseline:toy", closed_url)]


def test_a_local_store_is_used_as_is(tmp_path):
    cfg = load_config(text_project(tmp_path, "classification", tracking={"uri": "sqlite:///mlflow/mlflow.db", "fallback_uri": "sqlite:///x.db"}))
    assert preflight(cfg) == f"sqlite:///{tmp_path / 'mlflow/mlflow.db'}"
