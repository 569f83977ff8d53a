"""`unitask summary`: what a person reads after a pipeline run. Per task, each model's test main metric
side by side (evaluate's comparison), the registry's champion decision (register.output), and where to
look next: the MLflow UI on the last pipeline run, the comparison tables, the DVC plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import DataError
from unitask.evaluation.metrics import MAIN_METRIC

UI = "http://127.0.0.1:5000"  # `make mlflow-ui`


def _read(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: not written yet", hint=hint)
    return json.loads(path.read_text(encoding="utf-8"))


def comparison_rows(cfg: Config) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per task its main metric and each model's test value of it ('-': no such model)."""
    table = _read(cfg.path(cfg.evaluate.output) / "comparison.json", "run `unitask evaluate` (or `make demo`) first")["test"]
    models = list(dict.fromkeys(m for entry in table.values() for m in entry))
    rows = []
    for task, entry in table.items():
        metric = MAIN_METRIC[cfg.tasks[task].type] if task in cfg.tasks else next(iter(next(iter(entry.values()))))
        rows.append([task, metric, *(f"{entry[m][metric]:.4f}" if m in entry else "-" for m in models)])
    return ["task", "metric", *models], rows


def champion_line(cfg: Config) -> str:
    path = cfg.path(cfg.register.output)
    if not path.is_file():
        return f"Champion: no decision yet ({path.name} missing: run `unitask register`)"
    record = json.loads(path.read_text(encoding="utf-8"))
    routes = ", ".join(f"{task} -> {model}" for task, model in record.get("routes", {}).items())
    return (f"Champion: {record['name']} version {record['version']} {record['decision']}: {record['reason']}"
            f"\n  serves: {routes}")  # fmt: skip


def last_pipeline(cfg: Config) -> tuple[str, str | None]:
    """(experiment id, pipeline_run id of the newest parent run or None) from the tracking store."""
    import mlflow

    from unitask.tracking import PIPELINE_TAG, configure

    experiment = configure(cfg)
    runs = mlflow.search_runs([experiment], filter_string="tags.`unitask.stage` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")  # fmt: skip
    return experiment, runs[0].data.tags.get(PIPELINE_TAG) if runs else None


def link(cfg: Config) -> str:
    """The experiment's page in the UI of `make mlflow-ui`, on the Model training view."""
    from unitask.tracking import configure, experiment_url

    return experiment_url(UI, configure(cfg))


def summary(cfg: Config) -> str:
    """The report `unitask summary` prints."""
    from unitask.tracking import PIPELINE_TAG, experiment_url

    header, rows = comparison_rows(cfg)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["Test main metric per task and model (reports/evaluate/comparison.json):", ""]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines += ["", champion_line(cfg), "", "Where to look next:"]
    experiment, pipeline_id = last_pipeline(cfg)
    lines.append(f"  MLflow UI (`make mlflow-ui`): {experiment_url(UI, experiment)}")
    if pipeline_id:
        lines.append(f"    this pipeline run only: search  tags.`{PIPELINE_TAG}` = '{pipeline_id}'")
    lines.append("    compare models on a task: select their runs, Compare, metrics test/<task>/...")
    lines.append(f"  tables: {cfg.path(cfg.evaluate.output).relative_to(cfg.root) / 'comparison.md'}")
    lines.append("  plots: dvc plots show  (confusion matrices, metric by model, training curves)")
    return "\n".join(lines)
