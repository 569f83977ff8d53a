"""`unitask evaluate`: score and compare every model on the validation and test splits; tables, plots,
one MLflow run. Validation scores decide (best model, registry gate); test scores are only reported.

Writes under `evaluate.output` (default reports/evaluate), replacing it whole:
- metrics/<model>/<split>.json: {task: main metric}, the headline DVC reads (`dvc metrics show`,
  `dvc exp show`): a row per model and split, a column per task;
- comparison.json: {"validation": table, "test": table}, each {task: {model: {metric: value}}};
- comparison.md: the same as Markdown tables;
- report.json: per task the type, main metric, best model (on validation), and per model the rows
  scored, the test per-class report and confusion matrix (classification types);
- plots/: data for `dvc plots show` (confusion/, by_model/, loss/, eval_loss/).
The MLflow run `evaluate` holds the metrics (`test/<task>/<model>/<metric>`), the test splits as dataset
inputs, these files and PNG figures of the plots.
"""

from __future__ import annotations

from typing import Any

from unitask.atomic import atomic_dir, write_json
from unitask.config import Config
from unitask.evaluation.compare import headline, markdown, score
from unitask.evaluation.plots import CURVES, figures, training_curves, write_plot_data
from unitask.tracking import log_datasets, stage_run, task_metric_keys

PLOT_FOLDERS = ("confusion", "by_model", *CURVES)


def evaluate(cfg: Config) -> dict[str, Any]:
    """Score, compare, plot and log; return the comparison (see `compare.score`)."""
    import mlflow

    result = score(cfg)
    params = {"models": ",".join(result["models"]), "skipped": ",".join(result["skipped"]), "tasks": ",".join(result["table"])}
    with stage_run(cfg, "evaluate", params=params) as run:
        curves = training_curves(run.info.experiment_id) if cfg.evaluate.curves else {}
        table = markdown(result)
        with atomic_dir(cfg.path(cfg.evaluate.output)) as tmp:
            for model, splits in headline(result).items():
                for split, scores in splits.items():
                    write_json(tmp / "metrics" / model / f"{split}.json", scores)
            write_json(tmp / "comparison.json", {"validation": result["validation"], "test": result["table"]})
            (tmp / "comparison.md").write_text(table, encoding="utf-8")
            write_json(tmp / "report.json", {k: result[k] for k in ("models", "skipped", "tasks")} | {"curves": sorted(curves)})
            for folder in PLOT_FOLDERS:  # every declared DVC plot folder exists, even when empty
                (tmp / "plots" / folder).mkdir(parents=True, exist_ok=True)
            write_plot_data(tmp / "plots", result, curves)
        output = cfg.path(cfg.evaluate.output)
        log_datasets(cfg, result["table"], splits=("validation", "test"))
        tables = {"validation": result["validation"], "test": result["table"]}
        mlflow.log_metrics({
            key: value for split, table in tables.items() for task, models in table.items()
            for model, metrics in models.items() for key, value in task_metric_keys(split, f"{task}/{model}", metrics).items()
        })  # fmt: skip
        for name in ("comparison.json", "comparison.md", "report.json"):
            mlflow.log_artifact(str(output / name))
        for name, fig in figures(result, curves).items():
            mlflow.log_figure(fig, f"plots/{name}")
    return result
