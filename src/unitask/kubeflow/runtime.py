"""What the Kubeflow components run inside their pods (or, locally, in kfp's subprocesses).

Each `run_*` function takes the pipeline's section parameters (`seed`, `tracking`, `model`, `prepare`,
...: the sections of params.yaml), builds a workspace, a temporary project root with a params.yaml
made of those sections, links the input artifacts where the stage expects its files, calls the
stage function, and copies what the stage wrote into the output artifacts. Artifacts are duck-typed:
anything with `.path` and `.metadata` (and `.log_metric` for metrics), as kfp passes them.

Artifact layouts:
- Dataset (prepare):   prepared/<task>/{train,validation,test}.parquet, and raw/<task>/ for tasks
                       whose rows name files (images), mirroring paths.prepared and paths.raw.
- Model (pretrain):    the encoder folder (safetensors + tokenizer), as pretrain.output; with
                       pretrain.enabled false only unitask-model.json saying so.
- Model (finetune):    the task's model folder (safetensors, tokenizer, labels.json).
"""

from __future__ import annotations

import functools
import html
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

from unitask.config import Config, load_config
from unitask.errors import UnitaskError

# The pipeline parameters: one per params.yaml section that a stage reads. `paths` is not one of
# them (artifacts take its place) and `kubeflow` only shapes the compiled pipeline.
SECTIONS = ("seed", "tracking", "model", "prepare", "validate", "pretrain", "finetune", "tasks")

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


def integral(value: Any) -> Any:
    """Pipeline parameters travel as protobuf Values, where every number is a double: 32 comes
    back as 32.0. Turn integral floats back into ints (config fields typed float accept ints)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


NULLS = "_null"  # no config key starts with "_"


def encode_nulls(value: Any, where: str = "") -> Any:
    """Pipeline parameters cannot hold null: a dict's null keys move to its `_null` list."""
    if isinstance(value, dict):
        out = {k: encode_nulls(v, f"{where}.{k}" if where else k) for k, v in value.items() if v is not None}
        nulls = [k for k, v in value.items() if v is None]
        return {**out, NULLS: nulls} if nulls else out
    if isinstance(value, list):
        if any(v is None for v in value):
            raise UnitaskError(f"{where}: a list with null items cannot be a Kubeflow pipeline parameter")
        return [encode_nulls(v, where) for v in value]
    return value


def decode_nulls(value: Any) -> Any:
    """The inverse of `encode_nulls`."""
    if isinstance(value, dict):
        out = {k: decode_nulls(v) for k, v in value.items() if k != NULLS}
        out.update({k: None for k in value.get(NULLS, [])})
        return out
    if isinstance(value, list):
        return [decode_nulls(v) for v in value]
    return value


def load_sections(sections: dict[str, Any], root: Path) -> Config:
    """Write `root/params.yaml` from the section parameters and load it like the CLI would."""
    params = {name: integral(decode_nulls(value)) for name, value in sections.items() if value is not None}
    uri = os.environ.get("MLFLOW_TRACKING_URI")  # from the Kubernetes secret: wins over tracking.uri
    if uri:
        params["tracking"] = {**(params.get("tracking") or {}), "uri": uri}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return load_config(path)


@contextmanager
def workspace(sections: dict[str, Any]) -> Iterator[Config]:
    """A temporary project root holding the params.yaml of `sections`; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="unitask-kfp-"))
    try:
        yield load_sections(sections, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def link(source: str | Path, dest: Path) -> None:
    """Make `dest` point at an input artifact's folder (stages only read their inputs)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        raise UnitaskError(f"kubeflow: {dest} already exists in the workspace")
    dest.symlink_to(Path(source).resolve(), target_is_directory=True)


def export(source: Path, dest: str | Path) -> None:
    """Copy a stage's output folder into an output artifact's path."""
    if not source.is_dir():
        raise UnitaskError(f"kubeflow: the stage wrote no {source}")
    shutil.copytree(source, dest, dirs_exist_ok=True)


def link_dataset(cfg: Config, dataset: Any) -> None:
    folder = Path(dataset.path)
    link(folder / "prepared", cfg.path(cfg.paths.prepared))
    if (folder / "raw").is_dir():
        link(folder / "raw", cfg.path(cfg.paths.raw))


def log_metrics(metrics: Any, values: dict[str, Any]) -> None:
    """Numbers into an Output[Metrics]; NaN and infinity cannot travel in its protobuf metadata."""
    import math

    from unitask.tracking import flatten

    for key, value in flatten("", values).items():
        if math.isfinite(value):
            metrics.log_metric(key, value)
        else:
            print(f"unitask: metric {key} is {value}; not logged to Kubeflow", file=sys.stderr)
    # Metrics live in the executor output's metadata; a file at the artifact's path as well keeps
    # the artifact downloadable, and lets kfp's local cache reuse the task (it misses on absent files).
    path = Path(metrics.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(metrics.metadata), indent=1, sort_keys=True) + "\n", encoding="utf-8")


# ---- the stages ------------------------------------------------------------------------------


def finetune_tasks(cfg: Config) -> list[str]:
    """The tasks the pipeline fine-tunes: `finetune.tasks`, or else every text task."""
    return list(cfg.finetune.tasks) or [n for n, t in cfg.tasks.items() if t.type != "multimodal_classification"]


@stage_errors
def run_plan(sections: dict[str, Any]) -> list[str]:
    """The list the pipeline's fine-tuning loop runs over (the config is checked on the way)."""
    with workspace(sections) as cfg:
        names = finetune_tasks(cfg)
    if not names:
        raise UnitaskError("finetune: no text task to fine-tune", hint="declare a text task or set finetune.tasks")
    return names


@stage_errors
def run_prepare(sections: dict[str, Any], dataset: Any, metrics: Any) -> None:
    """Fetch every task's source, prepare its splits, and output them as one Dataset."""
    from unitask.data.fetch import fetch
    from unitask.data.prepare import prepare

    with workspace(sections) as cfg:
        hashes = fetch(cfg)
        summaries = prepare(cfg)
        out = Path(dataset.path)
        export(cfg.path(cfg.paths.prepared), out / "prepared")
        for name, task in cfg.tasks.items():
            if task.read.image_path:  # the prepared rows name files under paths.raw
                export(cfg.path(cfg.paths.raw) / name, out / "raw" / name)
        dataset.metadata.update(
            {"tasks": list(summaries), "sha256": hashes, "rows": {n: s["rows"] for n, s in summaries.items()}}
        )
        log_metrics(metrics, {n: {"rows": s["rows"], "dropped": s["dropped"]} for n, s in summaries.items()})


@stage_errors
def run_validate(sections: dict[str, Any], dataset: Any, metrics: Any, report: Any, data_docs: Any) -> None:
    """The gate: validate every task; a failed `error` check fails the component and the run."""
    from unitask.validation import validate
    from unitask.validation.stage import docs_dir

    with workspace(sections) as cfg:
        link_dataset(cfg, dataset)
        summaries = validate(cfg)
        export(docs_dir(cfg), data_docs.path)
        for name, summary in summaries.items():
            log_metrics(
                metrics,
                {name: {"passed": 1, "warned": int(summary["status"] == "warned"),
                        "rows_checked": summary["rows_checked"], "expectations": summary["expectations"]}},
            )
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        Path(report.path).write_text(validation_html(summaries), encoding="utf-8")
        data_docs.metadata["tasks"] = {n: f"{n}/index.html" for n in summaries if cfg.validate.data_docs}


def validation_html(summaries: dict[str, dict[str, Any]]) -> str:
    """One self-contained page: each task's status, counts and failed `warn` checks."""
    rows, details = [], []
    for name, s in summaries.items():
        counts = s["expectations"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(s['status'])}</td><td>{s['rows_checked']}</td>"
            f"<td>{counts['evaluated']}</td><td>{counts['failed_warn']}</td></tr>"
        )
        for f in s.get("failures", []):
            examples = "".join(f"<li><code>{html.escape(str(e))}</code></li>" for e in f.get("examples") or [])
            details.append(
                f"<li><b>{html.escape(name)}</b> split {html.escape(str(f['split']))}, column "
                f"<code>{html.escape(str(f['column']))}</code>: {html.escape(str(f['check']))} "
                f"({html.escape(str(f['severity']))})<ul>{examples}</ul></li>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>unitask validate</title></head><body>"
        "<h1>Data validation</h1><p>Full great-expectations Data Docs: the <code>data_docs</code> artifact "
        "(&lt;task&gt;/index.html).</p><table border='1' cellpadding='4'><tr><th>task</th><th>status</th>"
        "<th>rows</th><th>expectations</th><th>warnings</th></tr>" + "".join(rows) + "</table>"
        + ("<h2>Warnings</h2><ul>" + "".join(details) + "</ul>" if details else "")
        + "</body></html>\n"
    )


@stage_errors
def run_pretrain(sections: dict[str, Any], dataset: Any, encoder: Any, metrics: Any) -> None:
    """Continued pretraining on the validated data; outputs the encoder (or, when disabled, the note
    `pretrain` leaves instead)."""
    from unitask.training.pretrain import pretrain

    with workspace(sections) as cfg:
        link_dataset(cfg, dataset)
        result = pretrain(cfg)
        export(cfg.path(cfg.pretrain.output), encoder.path)
        encoder.metadata["pretrained"] = cfg.pretrain.enabled
        if not cfg.pretrain.enabled:
            log_metrics(metrics, {})
            return
        encoder.metadata.update({"objective": result["objective"], "steps": result["steps"]})
        log_metrics(metrics, {"heldout": result["heldout"], "train_loss": result["train_loss"], "steps": result["steps"]})


@stage_errors
def run_finetune(task: str, sections: dict[str, Any], dataset: Any, encoder: Any, model: Any, metrics: Any) -> None:
    """Fine-tune one task on the pretrained encoder (or the backbone when pretraining is off)."""
    from unitask.training.finetune import finetune

    with workspace(sections) as cfg:
        link_dataset(cfg, dataset)
        if cfg.pretrain.enabled:
            link(encoder.path, cfg.path(cfg.pretrain.output))
        summary = finetune(cfg, task)
        export(cfg.path(cfg.finetune.output) / task, model.path)
        model.metadata.update({"task": task, "type": summary["type"], "main_metric": summary["main_metric"]})
        log_metrics(metrics, {task: {k: summary[k] for k in ("validation", "test")}})
        log_metrics(metrics, {task: {"train": {k: summary["train"][k] for k in ("loss", "steps", "seconds")}}})
