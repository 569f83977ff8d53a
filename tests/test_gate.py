"""The registry gate: a better version is promoted; a worse one, or one that regresses one task, is not."""

from __future__ import annotations

import pytest

from unitask.config import Gate
from unitask.errors import ConfigError
from unitask.registry.gate import decide, primary, task_scores

CHAMPION = {"topic": 0.90, "ner": 0.50, "vqa": 0.80}


def test_the_first_version_is_promoted() -> None:
    result = decide(CHAMPION, None, Gate())
    assert result["promote"] and result["reason"] == "no champion yet"
    assert decide(CHAMPION, {}, Gate())["reason"] == "the champion has no recorded scores"


def test_a_better_version_is_promoted() -> None:
    result = decide({"topic": 0.92, "ner": 0.55, "vqa": 0.80}, CHAMPION, Gate())
    assert result["promote"], result["reason"]
    assert result["candidate"]["primary"] == pytest.approx(2.27 / 3)
    assert result["champion"]["primary"] == pytest.approx(2.20 / 3)
    assert result["deltas"] == pytest.approx({"topic": 0.02, "ner": 0.05, "vqa": 0.0})


def test_a_worse_version_is_not_promoted() -> None:
    result = decide({"topic": 0.89, "ner": 0.50, "vqa": 0.80}, CHAMPION, Gate(max_task_regression=0.05))
    assert not result["promote"]
    assert "does not beat the champion" in result["reason"]


def test_an_equal_version_is_not_promoted() -> None:
    assert not decide(dict(CHAMPION), CHAMPION, Gate())["promote"]


def test_a_version_that_regresses_one_task_is_not_promoted_even_when_better_on_average() -> None:
    candidate = {"topic": 0.99, "ner": 0.60, "vqa": 0.77}  # mean up by ~0.053, vqa down by 0.03
    result = decide(candidate, CHAMPION, Gate(max_task_regression=0.02))
    assert not result["promote"]
    assert result["regressions"] == pytest.approx({"vqa": -0.03})
    assert result["reason"].startswith("vqa drops by 0.0300")
    assert decide(candidate, CHAMPION, Gate(max_task_regression=0.05))["promote"]  # within tolerance


def test_primary_can_be_one_task_and_min_improvement_applies() -> None:
    candidate = {"topic": 0.905, "ner": 0.50, "vqa": 0.80}
    assert decide(candidate, CHAMPION, Gate(primary="topic"))["promote"]
    assert not decide(candidate, CHAMPION, Gate(primary="topic", min_improvement=0.01))["promote"]
    with pytest.raises(ConfigError, match="register.gate.primary: 'nope'"):
        primary(candidate, Gate(primary="nope"))


def test_task_scores_take_each_tasks_main_metric_of_the_model_that_answers_it() -> None:
    table = {
        "topic": {"multitask": {"macro_f1": 0.9, "accuracy": 0.95}, "finetune": {"macro_f1": 0.99}},
        "qa": {"multitask": {"f1": 72.0, "exact_match": 60.0}},
        "vqa": {"fusion": {"macro_f1": 0.7}},
    }
    routes = {"topic": "multitask", "qa": "multitask", "vqa": "fusion"}
    types = {"topic": "classification", "qa": "extractive_qa", "vqa": "multimodal_classification"}
    assert task_scores(table, routes, types) == pytest.approx({"topic": 0.9, "qa": 0.72, "vqa": 0.7})
    with pytest.raises(ConfigError, match="no validation metrics of model 'fusion' for task 'topic'"):
        task_scores(table, {"topic": "fusion"}, types)
    with pytest.raises(ConfigError, match="no test metrics of model 'fusion'"):
        task_scores(table, {"topic": "fusion"}, types, split="test")
