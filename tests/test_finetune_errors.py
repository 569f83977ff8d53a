"""Bad input to `unitask finetune` gets one clear message (what, where, how to fix), no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_BERT, text_project

from unitask.cli import main


def run(params: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["finetune", "--params", str(params), *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def saved_model(folder: Path, num_labels: int | None, weights: bool = True) -> Path:
    """A tiny BERT saved like a checkpoint: with a classification head of `num_labels`, or bare."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.for_model(**TINY_BERT, **({"num_labels": num_labels} if num_labels else {}))
    model = AutoModelForSequenceClassification.from_config(config) if num_labels else AutoModel.from_config(config)
    if weights:
        model.save_pretrained(folder)
    else:
        config.save_pretrained(folder)
    return folder


def test_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(text_project(tmp_path, "classification"), capsys, "--task", "nope")
    assert code == 2 and "tasks.nope: no such task" in err and "toy" in err


def test_model_folder_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved_model(tmp_path / "empty_model", None, weights=False)
    params = text_project(tmp_path, "classification", model={"backbone": "empty_model"})
    code, err = run(params, capsys, "--task", "toy")
    assert code == 2 and "without weights" in err and "empty_model" in err and "fix:" in err


def test_head_label_count_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved_model(tmp_path / "two_label_model", 2)
    params = text_project(tmp_path, "classification", model={"backbone": "two_label_model"})
    code, err = run(params, capsys, "--task", "toy")
    assert code == 2 and "has 2 labels" in err and "the task has 3" in err and "fix:" in err


def test_max_length_beyond_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = text_project(tmp_path, "classification", model={"backbone_config": TINY_BERT, "max_length": 512})
    code, err = run(params, capsys, "--task", "toy")
    limit = TINY_BERT["max_position_embeddings"]
    assert code == 2 and f"model.max_length: 512 is beyond the {limit} positions" in err
    assert f"at most {limit}" in err


def test_non_text_task_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = text_project(tmp_path, "classification")
    code, err = run(params, capsys, "--task", "toy", "--set", "tasks.toy.type=multimodal_classification",
                    "--set", "tasks.toy.columns={text: text, image: image, label: label}")
    assert code == 2 and "not a text task" in err


def test_per_task_settings(tmp_path: Path) -> None:
    from unitask.config import load_config
    from unitask.errors import ConfigError

    params = text_project(tmp_path, "classification")
    cfg = load_config(params, ["tasks.toy.finetune={epochs: 3, learning_rate: 0.01}"])
    assert cfg.finetune_for("toy").epochs == 3 and cfg.finetune_for("toy").learning_rate == 0.01
    assert cfg.finetune.epochs != 3  # the section itself is unchanged
    with pytest.raises(ConfigError, match=r"tasks.toy.finetune: \['epochz'\] cannot be set per task"):
        load_config(params, ["tasks.toy.finetune={epochz: 3}"])
    with pytest.raises(ConfigError, match=r"tasks.toy.finetune: epochs: Input should be greater than 0"):
        load_config(params, ["tasks.toy.finetune={epochs: -1}"])
    with pytest.raises(ConfigError, match=r"finetune.tasks: \['nope'\] are not declared under tasks"):
        load_config(params, ["finetune.tasks=[nope]"])
