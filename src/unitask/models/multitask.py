"""The multi-task model: one shared encoder, one small head per task, picked by task.

Heads match the single-task models of `unitask finetune`, so the comparison is about sharing the
encoder and nothing else:
- classification, pair classification, regression: dropout + linear on the encoder's pooled output
  (BERT's pooler; the mean of the token states for encoders without one); cross-entropy or MSE;
- token classification: dropout + linear on every token state; cross-entropy, -100 ignored;
- extractive QA: a linear layer to start and end logits; the mean of the two cross-entropies.

A saved model folder holds `config.json` (the encoder's), `model.safetensors` (encoder and heads),
the tokenizer, and `unitask-model.json`, the manifest that names every task and its head.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from unitask.errors import ConfigError
from unitask.models import MANIFEST

WEIGHTS = "model.safetensors"
SEQUENCE_TYPES = ("classification", "pair_classification", "regression")
HEAD_TYPES = (*SEQUENCE_TYPES, "token_classification", "extractive_qa")


@dataclass(frozen=True)
class HeadSpec:
    """What a head needs: the task type and its number of outputs."""

    type: str
    num_labels: int


def _dropout(config: Any) -> float:
    for key in ("classifier_dropout", "hidden_dropout_prob", "dropout"):
        value = getattr(config, key, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.1


class MultitaskModel(nn.Module):
    """`encoder` (a transformers `AutoModel`) with a head per task. `forward(task_id, ...)` runs one
    encoder pass over a batch of one task and that task's head; with targets it returns the loss.
    `head_outputs` applies one task's head to encoder outputs, so that inference can encode the rows
    of several tasks in one batch."""

    def __init__(self, encoder: nn.Module, heads: dict[str, HeadSpec]) -> None:
        super().__init__()
        bad = {name: spec.type for name, spec in heads.items() if spec.type not in HEAD_TYPES}
        if bad:
            raise ConfigError(f"multitask: task types {bad} have no text head", hint=f"text types: {', '.join(HEAD_TYPES)}")
        self.encoder = encoder
        self.specs = dict(heads)
        self.task_names = list(heads)
        config = encoder.config
        hidden, p = config.hidden_size, _dropout(config)
        self.dropout = nn.Dropout(p)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(hidden, 2 if spec.type == "extractive_qa" else spec.num_labels) for name, spec in heads.items()}
        )
        std = getattr(config, "initializer_range", 0.02)
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=std)
            nn.init.zeros_(head.bias)

    def task_index(self, name: str) -> int:
        if name not in self.specs:
            raise ConfigError(f"multitask: no head for task '{name}'", hint=f"the model's tasks: {', '.join(self.task_names)}")
        return self.task_names.index(name)

    def forward(
        self,
        task_id: torch.Tensor | int,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        name = self.task_names[int(task_id.reshape(-1)[0]) if isinstance(task_id, torch.Tensor) else task_id]
        spec = self.specs[name]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        encoded = self.encoder(**inputs)
        sequence = pooled(encoded, attention_mask) if spec.type in SEQUENCE_TYPES else None
        out = self.head_outputs(name, encoded.last_hidden_state, sequence)
        if spec.type == "extractive_qa":
            if start_positions is not None and end_positions is not None:
                length = out["start_logits"].size(1)
                s, e = start_positions.clamp(0, length), end_positions.clamp(0, length)
                loss = (F.cross_entropy(out["start_logits"].float(), s, ignore_index=length)
                        + F.cross_entropy(out["end_logits"].float(), e, ignore_index=length)) / 2
                out = {"loss": loss, **out}
            return out
        logits = out["logits"]
        if labels is None:
            return out
        if spec.type == "token_classification":
            loss = F.cross_entropy(logits.float().view(-1, spec.num_labels), labels.view(-1), ignore_index=-100)
        elif spec.type == "regression":
            loss = F.mse_loss(logits.float().squeeze(-1), labels.float())
        else:
            loss = F.cross_entropy(logits.float(), labels.view(-1))
        return {"loss": loss, "logits": logits}

    def head_outputs(self, name: str, states: torch.Tensor, sequence: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Task `name`'s head on the encoder outputs of its rows, whatever batch they were encoded in:
        token states [rows, length, hidden], and for sequence-level types the pooled vectors [rows,
        hidden] (see `pooled`). {"logits"}, or {"start_logits", "end_logits"} for extractive QA."""
        spec, head = self.specs[name], self.heads[name]
        if spec.type == "extractive_qa":
            start, end = head(states).split(1, dim=-1)
            return {"start_logits": start.squeeze(-1).contiguous(), "end_logits": end.squeeze(-1).contiguous()}
        if spec.type == "token_classification":
            return {"logits": head(self.dropout(states))}
        if sequence is None:
            raise ValueError(f"multitask: task '{name}' ({spec.type}) needs the pooled encoder outputs")
        return {"logits": head(self.dropout(sequence))}


def pooled(encoded: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """One vector per sequence: the encoder's pooler output, or the masked mean of token states."""
    pooler = getattr(encoded, "pooler_output", None)
    if pooler is not None:
        return pooler
    states = encoded.last_hidden_state
    if attention_mask is None:
        return states.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def save_multitask(model: MultitaskModel, tokenizer: Any, folder: Path, manifest: dict[str, Any]) -> None:
    """Write the model into `folder` (an empty folder; see `unitask.atomic.atomic_dir`)."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    model.encoder.config.save_pretrained(folder)
    save_model(model, str(folder / WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)
    heads = {name: asdict(spec) for name, spec in model.specs.items()}
    (folder / MANIFEST).write_text(
        json.dumps({"kind": "multitask", **manifest, "heads": heads}, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def load_multitask(folder: Path) -> tuple[MultitaskModel, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, manifest) from a folder written by `save_multitask`."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    config = AutoConfig.from_pretrained(folder)
    encoder = AutoModel.from_config(config)
    heads = {name: HeadSpec(**spec) for name, spec in manifest["heads"].items()}
    model = MultitaskModel(encoder, heads)
    load_model(model, str(folder / WEIGHTS), strict=True)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder), manifest
