"""MLflow: where runs go, and one run per stage invocation."""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import ConfigError

PID_TAG, HOST_TAG = "unitask.pid", "unitask.host"  # who runs it: lets a later run end it if it was killed
FALLBACK_TAG = "unitask.tracking_fallback"  # on runs logged to tracking.fallback_uri: the server they missed
_checked: dict[tuple[str, str, str | None], str] = {}  # (project root, uri, fallback_uri) -> the store in use


def _resolve(cfg: Config, uri: str) -> str:
    """A relative `sqlite:///` path is made absolute under the project root."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = cfg.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def tracking_uri(cfg: Config) -> str:
    """The configured URI; a relative `sqlite:///` path is made absolute under the project root."""
    return _resolve(cfg, cfg.tracking.uri)


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health(uri: str, timeout: float) -> str | None:
    """None when the server answers GET /health, else why not."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        reason = getattr(exc, "reason", exc)
        return f"cannot reach {url} ({reason})"
    if status in (200, 401, 403):  # 401/403: a server with authentication (credentials go in MLFLOW_TRACKING_*)
        return None
    return f"{url} answered HTTP {status}: is this an MLflow tracking server?"


def preflight(cfg: Config) -> str:
    """The store this process logs to: `tracking.uri`, after checking that an http(s) server answers.

    Stages call it before any work. An unreachable server raises ConfigError, unless
    `tracking.fallback_uri` is set: then a warning says so and runs go there. Once per process and config."""
    t = cfg.tracking
    key = (str(cfg.root), t.uri, t.fallback_uri)
    if key in _checked:
        return _checked[key]
    problem = _health(t.uri, t.timeout) if _is_server(t.uri) else None
    if problem is None:
        _checked[key] = tracking_uri(cfg)
        return _checked[key]
    if t.fallback_uri is None:
        raise ConfigError(
            f"tracking.uri: the MLflow server {t.uri} is unreachable: {problem}; no stage starts without it",
            hint="start the server (`make team-up` for the local team setup) or fix tracking.uri "
            "(--set tracking.uri=...); to log locally instead, set tracking.fallback_uri explicitly",
        )
    fallback = _checked[key] = _resolve(cfg, t.fallback_uri)
    print(
        f"unitask: WARNING: the MLflow server {t.uri} is unreachable ({problem}); runs of this process are logged to "
        f"{fallback} instead (tracking.fallback_uri), not to the server",
        file=sys.stderr,
        flush=True,
    )
    return fallback


def configure(cfg: Config) -> str:
    """Point MLflow at the configured store (after `preflight`) and experiment; return the experiment id."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = preflight(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id
    # a local store keeps artifacts under the project; a server uses its own artifact root
    local = not uri.startswith(("http://", "https://", "databricks"))
    location = Path(cfg.path(cfg.tracking.artifact_location)).as_uri() if local else None
    try:
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent stage
        pass
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


@contextmanager
def stage_run(cfg: Config, stage: str, task: str | None = None, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage (and task): FINISHED, FAILED if the body raises, KILLED when
    interrupted or terminated. Runs of the same stage and task left RUNNING by a killed process end
    as KILLED first."""
    import mlflow

    experiment = configure(cfg)
    name = f"{stage}:{task}" if task else stage
    tags = {"unitask.stage": stage, **({"unitask.task": task} if task else {})}
    end_orphans(experiment, tags)
    tags.update({PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()})
    if preflight(cfg) != tracking_uri(cfg):
        tags[FALLBACK_TAG] = cfg.tracking.uri
    run = mlflow.start_run(run_name=name, tags=tags)
    try:
        if params:
            mlflow.log_params(params)
        yield run
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (the CLI turns it into SystemExit)
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def end_orphans(experiment_id: str, tags: dict[str, str]) -> list[str]:
    """End as KILLED the runs with these stage/task tags that are still RUNNING although the process
    on this host that started them is gone (SIGKILL, OOM, power loss leave no chance to end them);
    return their ids. Runs from other hosts (e.g. Kubernetes pods) cannot be checked and are left."""
    import mlflow

    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    stale = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"{where} and attributes.status = 'RUNNING'", output_format="list"
    )
    ended = []
    for run in stale:
        pid, host = run.data.tags.get(PID_TAG), run.data.tags.get(HOST_TAG)
        if host == socket.gethostname() and pid and not _alive(int(pid)):
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """Nested dicts of numbers -> {'a.b.c': number}, the shape `mlflow.log_metrics` takes."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}
