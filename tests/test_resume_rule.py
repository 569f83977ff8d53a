"""The one resume rule (`unitask.training.trainer.resume_point`): the newest completely saved
checkpoint; a half-written one (killed while saving, or cut short) is skipped and removed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerState

from unitask.training.trainer import is_complete_checkpoint, resume_point


def save_checkpoint(folder: Path, step: int) -> Path:
    """The files Trainer writes in a checkpoint, in Trainer's order (trainer_state.json last)."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    model = torch.nn.Linear(4, 2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    torch.save(torch.optim.AdamW(model.parameters()).state_dict(), path / "optimizer.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, path / "rng_state.pth")
    TrainerState(global_step=step, epoch=step / 10).save_to_json(str(path / "trainer_state.json"))
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGE = {
    "no trainer_state.json (killed while saving)": lambda p: (p / "trainer_state.json").unlink(),
    "trainer_state.json cut short": lambda p: truncate(p / "trainer_state.json"),
    "trainer_state.json of another step": lambda p: TrainerState(global_step=3).save_to_json(str(p / "trainer_state.json")),
    "model.safetensors cut short": lambda p: truncate(p / "model.safetensors"),
    "optimizer.pt cut short": lambda p: truncate(p / "optimizer.pt"),
    "rng_state.pth empty": lambda p: (p / "rng_state.pth").write_bytes(b""),
}


def test_the_newest_complete_checkpoint_is_chosen(tmp_path: Path) -> None:
    for step in (5, 10):
        save_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-x").mkdir()  # not Trainer's: ignored
    assert resume_point(tmp_path, resume=True) == str(tmp_path / "checkpoint-10")


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_half_written_checkpoint_is_skipped_and_removed(tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]) -> None:
    save_checkpoint(tmp_path, 5)
    newest = save_checkpoint(tmp_path, 10)
    assert is_complete_checkpoint(newest)
    DAMAGE[damage](newest)
    assert not is_complete_checkpoint(newest)
    assert resume_point(tmp_path, resume=True) == str(tmp_path / "checkpoint-5")
    assert not newest.exists()
    assert "checkpoint-10 was not completely saved; skipping it" in capsys.readouterr().err


def test_no_complete_checkpoint_means_training_from_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    DAMAGE["no trainer_state.json (killed while saving)"](save_checkpoint(tmp_path, 5))
    assert resume_point(tmp_path, resume=True) is None
    assert resume_point(tmp_path / "missing", resume=True) is None
    assert "no complete checkpoint in" in capsys.readouterr().err


def test_a_fresh_run_clears_old_checkpoints(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints", 5)
    assert resume_point(tmp_path / "checkpoints", resume=False) is None
    assert not (tmp_path / "checkpoints").exists()
