"""`unitask fusion` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU) matches one process with
the same global batch, and only rank 0 writes the report, the predictions and the MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BERT, single_thread_env

from test_fusion import load, vqa_project
from unitask.tracking import tracking_uri

GLOBAL_BATCH = 16
# no dropout anywhere and LayerNorm only (the tiny ViT): with the same examples per step (the
# epoch-seeded sampler) the two runs differ only by the order of float sums
MODEL = {"backbone_config": {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}, "max_length": 32}
SETTINGS = {"epochs": 4, "method": "gated"}


@pytest.mark.usefixtures("single_thread")
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    import mlflow

    from unitask.training.fusion import fusion

    one = fusion(load(vqa_project(tmp_path / "one", model=MODEL, batch_size=GLOBAL_BATCH, **SETTINGS)), "vqa")

    params = vqa_project(tmp_path / "ddp", model=MODEL, batch_size=GLOBAL_BATCH // 2, **SETTINGS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "unitask.cli", "fusion", "--params", str(params)]  # fmt: skip
    done = subprocess.run(command, env=single_thread_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("vqa\ttest macro_f1") == 1  # only rank 0 reports
    two = json.loads((tmp_path / "ddp/reports/fusion/vqa.json").read_text())
    mlflow.set_tracking_uri(tracking_uri(load(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")  # rank 0's only
    assert run.data.params["world_size"] == "2"

    fused, single = two["models"]["fusion"], one["models"]["fusion"]
    assert fused["train"]["world_size"] == 2 and fused["train"]["steps"] == single["train"]["steps"] == 64
    assert fused["train"]["loss"] == pytest.approx(single["train"]["loss"], rel=1e-2)
    for split in ("validation", "test"):
        assert fused[split]["accuracy"] == pytest.approx(single[split]["accuracy"], abs=0.02), split
        assert fused[split]["macro_f1"] == pytest.approx(single[split]["macro_f1"], abs=0.02), split
    assert single["test"]["accuracy"] > 0.6
    rows = (tmp_path / "ddp/reports/predictions/fusion/vqa.jsonl").read_text().splitlines()
    assert len(rows) == 64  # every test row once, though each rank scored half
