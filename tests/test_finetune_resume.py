"""A fine-tune killed mid-epoch (SIGKILL, after a checkpoint) and resumed with --resume ends with the
same metrics as an uninterrupted run with the same seed, and its MLflow run ends KILLED, not RUNNING."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import single_thread_env, text_project
from killing import kill_and_resume

from unitask.config import load_config
from unitask.tracking import tracking_uri
from unitask.training.finetune import finetune

# 160 train rows / batch 16 = 10 steps per epoch; a checkpoint every 5 steps, i.e. mid-epoch too
SETTINGS = {"epochs": 6, "eval_strategy": "steps", "eval_steps": 5}
KILL_AFTER = "checkpoint-25"  # mid-epoch 3


@pytest.mark.usefixtures("single_thread")
def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    """Tolerance: validation and test metrics equal to rel 1e-5 (float32 on CPU, same batches and RNG)."""
    straight = finetune(load_config(text_project(tmp_path / "straight", "classification", finetune=SETTINGS)), "toy")

    params = text_project(tmp_path / "killed", "classification", finetune=SETTINGS)
    report = tmp_path / "killed" / "reports" / "finetune" / "toy.json"
    killed = kill_and_resume(
        ["finetune", "--task", "toy", "--params", str(params)],
        checkpoints=tmp_path / "killed" / "models" / "checkpoints" / "finetune" / "toy",
        kill_after=KILL_AFTER,
        tracking_uri=tracking_uri(load_config(params)),
        before_resume=lambda _: assert_absent(report),
    )
    assert int(killed.resumed_from.rpartition("-")[2]) >= 25
    resumed = json.loads(report.read_text())
    assert resumed["train"]["steps"] == straight["train"]["steps"] == 60
    for split in ("validation", "test"):
        assert resumed[split] == pytest.approx(straight[split], rel=1e-5, abs=1e-6), split
    assert straight["validation"]["macro_f1"] > 0.9


def assert_absent(path: Path) -> None:
    assert not path.exists(), f"the killed run wrote {path}"


@pytest.mark.usefixtures("single_thread")
def test_terminated_run_ends_killed_and_writes_nothing(tmp_path: Path) -> None:
    """SIGTERM (Kubernetes preemption, `kill`) unwinds the stage: exit 143, the MLflow run ends
    KILLED, and no stage output (or temporary folder) is left behind."""
    params = text_project(tmp_path, "classification", finetune=SETTINGS)
    checkpoints = tmp_path / "models" / "checkpoints" / "finetune" / "toy"
    command = [sys.executable, "-m", "unitask.cli", "finetune", "--task", "toy", "--params", str(params)]
    proc = subprocess.Popen(command, env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "checkpoint-5" / "trainer_state.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    assert run.info.status == "KILLED"
    assert not (tmp_path / "reports" / "finetune").exists()
    assert not (tmp_path / "models" / "finetune").exists() or not any((tmp_path / "models" / "finetune").iterdir())
