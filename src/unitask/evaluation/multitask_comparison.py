"""`unitask multitask-comparison`: the multi-task model against the single-task fine-tunes.

Read from the stages' reports (`reports/multitask.json`, `reports/finetune/<task>.json`): per task
the test value of its main metric on both sides and the difference; their mean over the tasks both
sides have (SQuAD's percentages scaled to 0-1); and the compute each side spent: training time
(Trainer's train loop, evaluations included, as both stages measure it) and training examples seen
(a fine-tune: rows x epochs run; the multi-task model: the rows its sampler drew). Written as JSON
and a Markdown table, and logged into the multi-task model's MLflow run.
"""

from __future__ import annotations

import json
from typing import Any

from unitask.atomic import atomic_file, write_json
from unitask.config import Config
from unitask.errors import DataError
from unitask.evaluation.metrics import unit_score


def _read(path: Any, hint: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: no such report", hint=hint)
    return json.loads(path.read_text(encoding="utf-8"))


def compare_multitask(cfg: Config) -> dict[str, Any]:
    """Write the comparison (JSON and Markdown) and return it."""
    multi = _read(cfg.path(cfg.multitask.metrics), "run `unitask multitask` first")
    reports = cfg.path(cfg.paths.reports) / "finetune"
    tasks: dict[str, Any] = {}
    single_compute = {"seconds": 0.0, "examples_seen": 0, "models": 0}
    for name in multi["tasks"]:
        metric, kind = multi["main_metrics"][name], multi["types"][name]
        path = reports / f"{name}.json"
        single = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        ours = multi["test"][name][metric]
        theirs = single["test"][metric] if single else None
        tasks[name] = {
            "type": kind,
            "metric": metric,
            "single_task": theirs,
            "multitask": ours,
            "delta": None if theirs is None else ours - theirs,
        }
        if single:
            train = single["train"]
            tasks[name]["single_task_seconds"] = train["seconds"]
            single_compute["seconds"] += train["seconds"]
            single_compute["examples_seen"] += round(train["examples"] * train["epochs"])
            single_compute["models"] += 1
    both = [n for n, row in tasks.items() if row["single_task"] is not None]
    if not both:
        raise DataError(
            f"{reports}: no single-task fine-tune reports for the multi-task tasks {', '.join(tasks)}",
            hint="run `unitask finetune --task NAME` for them (dvc repro finetune) first",
        )

    def mean(side: str) -> float:
        return sum(unit_score(tasks[n]["type"], tasks[n]["metric"], tasks[n][side]) for n in both) / len(both)

    train = multi["train"]
    result = {
        "tasks": tasks,
        "mean": {
            "tasks": len(both),
            "single_task": mean("single_task"),
            "multitask": mean("multitask"),
            "delta": mean("multitask") - mean("single_task"),
        },
        "missing_single_task": [n for n in tasks if n not in both],
        "compute": {
            "single_task": {**single_compute, "seconds": round(single_compute["seconds"], 1)},
            "multitask": {"seconds": train["seconds"], "examples_seen": train["examples_seen"]["total"], "models": 1},
        },
        "multitask_setup": {"sampler": multi["sampler"]["name"], "weighting": multi["weighting"]["name"]},
    }
    path = cfg.path(cfg.multitask.comparison)
    write_json(path, result)
    table = cfg.path(cfg.multitask.comparison_table)
    with atomic_file(table) as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    _log(cfg, multi.get("mlflow_run_id"), result, [path, table])
    return result


def _number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    """The comparison as two Markdown tables: test metrics, then compute."""
    lines = [
        "| task | metric | single-task | multi-task | Δ |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["tasks"].items():
        digits = 1 if row["type"] == "extractive_qa" else 3  # SQuAD metrics are percentages
        delta = "–" if row["delta"] is None else f"{row['delta']:+.{digits}f}"
        lines.append(
            f"| {name} | {row['metric']} | {_number(row['single_task'], digits)} "
            f"| {_number(row['multitask'], digits)} | {delta} |"
        )
    mean = result["mean"]
    lines.append(
        f"| **mean** ({mean['tasks']} tasks, 0–1) | | {mean['single_task']:.3f} | {mean['multitask']:.3f} | {mean['delta']:+.3f} |"
    )
    single, multi = result["compute"]["single_task"], result["compute"]["multitask"]
    lines += [
        "",
        "| | models | training time | examples seen |",
        "|---|---|---|---|",
        f"| single-task fine-tunes | {single['models']} | {single['seconds']:.0f} s | {single['examples_seen']:,} |",
        f"| multi-task | {multi['models']} | {multi['seconds']:.0f} s | {multi['examples_seen']:,} |",
    ]
    return "\n".join(lines) + "\n"


def _log(cfg: Config, run_id: str | None, result: dict[str, Any], files: list[Any]) -> None:
    """Into the multi-task model's MLflow run when it is in this store; else a run of its own."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from unitask.tracking import configure, flatten, stage_run

    configure(cfg)
    metrics = flatten("comparison", {"mean": result["mean"], "compute": result["compute"]})
    try:
        context = mlflow.start_run(run_id=run_id) if run_id else None
    except MlflowException:
        context = None
    with context or stage_run(cfg, "multitask", "comparison"):
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="comparison")
