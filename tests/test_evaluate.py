"""`unitask evaluate`: scores every model's prediction files, compares them, plots, logs to MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import synthetic_task, write_project

from unitask.cli import main
from unitask.config import Config, load_config
from unitask.errors import DataError
from unitask.evaluation.compare import score
from unitask.evaluation.metrics import task_metrics
from unitask.evaluation.predictions import write_predictions
from unitask.evaluation.stage import evaluate
from unitask.tracking import stage_run, tracking_uri

VQA = {
    "type": "multimodal_classification",
    "source": {"kind": "local", "path": "data/raw/vqa"},
    "read": {"format": "parquet"},
    "columns": {"text": "text", "image": "image", "label": "label"},
    "labels": ["yes", "no"],
}


def _project(root: Path, models: list[str], **sections: Any) -> Config:
    tasks = {kind: synthetic_task(kind, 0, seed=0)[0] for kind in ("classification", "regression", "token_classification", "extractive_qa")}
    tasks["vqa"] = VQA
    sections.setdefault("fusion", {"baselines": False})
    return load_config(write_project(root, tasks, evaluate={"models": models, "curves": True}, tracking={"uri": "sqlite:///mlflow/mlflow.db"}, **sections))


def _label(label: str) -> dict[str, Any]:
    return {"label": label, "scores": {label: 1.0}}


def _write(cfg: Config, model: str, wrong: int, wrong_on_validation: int | None = None) -> None:
    """Test predictions of `model` with its first `wrong` classification rows wrong, and validation
    predictions with `wrong_on_validation` (default: as many) wrong."""
    for split, n in (("test", wrong), ("validation", wrong if wrong_on_validation is None else wrong_on_validation)):
        gold = ["sports", "tech", "food", "tech", "sports", "food"]
        outputs = [_label("food" if i < n else g) for i, g in enumerate(gold)]
        write_predictions(cfg, model, "classification", gold, outputs, split)
        write_predictions(cfg, model, "regression", [1.0, 2.0, 3.0], [{"value": v + n} for v in (1.0, 2.5, 2.9)], split)
        if model != "baseline":  # the TF-IDF baseline has no token classification or QA
            tags = [["B-per", "O"], ["O", "B-loc"]]
            outputs = [{"tags": t, "entities": []} for t in (tags[0], ["O", "O"])]
            write_predictions(cfg, model, "token_classification", tags, outputs, split)
            answers = [{"answer": a, "start": 0, "end": 3, "score": 1.0} for a in ("two", "four")]
            write_predictions(cfg, model, "extractive_qa", [["two"], ["five"]], answers, split)


def test_compares_every_model_on_every_task_it_has(tmp_path: Path) -> None:
    import mlflow

    cfg = _project(tmp_path, ["baseline", "finetune", "fusion", "fusion_text"], fusion={"tasks": ["vqa"], "baselines": False})
    _write(cfg, "baseline", wrong=0)
    _write(cfg, "finetune", wrong=2)
    for split in ("validation", "test"):
        write_predictions(cfg, "fusion", "vqa", ["yes", "no", "no"], [_label(x) for x in ("yes", "yes", "no")], split)
    with stage_run(cfg, "finetune", "classification"):  # a training run whose curves evaluate pulls
        for step, loss in [(5, 1.0), (10, 0.6), (15, 0.4)]:
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_metric("eval_loss", 0.5, step=15)

    result = evaluate(cfg)
    out = tmp_path / "reports" / "evaluate"
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison == {"validation": result["validation"], "test": result["table"]}
    table = comparison["test"]
    assert set(table) == {"classification", "regression", "token_classification", "extractive_qa", "vqa"}
    assert set(table["classification"]) == {"baseline", "finetune"} and set(table["extractive_qa"]) == {"finetune"}
    assert table["classification"]["baseline"]["macro_f1"] == 1.0
    assert table["classification"]["finetune"]["accuracy"] == pytest.approx(4 / 6)
    assert table["regression"]["finetune"]["mse"] == pytest.approx(task_metrics("regression", [1.0, 2.0, 3.0], [{"value": v} for v in (3.0, 4.5, 4.9)])["mse"])
    assert table["extractive_qa"]["finetune"] == {"exact_match": 50.0, "f1": 50.0}
    assert table["vqa"]["fusion"]["accuracy"] == pytest.approx(2 / 3)
    assert result["skipped"] == ["fusion_text"]  # fusion.baselines is off
    # the headline DVC reads: a file per model and split, each task's main metric
    headline = json.loads((out / "metrics/finetune/validation.json").read_text())
    assert headline["classification"] == comparison["validation"]["classification"]["finetune"]["macro_f1"]
    assert headline["regression"] == comparison["validation"]["regression"]["finetune"]["pearson"]
    assert json.loads((out / "metrics/fusion/test.json").read_text()) == {"vqa": table["vqa"]["fusion"]["macro_f1"]}
    assert sorted(p.relative_to(out / "metrics").as_posix() for p in (out / "metrics").rglob("*.json")) == [
        f"{m}/{s}.json" for m in ("baseline", "finetune", "fusion") for s in ("test", "validation")]

    report = json.loads((out / "report.json").read_text())
    assert report["tasks"]["classification"]["best"] == "baseline"
    finetune = report["tasks"]["classification"]["models"]["finetune"]
    assert finetune["labels"] == ["sports", "tech", "food"]
    assert finetune["confusion"] == [[1, 0, 1], [0, 1, 1], [0, 0, 2]]
    assert finetune["per_class"]["food"]["precision"] == pytest.approx(0.5)
    md = (out / "comparison.md").read_text()
    assert "## classification (classification, main metric: macro_f1)" in md
    assert "| baseline | validation | 6 | **1.0000** |" in md and "| baseline | test | 6 | **1.0000** |" in md

    confusion = json.loads((out / "plots/confusion/finetune/classification.json").read_text())
    assert len(confusion) == 6 and {"actual": "sports", "predicted": "food"} in confusion
    assert not (out / "plots/confusion/finetune/regression.json").exists()
    by_model = json.loads((out / "plots/by_model/vqa.json").read_text())
    assert by_model == [{"model": "fusion", "metric": "macro_f1", "value": table["vqa"]["fusion"]["macro_f1"]}]
    assert json.loads((out / "plots/loss/finetune_classification.json").read_text()) == [
        {"step": 5, "loss": 1.0}, {"step": 10, "loss": 0.6}, {"step": 15, "loss": 0.4}
    ]
    assert json.loads((out / "plots/eval_loss/finetune_classification.json").read_text()) == [{"step": 15, "eval_loss": 0.5}]

    mlflow.set_tracking_uri(tracking_uri(cfg))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], filter_string="tags.`unitask.stage` = 'evaluate'", output_format="list")
    assert run.data.metrics["test/classification/finetune/macro_f1"] == table["classification"]["finetune"]["macro_f1"]
    assert run.data.metrics["validation/vqa/fusion/accuracy"] == pytest.approx(2 / 3)
    artifacts = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id)}
    assert {"comparison.json", "comparison.md", "report.json", "plots"} <= artifacts
    plots = {a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="plots")}
    assert {"plots/metric_by_model.png", "plots/curves_loss.png", "plots/confusion"} <= plots


def test_a_model_without_predictions_names_the_stage_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _project(tmp_path, ["baseline", "multitask"])
    _write(cfg, "baseline", wrong=0)
    with pytest.raises(DataError, match="no test predictions of model 'multitask'") as error:
        evaluate(cfg)
    assert "run `unitask multitask` first, or drop 'multitask' from evaluate.models" in str(error.value)
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml")]) == 1
    assert "unitask multitask" in capsys.readouterr().err


def test_cli_prints_the_main_metric_of_each_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _project(tmp_path, ["baseline", "fusion"], fusion={"tasks": [], "baselines": False})  # no fusion task: skipped, not missing
    _write(cfg, "baseline", wrong=1)
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("classification\tmacro_f1\tbaseline 0.")
    assert out[1].startswith("regression\tpearson\tbaseline ")
    assert json.loads((tmp_path / "reports/evaluate/report.json").read_text())["skipped"] == ["fusion"]


def test_the_best_model_is_chosen_on_validation_not_test(tmp_path: Path) -> None:
    cfg = _project(tmp_path, ["baseline", "finetune"])
    _write(cfg, "baseline", wrong=0, wrong_on_validation=3)  # best on test, worse on validation
    _write(cfg, "finetune", wrong=2, wrong_on_validation=1)
    result = score(cfg)
    scores = {split: {m: t["classification"][m]["macro_f1"] for m in ("baseline", "finetune")}
              for split, t in (("validation", result["validation"]), ("test", result["table"]))}  # fmt: skip
    assert scores["test"]["baseline"] > scores["test"]["finetune"]
    assert scores["validation"]["finetune"] > scores["validation"]["baseline"]
    entry = result["tasks"]["classification"]
    assert entry["best"] == "finetune" and entry["best_chosen_on"] == "validation"


def test_test_predictions_without_validation_ones_are_refused(tmp_path: Path) -> None:
    cfg = _project(tmp_path, ["baseline"])
    _write(cfg, "baseline", wrong=0)
    (tmp_path / "reports/predictions/baseline/validation/regression.jsonl").unlink()
    with pytest.raises(DataError, match="no validation predictions of model 'baseline' for task 'regression'"):
        evaluate(cfg)


@pytest.mark.parametrize(("models", "message"), [(["baseline", "baseline"], "lists a model twice"), (["Base line"], "must match")])
def test_bad_model_lists_are_refused(tmp_path: Path, models: list[str], message: str) -> None:
    from unitask.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _project(tmp_path, models)
