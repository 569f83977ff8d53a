"""Serving the LoRA LLM: `unitask predict --model models/llm` and the `Router` answer every trained
task from one base model with its adapter(s); with per-task adapters a mixed batch runs in one pass
per task group, each row naming its adapter (PEFT's mixed-adapter inference).

The manifest (unitask-model.json, kind `llm`) names the base model, the adapters, each task's type,
labels, config and prompt, and the token limits used in training, so answers are made exactly as the
stage made its test predictions.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from unitask.config import Config, Prompt, TaskConfig
from unitask.errors import ConfigError
from unitask.evaluation.metrics import MAIN_METRIC
from unitask.inference import check_text_rows, read_manifest
from unitask.inference.multitask import input_frame
from unitask.llm.decode import Answerer, Limits
from unitask.llm.prompts import TaskPrompt
from unitask.training.trainer import use_bf16


def manifest(cfg: Config, prompts: dict[str, TaskPrompt], base_path: str) -> dict[str, Any]:
    lc = cfg.llm
    return {
        "kind": "llm",
        "base_model": lc.model,
        "base_path": base_path,
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


def load_llm(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(the base model with the saved adapter(s) on it, tokenizer, manifest)."""
    from peft import PeftModel

    from unitask.llm.model import load_base, load_tokenizer

    spec = read_manifest(folder)
    base_path = spec["base_path"]
    if not Path(base_path).is_dir() and Path(base_path).is_absolute():
        raise ConfigError(f"{folder}: its base model {base_path} is gone",
                          hint=f"run `unitask llm` again (it converts {spec['base_model']} once)")
    base = load_base(base_path)
    if spec["adapters"] == "per_task":
        names = list(spec["tasks"])
        model = PeftModel.from_pretrained(base, str(folder / names[0]), adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(str(folder / name), adapter_name=name)
    else:
        model = PeftModel.from_pretrained(base, str(folder))
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
    def load(cls, folder: str | Path) -> LlmPredictor:
        return cls(*load_llm(Path(folder)))

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
