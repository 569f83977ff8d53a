"""MLflow: where runs go, and one run per stage invocation."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unitask.config import Config


def tracking_uri(cfg: Config) -> str:
    """The configured URI; a relative `sqlite:///` path is made absolute under the project root."""
    uri = cfg.tracking.uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = cfg.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def configure(cfg: Config) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id
    # a local store keeps artifacts under the project; a server uses its own artifact root
    local = not cfg.tracking.uri.startswith(("http://", "https://", "databricks"))
    location = Path(cfg.path(cfg.tracking.artifact_location)).as_uri() if local else None
    try:
        mlflow.create_experiment(cfg.tracking.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent stage
        pass
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


@contextmanager
def stage_run(cfg: Config, stage: str, task: str | None = None, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage (and task); it ends FAILED if the body raises."""
    import mlflow

    configure(cfg)
    name = f"{stage}:{task}" if task else stage
    tags = {"unitask.stage": stage, **({"unitask.task": task} if task else {})}
    with mlflow.start_run(run_name=name, tags=tags) as run:
        if params:
            mlflow.log_params(params)
        yield run


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
