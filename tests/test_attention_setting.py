"""`model.attn_implementation` reaches every encoder a training stage builds (fine-tune, multi-task and
fusion encoders, the pretraining LM), from a config and from saved weights, and runs that attention;
an unknown name is refused when the config loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_BERT, text_project

from unitask.config import load_config
from unitask.errors import ConfigError
from unitask.models.backbone import load_tokenizer
from unitask.tasks.text import text_task
from unitask.training.model import build_encoder, build_model
from unitask.training.pretrain import load_lm

pytestmark = pytest.mark.usefixtures("single_thread")


def _builds(cfg) -> dict[str, torch.nn.Module]:
    return {
        "finetune": build_model(cfg, text_task(cfg, "toy")),
        "encoder": build_encoder(cfg),
        "pretrain": load_lm(cfg, load_tokenizer(cfg)),
    }


def _sdpa_calls(model: torch.nn.Module) -> int:
    """How often one forward pass calls torch's fused `scaled_dot_product_attention` (eager never does)."""
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        model.eval()
        with torch.no_grad():
            model(input_ids=torch.tensor([[2, 5, 7, 3]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    return len(calls)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_every_training_encoder_gets_the_configured_attention(tmp_path: Path, implementation: str) -> None:
    model = {"backbone_config": TINY_BERT, "max_length": 64, "attn_implementation": implementation}
    from_config = load_config(text_project(tmp_path / "config", "classification", model=model, pretrain={"enabled": False}))
    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model(**TINY_BERT)).save_pretrained(tmp_path / "saved")  # saved with sdpa
    saved = {"backbone": str(tmp_path / "saved"), "max_length": 64, "attn_implementation": implementation}
    from_saved = load_config(text_project(tmp_path / "saved-project", "classification", model=saved, pretrain={"enabled": False}))
    for cfg in (from_config, from_saved):
        for stage, built in _builds(cfg).items():
            assert built.config._attn_implementation == implementation, (stage, cfg.model)
            layers = TINY_BERT["num_hidden_layers"] if implementation == "sdpa" else 0
            assert _sdpa_calls(built) == layers, stage


def test_an_unknown_attention_is_refused(tmp_path: Path) -> None:
    model = {"backbone_config": TINY_BERT, "max_length": 64, "attn_implementation": "fast"}
    with pytest.raises(ConfigError, match="attn_implementation"):
        load_config(text_project(tmp_path, "classification", model=model))
