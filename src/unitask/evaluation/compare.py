"""Score every model's validation and test predictions and compare them: per split, one table of
task x model x metric.

The tables are built from `reports/predictions/<model>/[validation/]<task>.jsonl` only (no model is
loaded), so the TF-IDF baseline, the fine-tunes, the multi-task model and the fusion models are scored
by the same functions on the same rows. Validation decides (the best model per task, the registry
gate); test is reported only.
"""

from __future__ import annotations

from typing import Any

from unitask.config import Config
from unitask.errors import DataError
from unitask.evaluation.metrics import MAIN_METRIC, OUTPUT_KEY, confusion, group_accuracy, per_class_report, task_metrics
from unitask.evaluation.predictions import SCORED_SPLITS, predictions_path, read_predictions

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
    if not cfg.fusion_tasks():  # no text+image task to train
        off |= {"fusion", "fusion_text", "fusion_image"}
    if not cfg.finetune_tasks():  # an empty task list: the stage trains nothing
        off.add("finetune")
    if not cfg.multitask_tasks():
        off.add("multitask")
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
    """{"table": test table, "validation": validation table, "tasks": {task: details}} for every model
    with predictions; a table is {task: {model: metrics}}.

    details: type, main metric, the best model on it by VALIDATION score, and per model the number of
    test rows and, for classification types, the test per-class report, labels, confusion matrix and,
    where the predictions carry a group (`tasks.<task>.group`), the accuracy per group."""
    off = turned_off(cfg)
    models = [m for m in cfg.evaluate.models if m not in off]
    tables: dict[str, dict[str, dict[str, dict[str, float]]]] = {split: {} for split in SCORED_SPLITS}
    details: dict[str, dict[str, Any]] = {}
    for model in models:
        for task in model_tasks(cfg, model):
            kind = cfg.tasks[task].type
            read = {split: read_predictions(cfg, model, task, split) for split in SCORED_SPLITS}
            for split, (gold, outputs) in read.items():
                tables[split].setdefault(task, {})[model] = task_metrics(kind, gold, outputs)
            entry = details.setdefault(task, {"type": kind, "main_metric": MAIN_METRIC[kind], "models": {}})
            gold, outputs = read["test"]
            info: dict[str, Any] = {"rows": len(gold), "validation_rows": len(read["validation"][0])}
            if kind in CLASSIFICATION_TYPES:
                predicted = [o[OUTPUT_KEY[kind]] for o in outputs]
                labels = list(cfg.tasks[task].labels or sorted({*map(str, gold), *map(str, predicted)}))
                info["per_class"] = per_class_report(gold, predicted, labels)
                info["labels"] = labels
                info["confusion"] = confusion(gold, predicted, labels)
                if all("group" in o for o in outputs):  # tasks.<task>.group, e.g. easy_vqa's question kinds
                    info["per_group"] = group_accuracy(gold, predicted, [str(o["group"]) for o in outputs])
            entry["models"][model] = info
    validation = tables["validation"]
    for task, entry in details.items():
        main = entry["main_metric"]
        entry["best"] = max(validation[task], key=lambda m: validation[task][m][main])
        entry["best_chosen_on"] = "validation"
    order = list(cfg.tasks)
    return {
        "models": models,
        "skipped": sorted(off & set(cfg.evaluate.models)),
        "table": {t: tables["test"][t] for t in order if t in tables["test"]},
        "validation": {t: validation[t] for t in order if t in validation},
        "tasks": {t: details[t] for t in order if t in details},
    }


def headline(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {split: {task: main metric}}}: the numbers `dvc metrics show` and `dvc exp show` read, a
    row per model and split and a column per task."""
    tables = {"validation": result["validation"], "test": result["table"]}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split, table in tables.items():
        for task, by_model in table.items():
            main = result["tasks"][task]["main_metric"]
            for model, metrics in by_model.items():
                out.setdefault(model, {}).setdefault(split, {})[task] = metrics[main]
    return out


def markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: per task, a row per model and split, a column per metric; the model
    with the best validation main metric in bold (validation decides, test is reported)."""
    lines = [
        "# Model comparison (validation and test splits)",
        "",
        "Validation scores choose (the best model, in bold; the registry gate); test scores are only reported.",
        "",
    ]
    if result["skipped"]:
        lines += [f"Not trained by this config, skipped: {', '.join(result['skipped'])}.", ""]
    tables = {"validation": result["validation"], "test": result["table"]}
    for task, by_model in result["table"].items():
        entry = result["tasks"][task]
        main = entry["main_metric"]
        metrics = [main, *sorted({k for m in by_model.values() for k in m} - {main})]
        lines += [f"## {task} ({entry['type']}, main metric: {main})", ""]
        lines += ["| model | split | rows | " + " | ".join(metrics) + " |", "|---|---|---:|" + "---:|" * len(metrics)]
        for model in by_model:
            info = entry["models"][model]
            for split, rows in (("validation", info["validation_rows"]), ("test", info["rows"])):
                values = tables[split][task][model]
                cells = [f"{values[k]:.4f}" if k in values else "–" for k in metrics]
                if model == entry["best"]:
                    cells[0] = f"**{cells[0]}**"
                lines.append(f"| {model} | {split} | {rows} | " + " | ".join(cells) + " |")
        lines.append("")
        grouped = {m: info["per_group"] for m, info in entry["models"].items() if "per_group" in info}
        if grouped:
            groups = sorted({g for per in grouped.values() for g in per})
            lines += ["Accuracy per group:", "", "| model | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
            for model, per in grouped.items():
                lines.append(f"| {model} | " + " | ".join(f"{per[g]['accuracy']:.4f}" if g in per else "–" for g in groups) + " |")
            lines.append("")
    return "\n".join(lines)
