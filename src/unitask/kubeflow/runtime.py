"""What the Kubeflow components run inside their pods (or, locally, in kfp's subprocesses).

Each `run_*` function takes the pipeline's parameters (`params`: the validated config as YAML, as
`unitask.kubeflow.project.pipeline_arguments` compiled it; `seed`), builds a workspace, a temporary
project root holding that params.yaml, links the input artifacts where the stage expects its files, calls the
stage function, and copies what the stage wrote into the output artifacts. Artifacts are duck-typed:
anything with `.path` and `.metadata` (and `.log_metric` for metrics), as kfp passes them.

Artifact layouts:
- Dataset (prepare):   prepared/<task>/{train,validation,test}.parquet, and raw/<task>/ for tasks
                       whose rows name files (images), mirroring paths.prepared and paths.raw.
- Model (pretrain):    the encoder folder (safetensors + tokenizer), as pretrain.output; with
                       pretrain.enabled false only unitask-model.json saying so.
- Model (finetune):    the task's model folder (safetensors, tokenizer, labels.json).
- Model (multitask):   multitask.output; (fusion): fusion.output (a folder per task and the index),
                       empty when fusion.tasks is.
- Dataset (reports):   what a stage wrote under paths.reports (test predictions, metrics files), at
                       its path relative to the project root; evaluate merges them all into its
                       workspace. (evaluation): evaluate.output and multitask.comparison, likewise.
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
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import yaml

from unitask.config import Config, load_config
from unitask.errors import UnitaskError

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


def load_params(params: str, seed: int, root: Path, inputs: tuple[Any, ...] = ()) -> Config:
    """Write `root/params.yaml` from the pipeline's `params` YAML and load it as the CLI would, with `seed`.

    Paths stay contained: besides the config's own `paths.roots` (a local run adds the project), a stage
    may read only the workspace and the input artifacts linked into it."""
    raw = yaml.safe_load(params) or {}
    paths = raw.setdefault("paths", {})
    paths["roots"] = [*paths.get("roots", []), *(str(Path(a.path).resolve()) for a in inputs if a is not None)]
    uri = os.environ.get("MLFLOW_TRACKING_URI")  # from the Kubernetes secret: wins over tracking.uri
    if uri:
        raw["tracking"] = {**(raw.get("tracking") or {}), "uri": uri}
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path, [f"seed={seed}"])


@contextmanager
def workspace(params: str, seed: int, pipeline_run: str, *inputs: Any, stage: str | None = None) -> Iterator[Config]:
    """A temporary project root holding the config; `inputs` are the artifacts the stage reads; the
    stage's MLflow runs nest under the parent run of Kubeflow run `pipeline_run` (kfp's job id). Removed afterwards. A training `stage` that kubeflow.stages sets to several processes gets its root
    on the shared workspace volume (kubeflow.jobs.mount_path), where the job's nodes find it."""
    from unitask.tracking import pipeline_run as nest_under

    if pipeline_run:
        nest_under(pipeline_run, driver="kubeflow")
    root = Path(tempfile.mkdtemp(prefix="unitask-kfp-"))
    try:
        cfg = load_params(params, seed, root, inputs)
        if stage is not None and getattr(cfg.kubeflow.stages, stage).distributed:
            shutil.rmtree(root)
            root = Path(tempfile.mkdtemp(prefix="unitask-kfp-", dir=cfg.kubeflow.jobs.mount_path))
            cfg = load_params(params, seed, root, inputs)
        yield cfg
    finally:
        shutil.rmtree(root, ignore_errors=True)


def train(cfg: Config, stage: str, args: list[str], here: Callable[[], Any], summary: Path) -> Any:
    """Run a training stage: in this pod (`here()`), or, when kubeflow.stages.<stage> asks for nodes x
    procs_per_node > 1, as a Kubeflow Trainer TrainJob (or PyTorchJob) that runs `torchrun -m unitask.cli
    ARGS` on the workspace volume; this step waits on it and fails when it fails. Returns the stage's
    summary (the job's: read from `summary`, the file the stage writes)."""
    if not getattr(cfg.kubeflow.stages, stage).distributed:
        return here()
    from unitask.kubeflow.jobs import job_name, materialize_links, run_job

    materialize_links(cfg.root)  # the nodes cannot see this pod's artifact folders
    run_job(cfg, stage, [*args, "--params", str(cfg.root / "params.yaml")], job_name(stage, "/".join([cfg.root.name, *args])))
    return json.loads(summary.read_text(encoding="utf-8"))


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


def link_models(cfg: Config, multitask: Any, fusion: Any, llm: Any) -> None:
    """The multi-task, (with fusion.tasks) fusion and (when register.routes names it) LLM model folders
    where evaluate and register read them."""
    link(multitask.path, cfg.path(cfg.multitask.output))
    if cfg.fusion_tasks():
        link(fusion.path, cfg.path(cfg.fusion.output))
    if "llm" in cfg.register.routes.values():
        link(llm.path, cfg.path(cfg.llm.output))


def link_encoder(cfg: Config, encoder: Any) -> None:
    if cfg.pretrain.enabled:
        link(encoder.path, cfg.path(cfg.pretrain.output))


def export_paths(cfg: Config, paths: list[str], artifact: Any) -> None:
    """Copy files and folders the stage wrote into `artifact`, at their paths relative to the project
    root (the layout `import_reports` merges back); a path the stage did not write is left out."""
    root = cfg.root.resolve()
    Path(artifact.path).mkdir(parents=True, exist_ok=True)
    for relative in paths:
        source = cfg.path(relative)
        dest = Path(artifact.path) / source.relative_to(root)
        if source.is_dir():
            export(source, dest)
        elif source.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def import_reports(cfg: Config, artifacts: list[Any]) -> None:
    """Merge `reports` artifacts (see `export_paths`) into the workspace."""
    for artifact in artifacts:
        shutil.copytree(artifact.path, cfg.root, dirs_exist_ok=True)


def write_metadata(artifact: Any) -> None:
    """Metrics live in the executor output's metadata; a file at the artifact's path as well keeps
    the artifact downloadable, and lets kfp's local cache reuse the task (it misses on absent files)."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(artifact.metadata), indent=1, sort_keys=True) + "\n", encoding="utf-8")


def log_metrics(metrics: Any, values: dict[str, Any]) -> None:
    """Numbers into an Output[Metrics]; NaN and infinity cannot travel in its protobuf metadata."""
    import math

    from unitask.tracking import flatten

    for key, value in flatten("", values).items():
        if math.isfinite(value):
            metrics.log_metric(key, value)
        else:
            print(f"unitask: metric {key} is {value}; not logged to Kubeflow", file=sys.stderr)
    write_metadata(metrics)


# ---- the stages ------------------------------------------------------------------------------


@stage_errors
def run_plan(params: str, seed: int, pipeline_run: str) -> list[str]:
    """The list the pipeline's fine-tuning loop runs over (the config is checked on the way)."""
    with workspace(params, seed, pipeline_run) as cfg:
        return cfg.finetune_tasks()


@stage_errors
def run_prepare(params: str, seed: int, pipeline_run: str, dataset: Any, metrics: Any) -> None:
    """Fetch every task's source, prepare its splits, and output them as one Dataset."""
    from unitask.data.fetch import fetch
    from unitask.data.prepare import prepare

    with workspace(params, seed, pipeline_run) as cfg:
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
def run_validate(params: str, seed: int, pipeline_run: str, dataset: Any, metrics: Any, report: Any, data_docs: Any) -> None:
    """The gate: validate every task. Metrics, the report and Data Docs are written either way, so a
    failed gate shows which task and check failed (`passed` 0); then a failed `error` check fails the
    component and the run."""
    from unitask.validation import InputError, ValidationFailed, validate
    from unitask.validation.stage import docs_dir

    with workspace(params, seed, pipeline_run, dataset) as cfg:
        link_dataset(cfg, dataset)
        failure: UnitaskError | None = None
        try:
            summaries = validate(cfg)
        except (ValidationFailed, InputError) as exc:
            failure = exc
            written = cfg.path(cfg.paths.reports) / "validate"
            summaries = {n: json.loads((written / f"{n}.json").read_text()) for n in cfg.tasks if (written / f"{n}.json").is_file()}
        if docs_dir(cfg).is_dir():
            export(docs_dir(cfg), data_docs.path)
        for name, summary in summaries.items():
            log_metrics(
                metrics,
                {name: {"passed": int(summary["status"] != "failed"), "warned": int(summary["status"] == "warned"),
                        "rows_checked": summary["rows_checked"], "expectations": summary["expectations"]}},
            )
        Path(report.path).parent.mkdir(parents=True, exist_ok=True)
        Path(report.path).write_text(validation_html(summaries), encoding="utf-8")
        data_docs.metadata["tasks"] = {n: f"{n}/index.html" for n in summaries if cfg.validate.data_docs}
        if failure is not None:
            raise failure


def validation_html(summaries: dict[str, dict[str, Any]]) -> str:
    """One self-contained page: each task's status, counts and failed `warn` checks."""
    rows, details = [], []
    for name, s in summaries.items():
        counts = s["expectations"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(s['status'])}</td><td>{s['rows_checked']}</td>"
            f"<td>{counts['evaluated']}</td><td>{counts['failed_warn']}</td></tr>"
        )
        for check, outcome in s.get("failures", {}).items():  # "split/column/check": "severity: counts"
            details.append(f"<li><b>{html.escape(name)}</b> <code>{html.escape(check)}</code>: {html.escape(outcome)}</li>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>unitask validate</title></head><body>"
        "<h1>Data validation</h1><p>Full great-expectations Data Docs, with examples of failing rows: the "
        "<code>data_docs</code> artifact (&lt;task&gt;/index.html, failures.json).</p>"
        "<table border='1' cellpadding='4'><tr><th>task</th><th>status</th><th>rows</th><th>expectations</th>"
        "<th>warnings</th></tr>" + "".join(rows) + "</table>"
        + ("<h2>Warnings</h2><ul>" + "".join(details) + "</ul>" if details else "")
        + "</body></html>\n"
    )


@stage_errors
def run_pretrain(params: str, seed: int, pipeline_run: str, dataset: Any, encoder: Any, metrics: Any) -> None:
    """Continued pretraining on the validated data; outputs the encoder (or, when disabled, the note
    `pretrain` leaves instead)."""
    from unitask.training.pretrain import pretrain

    with workspace(params, seed, pipeline_run, dataset, stage="pretrain") as cfg:
        link_dataset(cfg, dataset)
        result = train(cfg, "pretrain", ["pretrain"], lambda: pretrain(cfg), cfg.path(cfg.pretrain.metrics))
        export(cfg.path(cfg.pretrain.output), encoder.path)
        encoder.metadata["pretrained"] = cfg.pretrain.enabled
        if not cfg.pretrain.enabled:
            log_metrics(metrics, {})
            return
        encoder.metadata.update({"objective": result["objective"], "steps": result["steps"]})
        log_metrics(metrics, {"heldout": result["heldout"], "train_loss": result["train_loss"], "steps": result["steps"]})


@stage_errors
def run_baseline(params: str, seed: int, pipeline_run: str, dataset: Any, reports: Any, metrics: Any) -> None:
    """TF-IDF baselines of every text classification/regression task (`unitask baseline`)."""
    from unitask.baselines import baseline, baseline_tasks

    with workspace(params, seed, pipeline_run, dataset) as cfg:
        link_dataset(cfg, dataset)
        summaries = {name: baseline(cfg, name) for name in baseline_tasks(cfg)}
        export_paths(cfg, [cfg.paths.reports], reports)
        log_metrics(metrics, {n: {k: s[k] for k in ("validation", "test")} for n, s in summaries.items()})


@stage_errors
def run_finetune(
    task: str, params: str, seed: int, pipeline_run: str, dataset: Any, encoder: Any, model: Any, reports: Any, metrics: Any, confusion: Any
) -> None:
    """Fine-tune one task on the pretrained encoder (or the backbone when pretraining is off)."""
    from unitask.training.finetune import finetune

    with workspace(params, seed, pipeline_run, dataset, encoder, stage="finetune") as cfg:
        link_dataset(cfg, dataset)
        link_encoder(cfg, encoder)
        report = cfg.path(cfg.paths.reports) / "finetune" / f"{task}.json"
        summary = train(cfg, "finetune", ["finetune", "--task", task], lambda: finetune(cfg, task), report)
        export(cfg.path(cfg.finetune.output) / task, model.path)
        export_paths(cfg, [cfg.paths.reports], reports)
        model.metadata.update({"task": task, "type": summary["type"], "main_metric": summary["main_metric"]})
        log_metrics(metrics, {task: {k: summary[k] for k in ("validation", "test")}})
        log_metrics(metrics, {task: {"train": {k: summary["train"][k] for k in ("loss", "steps", "seconds")}}})
        log_confusion(cfg, "finetune", task, confusion)


def log_confusion(cfg: Config, model: str, task: str, confusion: Any) -> None:
    """The test confusion matrix of a classification task into a ClassificationMetrics (other task
    types leave it empty)."""
    from unitask.evaluation.compare import CLASSIFICATION_TYPES
    from unitask.evaluation.metrics import OUTPUT_KEY
    from unitask.evaluation.metrics import confusion as matrix
    from unitask.evaluation.predictions import read_predictions

    kind = cfg.tasks[task].type
    if kind in CLASSIFICATION_TYPES:
        gold, outputs = read_predictions(cfg, model, task)
        predicted = [o[OUTPUT_KEY[kind]] for o in outputs]
        labels = list(cfg.tasks[task].labels or sorted({*map(str, gold), *map(str, predicted)}))
        confusion.log_confusion_matrix(labels, matrix(gold, predicted, labels))
    write_metadata(confusion)


@stage_errors
def run_multitask(params: str, seed: int, pipeline_run: str, dataset: Any, encoder: Any, model: Any, reports: Any, metrics: Any) -> None:
    """Train the multi-task model (one encoder, a head per text task) on the pretrained encoder."""
    from unitask.training.multitask import multitask

    with workspace(params, seed, pipeline_run, dataset, encoder, stage="multitask") as cfg:
        link_dataset(cfg, dataset)
        link_encoder(cfg, encoder)
        summary = train(cfg, "multitask", ["multitask"], lambda: multitask(cfg), cfg.path(cfg.multitask.metrics))
        export(cfg.path(cfg.multitask.output), model.path)
        export_paths(cfg, [cfg.paths.reports], reports)
        model.metadata.update({"tasks": summary["tasks"], "encoder": summary["encoder"],
                               "test_mean_score": summary["test"]["mean_score"]})  # fmt: skip
        log_metrics(metrics, {k: summary[k] for k in ("validation", "test")})
        log_metrics(metrics, {"train": {k: summary["train"][k] for k in ("loss", "steps", "seconds")}})


@stage_errors
def run_fusion(params: str, seed: int, pipeline_run: str, dataset: Any, encoder: Any, model: Any, reports: Any, metrics: Any) -> None:
    """Train the fusion models of every task in fusion.tasks; with none, empty outputs."""
    from unitask.training.fusion import fusion

    with workspace(params, seed, pipeline_run, dataset, encoder, stage="fusion") as cfg:
        link_dataset(cfg, dataset)
        link_encoder(cfg, encoder)
        written = cfg.path(cfg.paths.reports) / "fusion"
        summaries = {
            name: train(cfg, "fusion", ["fusion", "--task", name], partial(fusion, cfg, name), written / f"{name}.json")
            for name in cfg.fusion_tasks()
        }
        Path(model.path).mkdir(parents=True, exist_ok=True)
        if summaries:
            export(cfg.path(cfg.fusion.output), model.path)
        export_paths(cfg, [cfg.paths.reports], reports)
        model.metadata.update({"tasks": list(summaries), "method": cfg.fusion.method})
        log_metrics(
            metrics,
            {n: {m: {k: r[k] for k in ("validation", "test")} for m, r in s["models"].items()} for n, s in summaries.items()},
        )


@stage_errors
def run_llm(params: str, seed: int, pipeline_run: str, dataset: Any, model: Any, reports: Any, metrics: Any) -> None:
    """Train the LLM on its tasks (`Config.llm_tasks`); with none, empty outputs."""
    with workspace(params, seed, pipeline_run, dataset, stage="llm") as cfg:
        link_dataset(cfg, dataset)
        Path(model.path).mkdir(parents=True, exist_ok=True)
        if not cfg.llm_tasks():
            log_metrics(metrics, {})
            Path(reports.path).mkdir(parents=True, exist_ok=True)
            return
        from unitask.llm.train import llm

        summary = train(cfg, "llm", ["llm"], lambda: llm(cfg), cfg.path(cfg.llm.metrics))
        export(cfg.path(cfg.llm.output), model.path)
        export_paths(cfg, [cfg.paths.reports], reports)
        model.metadata.update({"tasks": cfg.llm_tasks(), "base": cfg.llm.model})
        log_metrics(metrics, {k: summary[k] for k in ("validation", "test")})


@stage_errors
def run_evaluate(
    params: str, seed: int, pipeline_run: str, reports: list[Any], multitask: Any, fusion: Any, llm: Any, evaluation: Any,
    metrics: Any, comparison: Any,
) -> bool:
    """Compare the multi-task model with the fine-tunes, score every model's test predictions, and
    return the registry gate: whether the served model would replace the champion."""
    from unitask.evaluation.multitask_comparison import compare_multitask
    from unitask.evaluation.stage import evaluate
    from unitask.registry.stage import gate_now

    with workspace(params, seed, pipeline_run, *reports, multitask, fusion, llm) as cfg:
        import_reports(cfg, reports)
        link_models(cfg, multitask, fusion, llm)
        versus = compare_multitask(cfg)
        result = evaluate(cfg)
        export_paths(cfg, [cfg.evaluate.output, cfg.multitask.comparison, cfg.multitask.comparison_table], evaluation)
        gate = gate_now(cfg)
        evaluation.metadata.update({"models": result["models"], "skipped": result["skipped"], "gate": gate["reason"]})
        champion = (gate["champion"] or {}).get("primary")
        log_metrics(metrics, {"validation": result["validation"], "test": result["table"], "multitask_vs_finetune": versus["mean"]})
        log_metrics(metrics, {"gate": {"promote": int(gate["promote"]), "candidate": gate["candidate"]["primary"],
                                       **({"champion": champion} if champion is not None else {})}})  # fmt: skip
        Path(comparison.path).parent.mkdir(parents=True, exist_ok=True)
        Path(comparison.path).write_text(comparison_html(result, gate), encoding="utf-8")
        print(f"unitask: gate: {'promote' if gate['promote'] else 'hold'}: {gate['reason']}", file=sys.stderr)
        return bool(gate["promote"])


def comparison_html(result: dict[str, Any], gate: dict[str, Any]) -> str:
    """evaluate's comparison as one page: per task a row per model, a column per metric, best in bold."""
    sections = []
    for task, by_model in result["table"].items():
        entry = result["tasks"][task]
        main = entry["main_metric"]
        metrics = [main, *sorted({k for m in by_model.values() for k in m} - {main})]
        head = "".join(f"<th>{html.escape(k)}</th>" for k in metrics)
        rows = []
        for model, values in by_model.items():
            cells = [f"{values[k]:.4f}" if k in values else "–" for k in metrics]
            if model == entry["best"]:
                cells[0] = f"<b>{cells[0]}</b>"
            rows.append(f"<tr><td>{html.escape(model)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        sections.append(
            f"<h2>{html.escape(task)} ({html.escape(entry['type'])}, main metric {html.escape(main)})</h2>"
            f"<table border='1' cellpadding='4'><tr><th>model</th>{head}</tr>" + "".join(rows) + "</table>"
        )
    verdict = "promote" if gate["promote"] else "hold"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>unitask evaluate</title></head><body>"
        "<h1>Model comparison (test splits)</h1>"
        f"<p>Registry gate: <b>{verdict}</b>: {html.escape(gate['reason'])}</p>" + "".join(sections) + "</body></html>\n"
    )


@stage_errors
def run_register(
    params: str, seed: int, pipeline_run: str, dataset: Any, multitask: Any, fusion: Any, llm: Any, evaluation: Any,
    metrics: Any, card: Any,
) -> None:
    """Register the served model (multi-task, fusion, and the LLM for the tasks routed to it) in MLflow;
    the model card as Markdown."""
    from mlflow.tracking import MlflowClient

    from unitask.registry import register

    with workspace(params, seed, pipeline_run, dataset, multitask, fusion, llm, evaluation) as cfg:
        link_dataset(cfg, dataset)
        link_models(cfg, multitask, fusion, llm)
        import_reports(cfg, [evaluation])
        record = register(cfg)
        log_metrics(metrics, {"version": record["version"], "promoted": int(record["decision"] == "promoted"),
                              "score": record["scores"]})  # fmt: skip
        version = MlflowClient().get_model_version(record["name"], str(record["version"]))
        Path(card.path).parent.mkdir(parents=True, exist_ok=True)
        Path(card.path).write_text(version.description or "", encoding="utf-8")
        card.metadata.update({key: record[key] for key in ("name", "version", "decision", "reason", "aliases")})
