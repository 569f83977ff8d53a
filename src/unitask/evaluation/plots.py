"""Plot data for DVC (`dvc plots show`) and figures for MLflow: confusion matrices, the main metric
of every model per task, and training curves pulled from the training stages' MLflow runs.

DVC draws from data files (one per plot, its own template); MLflow gets the same data drawn with
matplotlib as PNG figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unitask.atomic import write_json

CURVES = ("loss", "eval_loss")  # Trainer's logs, as `MlflowMetrics` logs them into each stage's run


def write_plot_data(folder: Path, result: dict[str, Any], curves: dict[str, dict[str, list[tuple[int, float]]]]) -> None:
    """confusion/<model>/<task>.json ({actual, predicted} rows), by_model/<task>.json ({model, metric,
    value} rows) and <curve>/<run>.json ({step, <curve>} rows) under `folder`."""
    for task, entry in result["tasks"].items():
        for model, info in entry["models"].items():
            if "confusion" in info:
                labels = info["labels"]
                rows = [
                    {"actual": labels[i], "predicted": labels[j]}
                    for i, counts in enumerate(info["confusion"])
                    for j, n in enumerate(counts)
                    for _ in range(n)
                ]
                write_json(folder / "confusion" / model / f"{task}.json", rows)
        main = entry["main_metric"]
        rows = [{"model": m, "metric": main, "value": v[main]} for m, v in result["table"][task].items()]
        write_json(folder / "by_model" / f"{task}.json", rows)
    for run, series in curves.items():
        for curve, points in series.items():
            write_json(folder / curve / f"{run}.json", [{"step": s, curve: v} for s, v in points])


def training_curves(experiment_id: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{"<model>_<task>": {curve: [(step, value)]}} from the latest finished run of each model a
    training stage trains (per task) in the experiment."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = mlflow.search_runs(  # which runs trained is checked below
        experiment_ids=[experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        tags = run.data.tags
        if "unitask.stage" not in tags or "optuna.trial" in tags or not any(c in run.data.metrics for c in CURVES):
            continue  # not a stage's run, a tuning trial, or a run that trained nothing
        # a stage may train several models per task (fusion and its baselines: tag unitask.model)
        name = "_".join(filter(None, (tags.get("unitask.model") or tags["unitask.stage"], tags.get("unitask.task"))))
        if name in curves:
            continue  # an older run of the same model and task
        series = {}
        for curve in CURVES:
            if curve in run.data.metrics:
                history = client.get_metric_history(run.info.run_id, curve)
                series[curve] = sorted((m.step, m.value) for m in history)
        if series:
            curves[name] = series
    return dict(sorted(curves.items()))


def figures(result: dict[str, Any], curves: dict[str, dict[str, list[tuple[int, float]]]]) -> dict[str, Any]:
    """{artifact file name: matplotlib figure} for MLflow: confusion matrices, metric by model, curves.
    Figures are made without pyplot: no backend, no global state to close."""
    from matplotlib.figure import Figure

    out: dict[str, Any] = {}
    for task, entry in result["tasks"].items():
        for model, info in entry["models"].items():
            if "confusion" in info:
                out[f"confusion/{model}/{task}.png"] = _confusion_figure(Figure, f"{task}: {model}", info)
    tasks = list(result["table"])
    if tasks:
        fig = Figure(figsize=(7, 1.2 + 0.35 * len(result["models"]) * len(tasks)))
        axes = fig.subplots(len(tasks), 1, squeeze=False)
        for ax, task in zip(axes[:, 0], tasks):
            main = result["tasks"][task]["main_metric"]
            models = list(result["table"][task])
            bars = ax.barh(models, [result["table"][task][m][main] for m in models], color="tab:blue")
            ax.bar_label(bars, fmt="%.3f", fontsize=7)
            ax.set_title(f"{task} ({main})", fontsize=9)
            ax.invert_yaxis()
        fig.tight_layout()
        out["metric_by_model.png"] = fig
    for curve in CURVES:
        runs = {run: series[curve] for run, series in curves.items() if curve in series}
        if runs:
            fig = Figure(figsize=(8, 4.5))
            ax = fig.subplots()
            for run, points in runs.items():
                ax.plot([s for s, _ in points], [v for _, v in points], label=run)
            ax.set(xlabel="step", ylabel=curve, title=f"training curves: {curve}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            out[f"curves_{curve}.png"] = fig
    return out


def _confusion_figure(figure: Any, title: str, info: dict[str, Any]) -> Any:
    labels, matrix = info["labels"], info["confusion"]
    size = 2.5 + 0.4 * len(labels)
    fig = figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=6)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    fig.tight_layout()
    return fig
