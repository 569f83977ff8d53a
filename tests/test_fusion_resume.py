"""`unitask fusion` killed (SIGKILL) in the middle of a model's training, after a checkpoint, and
rerun with --resume: the finished model is not trained again, the interrupted one continues from its
checkpoint, and every model ends with the metrics of an uninterrupted run; the killed MLflow run ends
KILLED on the next run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import single_thread_env

from test_fusion import load, vqa_project
from unitask.tracking import tracking_uri
from unitask.training.fusion import fusion

# 256 train rows / batch 16 = 16 steps per epoch, 4 epochs: 64 steps per model, a checkpoint every 10
SETTINGS = {"epochs": 4, "save_steps": 10, "baselines": True}


def checkpoint_steps(folder: Path) -> list[int]:
    return [int(p.name.rpartition("-")[2]) for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]


@pytest.mark.usefixtures("single_thread")
def test_killed_fusion_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    straight = fusion(load(vqa_project(tmp_path / "straight", **SETTINGS)), "vqa")

    params = vqa_project(tmp_path / "killed", **SETTINGS)
    text_checkpoints = tmp_path / "killed/models/checkpoints/fusion/vqa/fusion_text"
    command = [sys.executable, "-m", "unitask.cli", "fusion", "--params", str(params)]
    proc = subprocess.Popen(command, env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not any(20 <= step < 64 for step in checkpoint_steps(text_checkpoints)):  # mid-training, model 2 of 3
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed/reports/fusion/vqa.json").exists()
    assert (tmp_path / "killed/models/checkpoints/fusion/vqa/fusion/done.json").is_file()  # model 1 had finished
    cfg = load(params)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    before = {r.data.tags["unitask.model"]: r for r in mlflow.search_runs(experiment_names=["unitask"], output_format="list")}
    assert before["fusion"].info.status == "FINISHED" and before["fusion_text"].info.status == "RUNNING"

    resumed = fusion(cfg, "vqa", resume=True)
    runs = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    status = {r.info.run_id: r.info.status for r in runs}
    assert status.pop(before["fusion_text"].info.run_id) == "KILLED"  # ended by the next run of the stage and task
    assert sorted(r.data.tags["unitask.model"] for r in runs if r.info.run_id in status) == ["fusion", "fusion_image", "fusion_text"]
    assert set(status.values()) == {"FINISHED"}  # the fused model was not trained again: one run each
    (text_run,) = [r for r in runs if r.info.run_id in status and r.data.tags["unitask.model"] == "fusion_text"]
    assert text_run.data.params["resumed_from"].rpartition("checkpoint-")[2].isdigit()
    saved = json.loads((tmp_path / "killed/reports/fusion/vqa.json").read_text())
    assert saved == json.loads(json.dumps(resumed))
    assert not (tmp_path / "killed/models/checkpoints/fusion/vqa").exists()  # cleared once the stage is done
    for model, expected in straight["models"].items():
        got = resumed["models"][model]
        assert got["train"]["steps"] == expected["train"]["steps"] == 64
        for split in ("validation", "test"):
            by_group, expected_by_group = got[split].pop("by_group"), expected[split].pop("by_group")
            assert got[split] == pytest.approx(expected[split], rel=1e-5, abs=1e-6), (model, split)
            assert by_group == expected_by_group, (model, split)
    assert straight["models"]["fusion"]["test"]["accuracy"] > 0.6  # chance 0.25, one modality at most 0.5


def test_a_checkpoint_killed_while_its_state_was_written_is_skipped(tmp_path: Path) -> None:
    from unitask.training.trainer import resume_point

    for step, state in ((10, '{"global_step": 10}'), (20, ""), (30, '{"global_st')):  # 20, 30: cut off by a kill
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-40").mkdir()  # killed before its state was written
    assert resume_point(tmp_path, resume=True) == str(tmp_path / "checkpoint-10")
