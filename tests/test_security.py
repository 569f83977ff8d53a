"""Security guarantees: weights only as safetensors (and `torch.load` only with weights_only=True),
pickle payloads planted in checkpoints and weights folders refused unrun, no remote code unless the
config asks, and no secret from the environment in logs, MLflow or outputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, text_project

from unitask.cli import main
from unitask.config import load_config

SECRET = "unitask-planted-secret-6f1d2c"
UNSAFE = {
    r"torch\.load\((?![^)]*weights_only=True)": "torch.load without weights_only=True",
    r"\bpickle\.loads?\(": "pickle.load",
    r"trust_remote_code=True": "trust_remote_code hard-coded on",
    r"safe_serialization=False": "weights saved as pickle",
}
PICKLED = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def test_source_loads_no_pickles_and_no_remote_code() -> None:
    found = []
    for path in sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "components").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for pattern, what in UNSAFE.items():
            found += [f"{path.relative_to(REPO)}: {what}" for _ in re.finditer(pattern, text)]
    assert found == []


def test_remote_code_is_off_by_default() -> None:
    assert load_config(REPO / "params.yaml").model.trust_remote_code is False


@pytest.mark.usefixtures("single_thread")
def test_planted_secret_reaches_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A fine-tune run with credentials in its environment: they appear in no log line, MLflow
    param, tag or artifact, metrics file or model folder; and the model folder holds safetensors only."""
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "HF_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    params = text_project(tmp_path, "classification", finetune={"epochs": 1})
    assert main(["finetune", "--task", "toy", "--params", str(params)]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    leaked = [str(p.relative_to(tmp_path)) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []  # covers mlflow/mlflow.db (params, tags) and mlflow/artifacts
    model_files = [p for p in (tmp_path / "models").rglob("*") if p.is_file()]
    assert [p.name for p in model_files if p.suffix in PICKLED] == []


# ---- untrusted files stay inert: a planted pickle payload is refused, never run ------------------


class Payload:
    """Unpickled, this object would call `open(marker, "w")`: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def plant_payload(path: Path, marker: Path) -> None:
    """Replace `path` with a torch file holding the payload, and check that an unsafe load runs it."""
    import torch

    torch.save({"state": Payload(marker)}, path)
    probe = marker.with_name(marker.name + ".probe")
    torch.save({"state": Payload(probe)}, path.with_name(path.name + ".probe"))
    torch.load(path.with_name(path.name + ".probe"), weights_only=False)  # what the payload does if run
    assert probe.exists()
    probe.unlink()
    path.with_name(path.name + ".probe").unlink()


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tune project whose checkpoint folder holds a real Trainer checkpoint (checkpoint-5)."""
    import torch

    from unitask.training.finetune import build_trainer

    root = tmp_path_factory.mktemp("checkpointed")
    params = text_project(root, "classification", finetune={"max_steps": 5, "eval_strategy": "steps", "eval_steps": 5})
    cfg = load_config(params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    build_trainer(cfg, "toy", root / "models" / "checkpoints" / "finetune" / "toy", [], quiet=True).trainer.train()
    torch.set_num_threads(threads)
    return root


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("planted", ["optimizer.pt", "rng_state.pth"])  # read first and last on resume
def test_pickle_payload_in_a_checkpoint_is_refused_unrun(
    checkpointed: Path, tmp_path: Path, planted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trainer loads checkpoint files with torch.load(weights_only=True): --resume refuses the payload
    before building it, names the file, and the marker file it would create never appears."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(checkpointed, root)
    checkpoint = root / "models" / "checkpoints" / "finetune" / "toy" / "checkpoint-5"
    marker = tmp_path / "payload-ran"
    plant_payload(checkpoint / planted, marker)
    assert main(["finetune", "--task", "toy", "--params", str(root / "params.yaml"), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"{checkpoint}: {planted} holds pickled objects other than tensors" in err and "fix: delete" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (root / "reports" / "finetune").exists()


def _tiny_weights(folder: Path) -> None:
    from transformers import AutoConfig, AutoModel

    from conftest import TINY_BERT

    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT, vocab_size=100)).save_pretrained(folder)


def test_pickled_weights_are_refused_with_a_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A weights folder with only pytorch_model.bin: refused, naming the file; the payload never runs."""
    folder = tmp_path / "encoder"
    _tiny_weights(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    plant_payload(folder / "pytorch_model.bin", marker)
    params = text_project(tmp_path, "classification", model={"backbone": "encoder", "max_length": 64})
    assert main(["finetune", "--task", "toy", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'pytorch_model.bin'}: weights stored as a pickle" in err and "fix: get the model's model.safetensors" in err
    assert not marker.exists()


def test_pickled_weights_beside_safetensors_are_never_read(tmp_path: Path) -> None:
    """With model.safetensors present the model loads from it; a pytorch_model.bin beside it stays unread."""
    from unitask.tasks.text import text_task
    from unitask.training.model import build_model

    folder = tmp_path / "encoder"
    _tiny_weights(folder)
    marker = tmp_path / "payload-ran"
    plant_payload(folder / "pytorch_model.bin", marker)
    cfg = load_config(text_project(tmp_path, "classification", model={"backbone": "encoder", "max_length": 64}))
    model = build_model(cfg, text_task(cfg, "toy"))
    assert model.config.hidden_size == 32
    assert not marker.exists()
