"""Serving the LoRA LLM: `unitask predict --model models/llm` and the `Router` answer every trained
task from one base model with its adapter(s); with per-task adapters a mixed batch runs in one pass
per task group, each row naming its adapter (PEFT's mixed-adapter inference).

The manifest (unitask-model.json, kind `llm`) names the base model (and its identity, to find it again
where its converted folder is absent: `unitask.llm.model.resolve_base`), the adapters, each task's type,
labels, config and prompt, and the token limits used in training, so answers are made exactly as the
stage made its test predictions.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from unitask.config import Config, Prompt, TaskConfig
from unitask.evaluation.metrics import MAIN_METRIC
from unitask.inference import check_text_rows
from unitask.models import read_manifest
from unitask.inference.multitask import input_frame
from unitask.llm.decode import Answerer, Limits
from unitask.llm.model import base_identity, load_tokenizer, resolve_base
from unitask.llm.prompts import TaskPrompt
from unitask.training.trainer import use_bf16


def manifest(cfg: Config, prompts: dict[str, TaskPrompt], base_path: str) -> dict[str, Any]:
    lc = cfg.llm
    return {
        "kind": "llm",
        "base_model": lc.model,
        "base_path": base_path,
        "base": base_identity(cfg, base_path),
        "adapters": lc.adapters,
        "limits": {"max_input_tokens": lc.max_input_tokens, "max_new_tokens": lc.max_new_tokens,
                   "batch_size": lc.eval_batch_size,
                   "bf16": use_bf16(lc.bf16)},
        "tasks": {
            name: {
                "type": p.type,
                "labels": p.config.labels,
                "main_metric": MAIN_METRIC[p.type],
                "config": p.config.model_dump(mode="json"),
                "prompt": {"instruction": p.instruction, "template": p.template},
            }
            for name, p in prompts.items()
        },
    }


def load_llm(folder: Path, base: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(the base model with the saved adapter(s) on it, tokenizer, manifest); `base`: a copy of the
    base model folder to load instead (a registered model's bundled base)."""
    from peft import PeftModel

    spec = read_manifest(folder)
    base_model = resolve_base(spec.get("base"), spec["base_path"], base)
    if spec["adapters"] == "per_task":
        names = list(spec["tasks"])
        model = PeftModel.from_pretrained(base_model, str(folder / names[0]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(folder / name), adapter_name=name)
    else:
        model = PeftModel.from_pretrained(base_model, str(folder))
    return model.eval(), load_tokenizer(str(folder)), spec


class LlmPredictor:
    def __init__(self, model: Any, tokenizer: Any, spec: dict[str, Any]) -> None:
        self.answerer = Answerer(model, tokenizer, Limits(**spec["limits"]), spec["adapters"] == "per_task")
        self.tasks = {name: entry["type"] for name, entry in spec["tasks"].items()}
        self.prompts = {
            name: TaskPrompt(name, TaskConfig.model_validate(entry["config"]), Prompt.model_validate(entry["prompt"]))
            for name, entry in spec["tasks"].items()
        }

    @classmethod
    def load(cls, folder: str | Path, base: str | None = None) -> LlmPredictor:
        return cls(*load_llm(Path(folder), base))

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows, outputs, groups = check_text_rows(rows, self.tasks)
        for name, index in groups.items():
            prompt = self.prompts[name]
            # input_frame reads a task's type and labels only
            frame = input_frame(SimpleNamespace(type=prompt.type, labels=lambda p=prompt: p.config.labels), [rows[i] for i in index])
            answers, _ = self.answerer.answer(prompt, frame.to_dict("records"))
            for i, answer in zip(index, answers):
                outputs[i] = answer
        return outputs  # type: ignore[return-value]
