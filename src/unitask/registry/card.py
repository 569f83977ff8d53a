"""The model card logged with each registered version: what it is, its data, metrics, comparison, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unitask.config import Config

LIMITS = [
    "Trained and tested on the splits described above only; scores on other domains, languages or "
    "label sets are unknown. The text encoder is English and uncased (MiniLM by default).",
    "Inputs longer than `model.max_length` tokens are truncated: only their beginning is read.",
    "Labels outside each task's declared set are never predicted; a regression value may leave the "
    "training range.",
    "Scores come from one seed on one test split; small test sets give wide confidence intervals.",
]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _source(cfg: Config, task: str) -> str:
    source = cfg.tasks[task].source
    detail = {k: v for k, v in source.model_dump().items() if k in ("package", "version", "path", "dataset", "uri")}
    return f"{source.kind} " + ", ".join(f"{k} {v}" for k, v in detail.items() if v)


def model_card(cfg: Config, name: str, routes: dict[str, str], scores: dict[str, float], decision: dict[str, Any]) -> str:
    """Markdown: the model and its routing, data per task, served metrics, the comparison table from
    `unitask evaluate`, the gate decision, and known limits (with the data gate's warnings)."""
    reports = cfg.path(cfg.paths.reports)
    encoder = f"config {cfg.model.backbone_config}" if cfg.model.backbone_config else cfg.model.backbone
    lines = [
        f"# Model card: {name}",
        "",
        "One MLflow pyfunc that answers every task below. Input rows: `{task, text[, text_pair][, image]}`; "
        "outputs by task type: `{label, scores}`, `{value}`, `{tags, entities}` or `{answer, start, end, score}`; "
        "a row that cannot be answered gets `{error}`.",
        "",
        f"- Encoder: {encoder} (continued pretraining: {'yes' if cfg.pretrain.enabled else 'no'}), "
        f"max_length {cfg.model.max_length}, seed {cfg.seed}.",
        "- Bundled models: " + ", ".join(sorted(set(routes.values()))) + ".",
        "",
        "## Data and test metrics",
        "",
        "| task | type | answered by | source | train / validation / test rows | test main metric (0-1) |",
        "|---|---|---|---|---|---:|",
    ]
    for task, model in routes.items():
        rows = (_json(reports / "prepare" / f"{task}.json") or {}).get("rows", {})
        counts = " / ".join(str(rows.get(s, "?")) for s in ("train", "validation", "test"))
        kind = cfg.tasks[task].type
        lines.append(f"| {task} | {kind} | {model} | {_source(cfg, task)} | {counts} | {scores[task]:.4f} |")
    lines += ["", "## Registry gate", "", f"Decision: **{'promoted to champion' if decision['promote'] else 'not promoted'}** "
              f"({decision['reason']}). Primary: `{cfg.register.gate.primary}`, max per-task regression "
              f"{cfg.register.gate.max_task_regression}.", ""]
    comparison = cfg.path(cfg.evaluate.output) / "comparison.md"
    if comparison.is_file():
        body = comparison.read_text(encoding="utf-8").split("\n", 1)[1]
        lines += ["## Comparison with the other models (test splits)", body.replace("\n## ", "\n### "), ""]
    lines += ["## Known limits", "", *[f"- {limit}" for limit in LIMITS]]
    for task in routes:
        failures = (_json(reports / "validate" / f"{task}.json") or {}).get("failures", {})
        for where, what in sorted(failures.items()):
            lines.append(f"- {task}: data gate warning {where}: {what}")
    return "\n".join(lines) + "\n"
