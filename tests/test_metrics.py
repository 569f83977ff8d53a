"""The metric functions against values computed by hand (the working is in the comments)."""

from __future__ import annotations

import math

import pytest

from unitask.evaluation.metrics import (
    classification_metrics,
    confusion,
    entity_metrics,
    per_class_report,
    regression_metrics,
    squad_metrics,
    task_metrics,
)

GOLD = ["a", "a", "b", "b", "c"]
PRED = ["a", "b", "b", "b", "a"]


def test_classification_metrics() -> None:
    # a: P 1/2 R 1/2 F1 1/2; b: P 2/3 R 1 F1 0.8; c: never predicted, P R F1 0
    got = classification_metrics(GOLD, PRED)
    assert got == pytest.approx(
        {"accuracy": 3 / 5, "macro_precision": (1 / 2 + 2 / 3) / 3, "macro_recall": 1.5 / 3, "macro_f1": 1.3 / 3}
    )


def test_per_class_report_and_confusion_matrix() -> None:
    report = per_class_report(GOLD, PRED, ["a", "b", "c"])
    assert report["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2})
    assert report["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1-score": 0.8, "support": 2})
    assert report["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 1})
    # rows: gold a, b, c; columns: predicted a, b, c
    assert confusion(GOLD, PRED, ["a", "b", "c"]) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert confusion(GOLD, PRED, ["c", "b", "a"]) == [[0, 0, 1], [0, 2, 0], [0, 1, 1]]


def test_regression_metrics() -> None:
    # errors -1, 0, -1, -1; deviations x: -1.5 -.5 .5 1.5 (sum sq 5), y: -1.25 -1.25 .75 1.75 (sum sq 6.75),
    # cross sum 5.5; ranks of y: 1.5 1.5 3 4 -> deviations -1 -1 .5 1.5 (sum sq 4.5), cross sum 4.5
    got = regression_metrics([1, 2, 3, 4], [2, 2, 4, 5])
    assert got == pytest.approx(
        {"mse": 0.75, "rmse": math.sqrt(0.75), "mae": 0.75, "pearson": 5.5 / math.sqrt(5 * 6.75), "spearman": 4.5 / math.sqrt(5 * 4.5)}
    )
    assert regression_metrics([1, 2, 3], [2, 2, 2])["pearson"] == 0.0  # constant predictions


def test_entity_metrics_score_exact_spans_and_types() -> None:
    gold = [["B-per", "I-per", "O", "B-loc"], ["O", "B-loc", "I-loc"], ["B-per", "I-per"]]
    pred = [["B-per", "I-per", "O", "B-org"], ["O", "I-loc", "I-loc"], ["B-per", "B-per"]]
    # gold spans: per 0-2, loc 3-4 | loc 1-3 | per 0-2 (4); predicted: per 0-2, org 3-4 | loc 1-3 (an I- tag
    # starts an entity, as in conlleval) | per 0-1, per 1-2 (5); hits: per 0-2 and loc 1-3 (2)
    # tokens right: 3 of 4, 2 of 3, 1 of 2
    got = entity_metrics(gold, pred)
    assert got == pytest.approx({"precision": 2 / 5, "recall": 2 / 4, "f1": 2 * 0.4 * 0.5 / 0.9, "accuracy": 6 / 9})
    assert entity_metrics([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 1.0}


def test_squad_metrics() -> None:
    # "Cat" = "the cat" after normalization; "Paris!" = "Paris"; "sky is blue" vs "blue sky": 2 common
    # tokens, precision 2/3, recall 1, F1 0.8
    got = squad_metrics([["the cat"], ["in Paris", "Paris"], ["blue sky"]], ["Cat", "Paris!", "sky is blue"])
    assert got == pytest.approx({"exact_match": 200 / 3, "f1": 100 * 2.8 / 3})


def test_task_metrics_reads_the_output_field_of_each_type() -> None:
    assert task_metrics("multimodal_classification", ["x", "y"], [{"label": "x", "scores": {}}, {"label": "x", "scores": {}}])["accuracy"] == 0.5
    assert task_metrics("regression", [1.0, 2.0], [{"value": 1.0}, {"value": 3.0}])["mse"] == 0.5
    assert task_metrics("extractive_qa", [["a b"]], [{"answer": "a b", "start": 0, "end": 3, "score": 1.0}])["exact_match"] == 100.0


@pytest.mark.parametrize(
    ("gold", "pred", "expected"),
    [
        # I- after O starts an entity (conlleval): the predicted loc 1-3 matches the gold one
        ([["O", "B-loc", "I-loc"]], [["O", "I-loc", "I-loc"]], {"precision": 1.0, "recall": 1.0, "f1": 1.0}),
        # a type change inside an entity ends it: per 0-1 and loc 1-2, neither is per 0-2
        ([["B-per", "I-per"]], [["B-per", "I-loc"]], {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        # nothing predicted: precision, recall and F1 are 0, without a warning or an error
        ([["B-per", "O"], ["B-loc"]], [["O", "O"], ["O"]], {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        # B- after B- of the same type: two one-token entities, one of them right
        ([["B-per", "I-per", "O"]], [["B-per", "B-per", "O"]], {"precision": 0.0, "recall": 0.0, "f1": 0.0}),
        ([["B-per", "O", "B-per"]], [["B-per", "O", "O"]], {"precision": 1.0, "recall": 0.5, "f1": 2 / 3}),
    ],
)
def test_entity_metrics_edge_cases(gold: list[list[str]], pred: list[list[str]], expected: dict[str, float]) -> None:
    got = entity_metrics(gold, pred)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def test_entity_spans_are_the_entities_seqeval_scores() -> None:
    """The entities `unitask` serves (decode) are the chunks seqeval counts: an F1 of 1 on them."""
    from seqeval.metrics import classification_report

    from unitask.evaluation.metrics import entity_spans

    tags = ["I-per", "I-per", "B-loc", "I-per", "O", "I-x", "B-x", "I-x"]
    assert entity_spans(tags) == {("per", 0, 2), ("loc", 2, 3), ("per", 3, 4), ("x", 5, 6), ("x", 6, 8)}
    report = classification_report([tags], [tags], output_dict=True)
    assert {k: int(v["support"]) for k, v in report.items() if "avg" not in k} == {"loc": 1, "per": 2, "x": 2}


def _qa_predictions(n: int, seed: int) -> tuple[list[list[str]], list[str]]:
    """Gold answers and predictions like a QA model's on the synthetic task: the answer, the answer with its
    neighbours, a wrong window, an empty answer; some examples with several gold answers."""
    import numpy as np
    from conftest import synthetic_task

    rng = np.random.default_rng(seed)
    golds, preds = [], []
    for row in synthetic_task("extractive_qa", n, seed=seed)[1]:
        words = row["context"].split()
        answer = row["answers"]["text"][0]
        at = words.index("answer") + 1
        gold = [answer] if rng.random() < 0.5 else [answer, f"answer {answer}", f"The {answer}."]
        window = int(rng.integers(0, 4))
        start = max(0, at - int(rng.integers(0, 3)))
        kinds = [answer, " ".join(words[start : at + window]), " ".join(words[-3:]), "", f"an {answer.upper()}!"]
        pred = kinds[int(rng.integers(0, len(kinds)))]
        golds.append(gold)
        preds.append(pred)
    return golds, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squad_metrics_equal_the_official_script_as_torchmetrics_ports_it(seed: int) -> None:
    from torchmetrics.functional.text import squad

    golds, preds = _qa_predictions(200, seed)
    golds += [["in Paris", "Paris"], ["blue sky"], ["the cat"], ["a b c"]]  # several gold answers, articles
    preds += ["Paris!", "sky is blue", "", "c b a"]  # punctuation, word order, empty prediction
    reference = squad(
        [{"prediction_text": p, "id": str(i)} for i, p in enumerate(preds)],
        [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(golds)],
    )
    ours = squad_metrics(golds, preds)
    assert ours == pytest.approx({k: float(v) for k, v in reference.items()}, abs=1e-4)
    assert 0 < ours["exact_match"] < ours["f1"] < 100  # the mix holds right, partial and wrong answers


def test_squad_metrics_per_example_equal_the_official_script() -> None:
    """One example at a time, so that an error on one kind of answer cannot hide in an average."""
    from torchmetrics.functional.text import squad

    golds, preds = _qa_predictions(40, 3)
    for i, (gold, pred) in enumerate(zip(golds, preds)):
        target = [{"answers": {"text": gold, "answer_start": [0] * len(gold)}, "id": "q"}]
        reference = {k: float(v) for k, v in squad([{"prediction_text": pred, "id": "q"}], target).items()}
        assert squad_metrics([gold], [pred]) == pytest.approx(reference, abs=1e-4), (i, gold, pred)
