"""Kill a stage with SIGKILL mid-run and resume it: the one harness every training stage's test uses.

    from killing import kill_and_resume

    def test_my_stage_survives_sigkill(tmp_path):
        straight = ...                      # an uninterrupted run of the same config, for the metrics
        params = ...                        # a fresh project for the killed run
        killed = kill_and_resume(
            ["finetune", "--task", "toy", "--params", str(params)],   # `unitask` argv, without --resume
            checkpoints=tmp_path / "killed/models/checkpoints/finetune/toy",
            kill_after="checkpoint-25",     # a checkpoint in the middle of an epoch
            tracking_uri=tracking_uri(load_config(params)),
        )
        assert killed.resumed_from == "checkpoint-25"   # or a later complete one
        # then compare the stage's report with `straight` (each test states its tolerance)

What it does and checks, in order:
1. starts `python -m unitask.cli <argv>` as a subprocess (one torch thread), polls `checkpoints` until
   `kill_after` is complete (`is_complete_checkpoint`: Trainer has finished saving it), and SIGKILLs
   the process while it is still training (it fails if the run ends first);
2. checks that the process died of the signal and that its MLflow run is left RUNNING (no handler ran);
3. calls `before_resume(checkpoints)` if given, e.g. to plant a half-written checkpoint;
4. runs `unitask <argv> --resume` through the CLI's `main` (in this process, for speed) and checks
   that it exits 0, that the killed run now ends KILLED and that every other run of the stage FINISHED.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import single_thread_env

from unitask.training.trainer import is_complete_checkpoint


@dataclass
class Killed:
    """What `kill_and_resume` saw: the killed MLflow run, and the checkpoint the resumed run started from."""

    run_id: str
    resumed_from: str


def kill_mid_run(argv: list[str], checkpoints: Path, kill_after: str, timeout: float = 300) -> None:
    """Start `unitask <argv>` and SIGKILL it once `checkpoints/kill_after` is completely saved."""
    command = [sys.executable, "-m", "unitask.cli", *argv]
    proc = subprocess.Popen(command, env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not is_complete_checkpoint(checkpoints / kill_after):
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before {kill_after}:\n{proc.stderr.read().decode()[-3000:]}")
            assert time.monotonic() < deadline, f"no {kill_after} within {timeout} s"
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def kill_and_resume(
    argv: list[str],
    checkpoints: Path,
    kill_after: str,
    tracking_uri: str,
    experiment: str = "unitask",
    before_resume: Callable[[Path], None] | None = None,
) -> Killed:
    """SIGKILL `unitask <argv>` after checkpoint `kill_after`, then resume it with --resume (see the module doc)."""
    import mlflow
    from transformers import Trainer

    from unitask.cli import main

    kill_mid_run(argv, checkpoints, kill_after)
    mlflow.set_tracking_uri(tracking_uri)
    (killed,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert killed.info.status == "RUNNING"  # SIGKILL left no chance to end it
    if before_resume is not None:
        before_resume(checkpoints)

    resumed_from: list[str | None] = []
    train = Trainer.train

    def spy(self: Trainer, *args: object, resume_from_checkpoint: str | None = None, **kwargs: object) -> object:
        resumed_from.append(resume_from_checkpoint)
        return train(self, *args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    Trainer.train = spy  # type: ignore[method-assign]
    try:
        assert main([*argv, "--resume"]) == 0
    finally:
        Trainer.train = train  # type: ignore[method-assign]
    runs = {r.info.run_id: r.info.status for r in mlflow.search_runs(experiment_names=[experiment], output_format="list")}
    assert runs.pop(killed.info.run_id) == "KILLED"  # ended by the next run of the same stage
    assert list(runs.values()) == ["FINISHED"]
    assert len(resumed_from) == 1 and resumed_from[0] is not None, f"the resumed run trained from {resumed_from}"
    return Killed(killed.info.run_id, Path(resumed_from[0]).name)
