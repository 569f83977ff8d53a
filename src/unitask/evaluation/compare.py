"""Score every model's test predictions and compare them: one table of task x model x metric.

The table is built from `reports/predictions/<model>/<task>.jsonl` only (no model is loaded), so the
TF-IDF baseline, the fine-tunes, the multi-task model and the fusion models are scored by the same
functions on the same rows.
"""

from __future__ import annotations

from typing import Any

from unitask.config import Config
from unitask.errors import DataError
from unitask.evaluation.metrics import MAIN_METRIC, OUTPUT_KEY, confusion, per_class_report, task_metrics
from unitask.evaluation.predictions import predictions_path, read_predictions

# the command that writes a model's predictions, for the error when they are missing
STAGE_OF = {
    "baseline": "unitask baseline",
    "finetune": "unitask finetune --task NAME (dvc repro finetune)",
    "multitask": "unitask multitask",
    "fusion": "unitask fusion",
    "fusion_text": "unitask fusion (with fusion.baselines: true)",
    "fusion_image": "unitask fusion (with fusion.baselines: true)",
    "llm": "unitask llm",
    "llm_zeroshot": "unitask llm (with llm.zeroshot: true)",
}
CLASSIFICATION_TYPES = ("classification", "pair_classification", "multimodal_classification")


def turned_off(cfg: Config) -> set[str]:
    """Models in `evaluate.models` that this config does not train, so they are skipped, not missing."""
    off: set[str] = set()
    if not cfg.fusion.baselines:
        off |= {"fusion_text", "fusion_image"}
    if not cfg.fusion.tasks:  # no text+image task to train
        off |= {"fusion", "fusion_text", "fusion_image"}
    if not cfg.llm.zeroshot:
        off.add("llm_zeroshot")
    if not cfg.llm_tasks():  # no text task for the LLM
        off |= {"llm", "llm_zeroshot"}
    return off


def model_tasks(cfg: Config, model: str) -> list[str]:
    """Declared tasks that `model` has test predictions for; DataError (naming the stage) when none."""
    tasks = [name for name in cfg.tasks if predictions_path(cfg, model, name).is_file()]
    if not tasks:
        folder = predictions_path(cfg, model, "_").parent
        raise DataError(
            f"{folder}: no test predictions of model '{model}' for any declared task",
            hint=f"run `{STAGE_OF.get(model, 'its training stage')}` first, or drop '{model}' from evaluate.models",
        )
    return tasks


def score(cfg: Config) -> dict[str, Any]:
    """{"table": {task: {model: metrics}}, "tasks": {task: details}} for every model with predictions.

    details: type, main metric, the best model on it, and per model the number of rows and, for
    classification types, the per-class report, the labels and the confusion matrix."""
    off = turned_off(cfg)
    models = [m for m in cfg.evaluate.models if m not in off]
    table: dict[str, dict[str, dict[str, float]]] = {}
    details: dict[str, dict[str, Any]] = {}
    for model in models:
        for task in model_tasks(cfg, model):
            kind = cfg.tasks[task].type
            gold, outputs = read_predictions(cfg, model, task)
            table.setdefault(task, {})[model] = task_metrics(kind, gold, outputs)
            entry = details.setdefault(task, {"type": kind, "main_metric": MAIN_METRIC[kind], "models": {}})
            info: dict[str, Any] = {"rows": len(gold)}
            if kind in CLASSIFICATION_TYPES:
                predicted = [o[OUTPUT_KEY[kind]] for o in outputs]
                labels = list(cfg.tasks[task].labels or sorted({*map(str, gold), *map(str, predicted)}))
                info["per_class"] = per_class_report(gold, predicted, labels)
                info["labels"] = labels
                info["confusion"] = confusion(gold, predicted, labels)
            entry["models"][model] = info
    for task, entry in details.items():
        main = entry["main_metric"]
        entry["best"] = max(table[task], key=lambda m: table[task][m][main])
    order = list(cfg.tasks)
    return {
        "models": models,
        "skipped": sorted(off & set(cfg.evaluate.models)),
        "table": {t: table[t] for t in order if t in table},
        "tasks": {t: details[t] for t in order if t in details},
    }


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: per task, a row per model, a column per metric; best main metric in bold."""
    lines = ["# Model comparison (test splits)", ""]
    if result["skipped"]:
        lines += [f"Not trained by this config, skipped: {', '.join(result['skipped'])}.", ""]
    for task, by_model in result["table"].items():
        entry = result["tasks"][task]
        main = entry["main_metric"]
        metrics = [main, *sorted({k for m in by_model.values() for k in m} - {main})]
        lines += [f"## {task} ({entry['type']}, main metric: {main})", ""]
        lines += ["| model | rows | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
        for model, values in by_model.items():
            cells = [f"{values[k]:.4f}" if k in values else "–" for k in metrics]
            if model == entry["best"]:
                cells[0] = f"**{cells[0]}**"
            lines.append(f"| {model} | {entry['models'][model]['rows']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
