"""What every Kubeflow component runs inside its pod (or, locally, in kfp's subprocess): `run_stage`.

It takes the pipeline's parameters (`params`: the validated config as YAML, as
`unitask.kubeflow.project.pipeline_arguments` compiled it; `seed`), builds a workspace (a temporary
project root holding that params.yaml), lays the input artifacts into it, fetches the raw data the
step reads (what DVC versions in data.dvc), runs the step's `unitask <stage>` command, and copies what
the step wrote into its output artifacts. Artifacts are duck-typed: anything with `.path` and
`.metadata` (and `.log_metric` for metrics), as kfp passes them.

Every artifact holds files at their paths relative to the project root: `model` (a Model) the step's
saved models, `data` (a Dataset) the rest of what it wrote (splits, predictions, metrics files,
reports), so a workspace is the union of its inputs. `metrics` (Metrics) holds the numbers of the
step's metrics files.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import yaml

from unitask.config import Config, load_config, read_yaml
from unitask.errors import UnitaskError
from unitask.graph import Step, find, inside, sources
from unitask.kubeflow.pods import pod
from unitask.kubeflow.settings import kubeflow_settings

F = TypeVar("F", bound=Callable[..., Any])


def stage_errors(func: F) -> F:
    """A user-fixable error ends the component with its message and exit code, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UnitaskError as exc:
            print(f"unitask: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


# ---- the workspace ---------------------------------------------------------------------------


def load_params(params: str, seed: int, root: Path) -> Config:
    """Write `root/params.yaml` from the pipeline's `params` YAML and load it as the CLI would, with `seed`.

    Paths stay contained: a stage may read its workspace (which holds copies of its input artifacts)
    and the config's own `paths.roots` (a local run adds the project) only."""
    raw = read_yaml(params) or {}
    uri = os.environ.get("MLFLOW_TRACKING_URI")  # from the Kubernetes secret: wins over tracking.uri
    if uri:
        raw["tracking"] = {**(raw.get("tracking") or {}), "uri": uri}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path, [f"seed={seed}"])


@contextmanager
def workspace(params: str, seed: int, pipeline_run: str, stage: str | None = None) -> Iterator[Config]:
    """A temporary project root holding the config, removed afterwards; the stage's MLflow runs nest
    under the parent run of Kubeflow run `pipeline_run` (kfp's job id). A training `stage` that
    kubeflow.stages sets to several processes gets its root on the shared workspace volume
    (kubeflow.jobs.mount_path), where the job's nodes find it."""
    from unitask.tracking import pipeline_run as nest_under

    if pipeline_run:
        nest_under(pipeline_run, driver="kubeflow")
    root = Path(tempfile.mkdtemp(prefix="unitask-kfp-"))
    try:
        cfg = load_params(params, seed, root)
        if stage is not None and pod(kubeflow_settings(cfg), stage).distributed:
            shutil.rmtree(root)
            root = Path(tempfile.mkdtemp(prefix="unitask-kfp-", dir=kubeflow_settings(cfg).jobs.mount_path))
            cfg = load_params(params, seed, root)
        yield cfg
    finally:
        shutil.rmtree(root, ignore_errors=True)


def merge(artifact: Any, root: Path) -> None:
    """Copy an input artifact's files into the workspace. Copies, not links: a stage never writes
    into its inputs, and MLflow refuses to log a model whose files resolve elsewhere."""
    shutil.copytree(artifact.path, root, dirs_exist_ok=True)


def export(cfg: Config, paths: tuple[str, ...], artifact: Any, step: str) -> None:
    """Copy what the step wrote at `paths` into `artifact`, at the same paths."""
    root = cfg.root.resolve()
    Path(artifact.path).mkdir(parents=True, exist_ok=True)
    for relative in paths:
        source = cfg.path(relative)
        if not source.exists():
            raise UnitaskError(f"kubeflow: step {step} wrote no {relative}")
        dest = Path(artifact.path) / source.relative_to(root)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
    artifact.metadata["paths"] = list(paths)


def write_metadata(artifact: Any) -> None:
    """Metrics live in the executor output's metadata; a file at the artifact's path as well keeps
    the artifact downloadable, and lets kfp's local cache reuse the task (it misses on absent files)."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(artifact.metadata), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def log_metrics(cfg: Config, paths: tuple[str, ...], metrics: Any) -> None:
    """The numbers of the step's metrics files (a folder: each JSON file in it, under its name) into an
    Output[Metrics]; NaN and infinity cannot travel in its protobuf metadata."""
    import math

    from unitask.tracking import flatten

    values: dict[str, Any] = {}
    for relative in paths:
        path = cfg.path(relative)
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for file in files:
            key = file.relative_to(path).with_suffix("").as_posix() if path.is_dir() else ""
            values.update(flatten(key, json.loads(file.read_text(encoding="utf-8"))))
    for key, value in values.items():
        if math.isfinite(value):
            metrics.log_metric(key, value)
        else:
            print(f"unitask: metric {key} is {value}; not logged to Kubeflow", file=sys.stderr)
    write_metadata(metrics)


def run_command(cfg: Config, step: Step) -> None:
    """The step's `unitask <stage> [--task T]` in this pod, or, when kubeflow.stages.<stage> asks for
    nodes x procs_per_node > 1, as a Kubeflow Trainer TrainJob (or PyTorchJob) that runs `torchrun -m
    unitask.cli` with the same arguments on the workspace volume; this step waits on it and fails when it fails."""
    from unitask.cli import build_parser

    args = [step.stage.command, *(["--task", step.task] if step.task else [])]
    params = ["--params", str(cfg.root / "params.yaml")]
    if not pod(kubeflow_settings(cfg), step.stage.name).distributed:
        parsed = build_parser().parse_args([*args, *params])
        parsed.run(cfg, parsed)
        return
    from unitask.kubeflow.jobs import job_name, run_job

    run_job(cfg, step.stage.name, [*args, *params], job_name(step.stage.name, "/".join([cfg.root.name, *args])))


def fetch_sources(cfg: Config, step: Step, earlier: list[Step]) -> None:
    """Fetch the raw data the step reads and no step before it wrote: `{paths.raw}/<task>`, or every
    task the stage runs for `{paths.raw}` itself."""
    from unitask.data.fetch import fetch

    raw = cfg.paths.raw.rstrip("/")
    needed = [d for d in sources(step, earlier) if inside(d, raw)]
    tasks = {d[len(raw) + 1:].partition("/")[0] for d in needed if d != raw}
    if raw in needed:
        tasks.update(step.stage.runs(cfg) if step.stage.runs else cfg.tasks)
    if tasks:
        fetch(cfg, [t for t in cfg.tasks if t in tasks])


@stage_errors
def run_stage(
    stage: str, task: str | None, params: str, seed: int, pipeline_run: str, inputs: list[Any], outputs: dict[str, Any],
    metrics: Any = None,
) -> None:
    """Run one step of the pipeline (`stage`, and `task` for a per-task stage) on its input artifacts;
    fill `outputs` ("model", "data") and `metrics`."""
    with workspace(params, seed, pipeline_run, stage=stage) as cfg:
        step, earlier = find(cfg, f"{stage}@{task}" if task else stage)
        for artifact in inputs:
            merge(artifact, cfg.root)
        fetch_sources(cfg, step, earlier)
        run_command(cfg, step)
        if "model" in outputs:
            export(cfg, step.models, outputs["model"], step.name)
        if "data" in outputs:
            export(cfg, step.data, outputs["data"], step.name)
        if metrics is not None:
            log_metrics(cfg, step.metrics, metrics)
