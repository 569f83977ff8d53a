"""Fusion training: each fusion method learns a tiny synthetic VQA task that needs both modalities,
the unimodal baselines cannot, and the saved model answers `predict` rows identically."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_BERT, write_project

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
TINY_VIT = {"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 32}  # fmt: skip
SIZES = {"train": 256, "validation": 48, "test": 64}


def vqa_project(root: Path, model: dict[str, Any] | None = None, **fusion: Any) -> Path:
    """A prepared task `vqa`: "what color is the shape?" (red/blue) or "where is the shape?" (left/right)
    over a coloured square on noise. Text alone tells which of two answers is asked (at best 0.5), the
    image alone both answers but not which is asked (at best 0.5); together they answer it. Image sizes
    and question lengths vary."""
    rng = np.random.default_rng(0)
    folder = root / "data/raw/vqa"
    folder.mkdir(parents=True)
    facts = []
    for i in range(40):
        color, side = list(COLORS)[i % 2], ["left", "right"][(i // 2) % 2]
        height = int(rng.integers(14, 40))
        width = height + i % 5
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        left = width // 10 if side == "left" else width // 2 + width // 10
        pixels[height // 4 : 3 * height // 4, left : left + width * 3 // 10] = COLORS[color]
        Image.fromarray(pixels).save(folder / f"{i}.png")
        facts.append({"color": color, "where": side})
    rows = []
    for i in range(sum(SIZES.values())):
        image, asked = int(rng.integers(0, 40)), ["color", "where"][int(rng.integers(0, 2))]
        question = "what color is the shape" if asked == "color" else "where is the shape"
        text = question + " please" * int(rng.integers(0, 4)) + "?"  # varying lengths
        rows.append({"id": i, "text": text, "image": f"data/raw/vqa/{image}.png", "label": facts[image][asked], "group": asked})
    start = 0
    for split, size in SIZES.items():
        (root / "data/prepared/vqa").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows[start : start + size]).to_parquet(root / f"data/prepared/vqa/{split}.parquet")
        start += size
    task = {
        "type": "multimodal_classification",
        "source": {"kind": "local", "path": "data/raw/vqa"},
        "read": {"format": "parquet"},
        "columns": {"text": "text", "image": "image", "label": "label"},
        "labels": ["blue", "left", "red", "right"],
        "group": {"labels": {"color": ["blue", "red"], "where": ["left", "right"]}},  # the column prepare would write
    }
    # a ViT from scratch on tiny images, the whole model trained, epochs (not the offline default's steps)
    settings = {"tasks": ["vqa"], "image_weights": None, "image_config": TINY_VIT, "freeze_text_encoder": False,
                "freeze_image_encoder": False, "max_steps": None, "max_eval_rows": None, "save_steps": 200, "fusion_dim": 32, "attention_heads": 2, "dropout": 0.0,
                "epochs": 12, "batch_size": 16, "eval_batch_size": 64, "learning_rate": 3e-3, "warmup_ratio": 0.05,
                "bf16": False, "logging_steps": 10, "baselines": False, **fusion}  # fmt: skip
    return write_project(
        root, {"vqa": task}, model=model or {"backbone_config": TINY_BERT, "max_length": 32},
        tracking={"uri": "sqlite:///mlflow/mlflow.db"}, fusion=settings,
    )  # fmt: skip


def load(params: Path, *overrides: str) -> Any:
    from unitask.config import load_config

    return load_config(str(params), list(overrides))


@pytest.mark.parametrize("method", ["concat", "gated", "weighted", "cross_attention"])
def test_each_fusion_method_learns_what_needs_both_modalities(tmp_path, single_thread, method):
    from unitask.training.fusion import fusion

    cfg = load(vqa_project(tmp_path, method=method))
    summary = fusion(cfg, "vqa")
    test = summary["models"]["fusion"]["test"]
    assert test["accuracy"] > 0.7, summary  # chance is 0.25, one modality at best 0.5
    assert set(summary["models"]) == {"fusion"}
    if method == "weighted":
        weights = summary["models"]["fusion"]["modality_weights"]
        assert set(weights) == {"text", "image"} and abs(sum(weights.values()) - 1) < 1e-6


def test_fused_beats_both_baselines_and_saved_model_predicts_identically(tmp_path, single_thread):
    import mlflow

    from unitask.cli import main
    from unitask.config import load_config
    from unitask.evaluation.metrics import task_metrics
    from unitask.evaluation.predictions import read_predictions
    from unitask.inference import load_predictor

    params = vqa_project(tmp_path, method="concat", baselines=True)
    assert main(["fusion", "--params", str(params)]) == 0
    summary = json.loads((tmp_path / "reports/fusion/vqa.json").read_text())
    acc = {name: model["test"]["accuracy"] for name, model in summary["models"].items()}
    assert acc["fusion"] > 0.8 and acc["fusion_text"] < 0.65 and acc["fusion_image"] < 0.65, acc

    # accuracy per group (tasks.vqa.group) in the report, in every prediction row and in evaluate's comparison
    from unitask.evaluation.compare import markdown, score

    test = pd.read_parquet(tmp_path / "data/prepared/vqa/test.parquet")
    cfg = load(params, "evaluate.models=[fusion,fusion_text,fusion_image]")
    compared = score(cfg)["tasks"]["vqa"]["models"]
    for name, model in summary["models"].items():
        rows = [json.loads(line) for line in (tmp_path / f"reports/predictions/{name}/vqa.jsonl").read_text().splitlines()]
        assert [r["group"] for r in rows] == test["group"].tolist()
        for group in ("color", "where"):
            mine = [r["gold"] == r["label"] for r in rows if r["group"] == group]
            assert model["test"]["by_group"][group] == {"accuracy": pytest.approx(sum(mine) / len(mine)), "rows": len(mine)}
        assert compared[name]["per_group"] == model["test"]["by_group"]
        assert set(model["validation"]["by_group"]) == {"color", "where"}
    assert "Accuracy per group:" in markdown(score(cfg)) and "| model | color | where |" in markdown(score(cfg))

    # one MLflow run per model, side by side, tagged as the fusion stage
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["unitask"], filter_string="tags.`unitask.stage` = 'fusion'")
    assert sorted(runs["tags.unitask.model"]) == ["fusion", "fusion_image", "fusion_text"]
    assert set(runs["tags.mlflow.runName"]) == {"fusion:vqa:fusion", "fusion:vqa:fusion_text", "fusion:vqa:fusion_image"}

    # safetensors only, with tokenizer, image processor and manifest; loads from the task folder or fusion.output
    folder = tmp_path / "models/fusion/vqa"
    assert (folder / "model.safetensors").is_file() and (folder / "preprocessor_config.json").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")) and not list(folder.rglob("*.pkl"))
    assert json.loads((folder / "unitask-model.json").read_text())["kind"] == "fusion"
    test = pd.read_parquet(tmp_path / "data/prepared/vqa/test.parquet")
    saved = [json.loads(line) for line in (tmp_path / "reports/predictions/fusion/vqa.jsonl").read_text().splitlines()]
    assert len(saved) == len(test) and all(s["gold"] == g for s, g in zip(saved, test["label"]))
    for model, report in summary["models"].items():  # validation predictions of every model score what it reports
        gold, outputs = read_predictions(load_config(params), model, "vqa", "validation")
        scores = {k: v for k, v in report["validation"].items() if k != "by_group"}  # by_group: checked above
        assert task_metrics("multimodal_classification", gold, outputs) == pytest.approx(scores), model
    for where in (folder, tmp_path / "models/fusion"):
        predictor = load_predictor(where)
        assert predictor.tasks == {"vqa": "multimodal_classification"}
        rows = [{"task": "vqa", "text": t, "image": str(tmp_path / p)} for t, p in zip(test["text"], test["image"])]
        outputs = predictor.predict(rows)
        for out, expected in zip(outputs, saved):
            assert out["label"] == expected["label"]
            assert out["scores"] == pytest.approx(expected["scores"], abs=1e-5)

    # an image as raw bytes or base64 gives the same answer as its path
    path = tmp_path / test["image"][0]
    as_bytes, as_b64 = path.read_bytes(), base64.b64encode(path.read_bytes()).decode()
    by_path, by_bytes, by_b64 = predictor.predict([{"task": "vqa", "text": test["text"][0], "image": x} for x in (str(path), as_bytes, as_b64)])
    assert by_path == by_bytes == by_b64


def test_predict_reports_a_wrong_path_or_unreadable_image_in_that_row(tmp_path, single_thread):
    from unitask.inference.fusion import FusionPredictor
    from unitask.training.fusion import fusion

    cfg = load(vqa_project(tmp_path, epochs=1))
    fusion(cfg, "vqa")
    predictor = FusionPredictor.load(tmp_path / "models/fusion/vqa")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    good = str(tmp_path / "data/raw/vqa/0.png")
    out = predictor.predict([
        {"task": "vqa", "text": "what color is the shape?", "image": str(tmp_path / "nope.png")},
        {"task": "vqa", "text": "what color is the shape?", "image": str(broken)},
        {"task": "vqa", "text": "what color is the shape?", "image": good},
        {"task": "vqa", "text": "what color is the shape?", "image": b"garbage"},
        {"task": "vqa", "text": "what color is the shape?"},
        {"task": "other", "text": "x", "image": good},
    ])  # fmt: skip
    assert out[0]["error"].startswith("image: no such file") and "nope.png" in out[0]["error"]
    assert out[1]["error"].startswith(f"image: cannot decode {broken}")
    assert out[2]["label"] in ("blue", "left", "red", "right") and "error" not in out[2]
    assert out[3]["error"].startswith("image: cannot decode image bytes")
    assert out[4]["error"] == "row for task 'vqa' lacks image"
    assert "does not answer task 'other'" in out[5]["error"]


def test_fusion_refuses_a_text_task_and_an_empty_task_list(tmp_path, capsys):
    from unitask.cli import main

    params = vqa_project(tmp_path)
    assert main(["fusion", "--params", str(params), "--set", "fusion.tasks=[]"]) == 0  # an empty list: none, as in DVC and Kubeflow
    assert "no text+image task to train" in capsys.readouterr().out
    assert main(["fusion", "--params", str(params), "--set", "fusion.tasks=[nope]"]) == 2
    assert "fusion.tasks: ['nope'] are not declared under tasks" in capsys.readouterr().err
    assert main(["fusion", "--params", str(params), "--set", "fusion.method=cross_attention", "--set", "fusion.attention_heads=3"]) == 2
    assert "attention_heads (3) must divide fusion_dim (32)" in capsys.readouterr().err
