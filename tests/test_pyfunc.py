"""The served model's router, input handling and signature (no trained model needed here; the
pyfunc with real models is tested in tests/test_registry.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd

import pytest

from unitask.errors import ConfigError
from unitask.registry.pyfunc import INPUT_COLUMNS, Router, as_rows, priority, signature


class Echo:
    """A Predictor (see `unitask.inference`) that answers its tasks with what it was given."""

    def __init__(self, tasks: dict[str, str], fail: bool = False) -> None:
        self.tasks, self.fail, self.batches = tasks, fail, []

    def predict(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.fail:
            raise RuntimeError("out of memory")
        self.batches.append(rows)
        return [{"value": len(row.get("text", ""))} if row.get("text") else {"error": "row lacks text"} for row in rows]


def test_router_sends_each_task_to_its_predictor_in_one_batch_and_keeps_row_order() -> None:
    text, image = Echo({"topic": "classification", "shared": "classification"}), Echo({"vqa": "multimodal_classification", "shared": "classification"})
    router = Router({"multitask": text, "fusion": image})
    rows = [{"task": "vqa", "text": "abc"}, {"task": "topic", "text": "a"}, {"task": "shared", "text": "ab"}, {"task": "topic"}]
    assert router.predict(rows) == [{"value": 3}, {"value": 1}, {"value": 2}, {"error": "row lacks text"}]
    assert text.batches == [[rows[1], rows[2], rows[3]]]  # the first predictor wins a shared task
    assert image.batches == [[rows[0]]]
    assert router.tasks == {"topic": "classification", "shared": "classification", "vqa": "multimodal_classification"}


def test_router_answers_bad_rows_with_an_error_each_and_the_rest_of_the_batch() -> None:
    router = Router({"multitask": Echo({"topic": "classification"}), "fusion": Echo({"vqa": "multimodal_classification"}, fail=True)})
    out = router.predict([{"task": "nope", "text": "x"}, {"text": "no task"}, {"task": "topic", "text": "ok"}, {"task": "vqa", "text": "x"}])
    assert out[0] == {"error": "unknown task 'nope'; this model answers: topic, vqa"}
    assert out[1]["error"].startswith("row has no 'task'")
    assert out[2] == {"value": 2}
    assert out[3] == {"error": "fusion model failed: RuntimeError: out of memory"}


def test_rows_from_a_frame_drop_missing_fields() -> None:
    frame = pd.DataFrame([{"task": "a", "text": "x"}, {"task": "b", "text_pair": "y"}])
    assert as_rows(frame) == [{"task": "a", "text": "x"}, {"task": "b", "text_pair": "y"}]
    assert as_rows({"task": ["a"], "text": [None]}) == [{"task": "a"}]
    assert as_rows([{"task": "a", "image": None}]) == [{"task": "a"}]


def test_signature_requires_only_the_task_and_multitask_routes_first() -> None:
    inputs = signature().inputs
    assert inputs.input_names() == list(INPUT_COLUMNS)
    assert [c.name for c in inputs.inputs if c.required] == ["task"]
    assert sorted(["fusion", "multitask", "fusion_b"], key=priority) == ["multitask", "fusion", "fusion_b"]



def test_routes_name_the_predictor_of_each_task_and_only_those_tasks_are_answered() -> None:
    multitask, llm = Echo({"topic": "classification", "spam": "classification"}), Echo({"topic": "classification", "qa": "extractive_qa"})
    router = Router({"multitask": multitask, "llm": llm}, {"topic": "llm", "spam": "multitask"})
    rows = [{"task": "topic", "text": "ab"}, {"task": "spam", "text": "a"}, {"task": "qa", "text": "abc"}]
    out = router.predict(rows)
    assert out[:2] == [{"value": 2}, {"value": 1}] and out[2]["error"] == "unknown task 'qa'; this model answers: spam, topic"
    assert llm.batches == [[rows[0]]] and multitask.batches == [[rows[1]]]
    with pytest.raises(ConfigError, match="the multitask model does not answer task 'qa'"):
        Router({"multitask": multitask, "llm": llm}, {"qa": "multitask"})
