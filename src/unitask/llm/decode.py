"""Answers of a causal LM in each task type's output format.

- Closed label sets (classification, pair classification): every allowed label's continuation (label
  + end token) is scored, batched: one pass over the shared prompts (left-padded, logits only at the
  last position), then the key/value cache repeated once per label and one pass over all label
  tokens. The label log-likelihoods, softmaxed over the labels, are the scores: the answer is always
  a declared label.
- Regression, token classification, extractive QA: greedy generation, parsed back by the task's
  `TaskPrompt.parse`; an answer that does not parse is counted (and scores as wrong).

With per-task adapters, each row names its adapter (PEFT's mixed-adapter batches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unitask.llm.prompts import TaskPrompt, answer_prefix, render


@dataclass
class Limits:
    max_input_tokens: int = 128  # each input text is cut to this many tokens
    max_new_tokens: int = 32
    batch_size: int = 16
    bf16: bool = False  # autocast inference to bf16 (as training does where the device has it)

# answers of these types never need more tokens (a number: sign, digits, point, end token)
NEW_TOKENS = {"regression": 8}


def cutter(tokenizer: Any, limit: int) -> Any:
    """A function that cuts a text to its first `limit` tokens."""

    def cut(text: str) -> str:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tokenizer.decode(ids[:limit])

    return cut


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The target tokens: the answer (after the prompt's answer prefix) and the end token."""
    return tokenizer(answer_prefix(tokenizer) + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def prompt_ids(tokenizer: Any, prompt: TaskPrompt, row: dict[str, Any], limits: Limits,
               shots: list[dict[str, Any]] = ()) -> list[int]:
    """The prompt tokens for `row`, with `shots` (train rows) as in-context examples before it."""
    cut = cutter(tokenizer, limits.max_input_tokens)
    examples = [(prompt.user(s, cut), prompt.target(s)) for s in shots]
    return tokenizer(render(tokenizer, prompt.user(row, cut), examples), add_special_tokens=False)["input_ids"]


def left_pad(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) of left-padded sequences: every sequence ends at the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[i, width - len(seq):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class Answerer:
    """Runs one causal LM (PEFT-wrapped or not) over task rows and decodes the answers."""

    def __init__(self, model: Any, tokenizer: Any, limits: Limits, per_task_adapters: bool = False) -> None:
        self.model, self.tokenizer, self.limits = model, tokenizer, limits
        self.per_task = per_task_adapters

    def _adapters(self, name: str, n: int) -> dict[str, Any]:
        return {"adapter_names": [name] * n} if self.per_task else {}

    @torch.no_grad()
    def answer(self, prompt: TaskPrompt, rows: list[dict[str, Any]], shots: list[dict[str, Any]] = (),
               progress: Callable[[int], Any] | None = None) -> tuple[list[dict[str, Any]], int]:
        """(one output per row, how many answers did not parse); `progress(n)` after each batch of n rows."""
        self.model.eval()
        autocast = torch.autocast(self.model.device.type, dtype=torch.bfloat16, enabled=self.limits.bf16)
        with autocast:
            return self._answer(prompt, rows, shots, progress or (lambda n: None))

    def _answer(self, prompt: TaskPrompt, rows: list[dict[str, Any]], shots: list[dict[str, Any]],
                progress: Callable[[int], Any]) -> tuple[list[dict[str, Any]], int]:
        outputs: list[dict[str, Any]] = []
        unparsed = 0
        for start in range(0, len(rows), self.limits.batch_size):
            chunk = rows[start : start + self.limits.batch_size]
            ids = [prompt_ids(self.tokenizer, prompt, row, self.limits, shots) for row in chunk]
            if prompt.labels is not None:
                outputs += self.score_labels(prompt, ids)
            else:
                for row, (text, score) in zip(chunk, self.generate(prompt.name, ids, NEW_TOKENS.get(prompt.type))):
                    output, ok = prompt.parse(text, row, score)
                    outputs.append(output)
                    unparsed += not ok
            progress(len(chunk))
        return outputs, unparsed

    def score_labels(self, prompt: TaskPrompt, prompts: list[list[int]]) -> list[dict[str, Any]]:
        """{"label", "scores"} per prompt: the probability of each declared label's continuation."""
        labels = prompt.labels or []
        ids, mask, positions = left_pad(prompts, self.tokenizer.pad_token_id)
        batch, n = len(prompts), len(labels)
        first = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **self._adapters(prompt.name, batch))
        first_logp = first.logits[:, -1].float().log_softmax(-1)  # batch x vocab
        cache = first.cache
        cache.batch_repeat_interleave(n)
        targets = [answer_ids(self.tokenizer, label) for label in labels]
        width = max(len(t) for t in targets)
        label_ids = torch.full((n, width), self.tokenizer.pad_token_id, dtype=torch.long)
        label_mask = torch.zeros((n, width), dtype=torch.long)
        for k, t in enumerate(targets):
            label_ids[k, : len(t)] = torch.tensor(t)
            label_mask[k, : len(t)] = 1
        lengths = mask.sum(-1).repeat_interleave(n)  # tokens of each row's prompt
        rest = self.model(
            input_ids=label_ids.repeat(batch, 1),
            attention_mask=torch.cat([mask.repeat_interleave(n, 0), label_mask.repeat(batch, 1)], dim=1),
            position_ids=lengths[:, None] + torch.arange(width)[None, :],
            cache=cache, use_cache=True, **self._adapters(prompt.name, batch * n),
        ).logits.float().log_softmax(-1)  # (batch*n) x width x vocab: position t predicts label token t+1
        tokens = label_ids.repeat(batch, 1)
        logp = first_logp.repeat_interleave(n, 0).gather(1, tokens[:, :1]).squeeze(1)
        if width > 1:
            later = rest[:, :-1].gather(2, tokens[:, 1:, None]).squeeze(2) * label_mask.repeat(batch, 1)[:, 1:]
            logp = logp + later.sum(1)
        probabilities = logp.view(batch, n).softmax(-1).tolist()
        return [
            {"label": labels[max(range(n), key=row.__getitem__)], "scores": dict(zip(labels, row))}
            for row in probabilities
        ]

    def generate(self, name: str, prompts: list[list[int]], cap: int | None = None) -> list[tuple[str, float]]:
        """Greedy answers (text, mean token probability) to left-padded prompts, at most `cap` tokens."""
        ids, mask, _ = left_pad(prompts, self.tokenizer.pad_token_id)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=min(self.limits.max_new_tokens, cap or self.limits.max_new_tokens), do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True, return_dict_in_generate=True, **self._adapters(name, len(prompts)),
        )
        new = out.sequences[:, ids.shape[1]:]
        step_logp = torch.stack([s.float().log_softmax(-1) for s in out.scores], dim=1)  # batch x steps x vocab
        chosen = step_logp.gather(2, new[:, : step_logp.shape[1], None]).squeeze(2)
        answers = []
        for row, logp in zip(new.tolist(), chosen):
            end = row.index(self.tokenizer.eos_token_id) if self.tokenizer.eos_token_id in row else len(row)
            score = float(logp[:end].mean().exp()) if end else 0.0
            answers.append((self.tokenizer.decode(row[:end], skip_special_tokens=True), score))
        return answers
