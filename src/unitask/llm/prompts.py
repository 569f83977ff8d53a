"""Prompts are data: each text task type has an instruction and a template that turn a prepared row
into a prompt, a target text the model learns to write, and a parser that turns an answer back into
the task type's output ({"label", "scores"}, {"value"}, {"tags", "entities"}, {"answer", ...}).

Targets by type: a label word (classification, pair classification); a number (regression); the
entities as `type: words; type: words`, or `none` (token classification, parsed back to BIO tags); the
answer span, located back in the context (extractive QA). `llm.prompts.<task>` overrides a task's
instruction and template, so a new task of an existing type needs no code.
"""

from __future__ import annotations

import math
import re
from typing import Any

from unitask.config import Prompt, TaskConfig
from unitask.config.llm import template_problem
from unitask.errors import ConfigError
from unitask.evaluation.metrics import entity_spans

TEMPLATES = {
    "classification": "Text: {text}",
    "pair_classification": "Text 1: {text}\nText 2: {text_pair}",
    "regression": "Text: {text}",
    "token_classification": "Text: {tokens}",
    "extractive_qa": "Context: {context}\nQuestion: {question}",
}
NO_ENTITY = "none"
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def default_instruction(kind: str, config: TaskConfig) -> str:
    if kind in ("classification", "pair_classification"):
        what = "text" if kind == "classification" else "pair of texts"
        return f"Classify the {what}. Answer with one of: {', '.join(config.labels or [])}."
    if kind == "regression":
        span = f" from {config.label_range[0]:g} to {config.label_range[1]:g}" if config.label_range else ""
        return f"Rate the text with a number{span}. Answer with the number only."
    if kind == "token_classification":
        return (f"List the named entities of the text as `type: words`, separated by `; `, with types "
                f"{', '.join(entity_types(config))}. Answer `{NO_ENTITY}` when there is none.")
    return "Answer the question with the exact words of the context."


def entity_types(config: TaskConfig) -> list[str]:
    """Entity types of a BIO tag set, in declaration order ("B-person" -> "person")."""
    return list(dict.fromkeys(t[2:] for t in config.labels or [] if t[:2] in ("B-", "I-")))


class TaskPrompt:
    """The prompt, target and answer parser of one text task."""

    def __init__(self, name: str, config: TaskConfig, override: Prompt | None = None) -> None:
        if config.type == "multimodal_classification":
            raise ConfigError(
                f"llm: task '{name}' is a text+image task; this LLM is text-only",
                hint="leave it out of llm.tasks (fusion trains text+image tasks)",
            )
        self.name, self.config, self.type = name, config, config.type
        override = override or Prompt()
        self.instruction = override.instruction or default_instruction(self.type, config)
        self.template = override.template or TEMPLATES[self.type]
        self.labels = list(config.labels or []) if self.type in ("classification", "pair_classification") else None
        self.types = entity_types(config) if self.type == "token_classification" else []
        self._check_template()

    def _check_template(self) -> None:
        fields = set(re.findall(r"{(\w+)", self.template))
        roles = self._roles()
        problem = template_problem(self.template)
        if problem is None and fields - roles - {"labels", "entity_types"}:
            problem = f"{self.template!r} names {sorted(fields - roles - {'labels', 'entity_types'})}, not roles of a {self.type} task ({sorted(roles)})"
        if problem is None and not roles <= fields:
            problem = f"{self.template!r} leaves out {sorted(roles - fields)}, which a {self.type} prompt needs"
        if problem:
            raise ConfigError(f"llm.prompts.{self.name}.template: {problem}", hint="e.g. template: 'Message: {text}'")

    def _roles(self) -> set[str]:
        """The input roles of the task type (what a template fills in)."""
        return {"classification": {"text"}, "regression": {"text"}, "pair_classification": {"text", "text_pair"},
                "token_classification": {"tokens"}, "extractive_qa": {"question", "context"}}[self.type]

    # ---- row -> prompt and target ------------------------------------------------------------

    def user(self, row: dict[str, Any], cut: Any = None) -> str:
        """The user message for `row`: instruction, a blank line, the filled template. `cut` shortens
        each input text (to the token budget)."""
        cut = cut or (lambda text: text)
        fields: dict[str, Any] = {"labels": ", ".join(self.labels or []), "entity_types": ", ".join(self.types)}
        for role in self._roles():
            value = " ".join(str(w) for w in row[role]) if role == "tokens" else str(row[role])
            fields[role] = cut(value)
        return f"{self.instruction}\n\n{self.template.format(**fields)}"

    def target(self, row: dict[str, Any]) -> str:
        """What the model should answer for `row` (from its gold label)."""
        if self.labels is not None:
            return str(row["label"])
        if self.type == "regression":
            return f"{round(float(row['label']), 2):g}"
        if self.type == "token_classification":
            words = [str(w) for w in row["tokens"]]
            spans = sorted(entity_spans([str(t) for t in row["tags"]]), key=lambda s: s[1])
            return "; ".join(f"{kind}: {' '.join(words[s:e])}" for kind, s, e in spans) or NO_ENTITY
        texts = [str(t) for t in row["answers"]["text"]]
        return texts[0] if texts else ""

    # ---- answer -> output ----------------------------------------------------------------------

    def parse(self, answer: str, row: dict[str, Any], score: float = 0.0) -> tuple[dict[str, Any], bool]:
        """(the task type's output for a generated `answer`, whether it parsed). An answer that does not
        parse still gets an output (counted as wrong by the metrics) and False."""
        answer = answer.strip()
        if self.labels is not None:
            match = next((lab for lab in self.labels if lab == answer), None)
            match = match or next((lab for lab in self.labels if lab.lower() == answer.lower()), None)
            chosen = match or self.labels[0]
            return {"label": chosen, "scores": {lab: float(lab == chosen) for lab in self.labels}}, match is not None
        if self.type == "regression":
            return self._number(answer)
        if self.type == "token_classification":
            return self._entities(answer, [str(w) for w in row["tokens"]])
        return self._span(answer, str(row["context"]), score)

    def fallback_value(self) -> float:
        """Regression's answer when no number is produced: the middle of label_range (else 0)."""
        low, high = self.config.label_range or (0.0, 0.0)
        return (low + high) / 2

    def _number(self, answer: str) -> tuple[dict[str, Any], bool]:
        found = NUMBER.search(answer)
        value = float(found.group()) if found else math.nan
        if not math.isfinite(value):
            return {"value": self.fallback_value()}, False
        if self.config.label_range:
            value = min(max(value, self.config.label_range[0]), self.config.label_range[1])
        return {"value": value}, True

    def _entities(self, answer: str, words: list[str]) -> tuple[dict[str, Any], bool]:
        tags = ["O"] * len(words)
        ok = True
        if answer.lower().strip(" .") != NO_ENTITY:
            cursor = 0
            for part in filter(None, (p.strip() for p in answer.split(";"))):
                kind, sep, text = part.partition(":")
                kind, entity = kind.strip(), text.split()
                if not sep or kind not in self.types or not entity:
                    ok = False
                    continue
                start = _find(words, entity, cursor, tags)
                if start is None:
                    ok = False
                    continue
                tags[start] = f"B-{kind}"
                tags[start + 1 : start + len(entity)] = [f"I-{kind}"] * (len(entity) - 1)
                cursor = start + len(entity)
        entities = [
            {"entity": kind, "start": s, "end": e, "text": " ".join(words[s:e])}
            for kind, s, e in sorted(entity_spans(tags), key=lambda span: span[1])
        ]
        return {"tags": tags, "entities": entities}, ok

    def _span(self, answer: str, context: str, score: float) -> tuple[dict[str, Any], bool]:
        start = context.find(answer) if answer else -1
        if start < 0 and answer:
            start = context.lower().find(answer.lower())
        if start < 0:
            return {"answer": "", "start": 0, "end": 0, "score": score}, False
        end = start + len(answer)
        return {"answer": context[start:end], "start": start, "end": end, "score": score}, True


def _find(words: list[str], entity: list[str], cursor: int, tags: list[str]) -> int | None:
    """Where `entity` (words) first occurs in untagged words, from `cursor` on, then from the start;
    exact first, then ignoring case."""
    n = len(entity)
    for same in (lambda a, b: a == b, lambda a, b: a.lower() == b.lower()):
        for begin in (cursor, 0):
            for i in range(begin, len(words) - n + 1):
                if all(same(w, e) for w, e in zip(words[i : i + n], entity)) and all(t == "O" for t in tags[i : i + n]):
                    return i
    return None


def answer_prefix(tokenizer: Any) -> str:
    """What goes before an answer: nothing after a chat template's assistant header, else a space after `Answer:`."""
    return "" if getattr(tokenizer, "chat_template", None) else " "


def render(tokenizer: Any, user: str, shots: list[tuple[str, str]] = ()) -> str:
    """The prompt text: the tokenizer's chat template (a user turn per message, the in-context
    examples as earlier turns) where it has one, else `user` lines ending in `Answer:`."""
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for question, answer in shots:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": user})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{question}\nAnswer: {answer}\n\n" for question, answer in shots) + f"{user}\nAnswer:"
