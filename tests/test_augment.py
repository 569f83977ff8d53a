"""Text augmentation: the operations keep words and tags aligned (and BIO spans whole), are seeded and
pure, and fine-tuning augments training rows only."""

from __future__ import annotations

import json

import random
from pathlib import Path

import pandas as pd
import pytest
from conftest import synthetic_task, text_project

from unitask.augment.frame import EpochAugmented, augment_frame
from unitask.augment.text import OPERATIONS, augment_words, operation, units
from unitask.config import Augment, load_config
from unitask.errors import ConfigError

WORDS = "alice met bob in new york city on monday".split()
TAGS = ["B-per", "O", "B-per", "O", "B-loc", "I-loc", "I-loc", "O", "O"]
ALL = Augment(rows=1.0, deletion=0.3, swap=0.3, insertion=0.3, cutoff=0.3, mask=0.3)


def spans(words: list[str], tags: list[str]) -> set[str]:
    """Entity mentions as 'type:words', read off the BIO tags."""
    found, current = set(), None
    for word, tag in [*zip(words, tags), ("", "O")]:
        if tag.startswith("I-") and current:
            current[1].append(word)
            continue
        if current:
            found.add(f"{current[0]}:{' '.join(current[1])}")
        current = (tag[2:], [word]) if tag.startswith("B-") else None
    return found


@pytest.mark.parametrize("name", OPERATIONS)
def test_operations_keep_tags_aligned_and_spans_whole(name: str) -> None:
    op = operation(name, 0.3, "[MASK]")
    changed = 0
    for seed in range(50):
        words, tags = augment_words(WORDS, TAGS, op, random.Random(seed))
        assert len(words) == len(tags) > 0
        assert all(not t.startswith("I-") or p[2:] == t[2:] for p, t in zip(tags, tags[1:]) if t.startswith("I-"))
        assert tags[0].startswith(("B-", "O"))  # an I- never opens a row
        if name == "mask":
            assert tags == TAGS and all(w in (o, "[MASK]") for w, o in zip(words, WORDS))
        else:  # every entity kept is a whole original mention, with its original tags
            assert spans(words, tags) <= spans(WORDS, TAGS)
            for word, tag in zip(words, tags):
                assert tag == TAGS[WORDS.index(word)]
        changed += (words, tags) != (WORDS, TAGS)
    assert changed >= 40  # at strength 0.3 nearly every draw changes the row


def test_operations_are_seeded_and_pure() -> None:
    words, tags = list(WORDS), list(TAGS)
    for name in OPERATIONS:
        op = operation(name, 0.3, "[MASK]")
        assert augment_words(words, tags, op, random.Random(3)) == augment_words(words, tags, op, random.Random(3))
    assert (words, tags) == (WORDS, TAGS)
    assert units(["a", "b"], ["I-x", "I-x"]) == [(["a", "b"], ["I-x", "I-x"])]  # a stray I- starts a unit
    with pytest.raises(ValueError, match="3 words but 2 tags"):
        units(["a", "b", "c"], ["O", "O"])


def test_cutoff_removes_one_contiguous_span_and_deletion_keeps_a_word() -> None:
    text = [str(i) for i in range(20)]
    words, _ = augment_words(text, None, operation("cutoff", 0.25, None), random.Random(0))
    assert len(words) == 15
    gap = [i for i in range(20) if str(i) not in words]
    assert gap == list(range(gap[0], gap[0] + 5))
    assert len(augment_words(["only"], None, operation("deletion", 0.99, None), random.Random(0))[0]) == 1


@pytest.mark.parametrize("kind", ["classification", "pair_classification", "regression", "token_classification"])
def test_frames_keep_rows_and_labels(kind: str) -> None:
    _, rows = synthetic_task(kind, 60, seed=2)
    frame = pd.DataFrame(rows)
    out = augment_frame(frame, kind, ALL, seed=1, mask="[MASK]")
    assert list(out.index) == list(frame.index) and list(out["id"]) == list(frame["id"])
    label = "tags" if kind == "token_classification" else "label"
    text = "tokens" if kind == "token_classification" else "text"
    if kind != "token_classification":
        assert out[label].tolist() == frame[label].tolist()
    else:
        assert all(len(w) == len(t) for w, t in zip(out["tokens"], out["tags"]))
    assert sum(a != b for a, b in zip(map(list, out[text]), map(list, frame[text]))) > 40
    assert augment_frame(frame, kind, ALL, 1, "[MASK]").equals(out)  # seeded
    assert augment_frame(frame, kind, Augment(), 1, "[MASK]").equals(frame)  # all off: unchanged


def test_refusals() -> None:
    _, rows = synthetic_task("extractive_qa", 5, seed=2)
    with pytest.raises(ConfigError, match="extractive_qa cannot be augmented"):
        augment_frame(pd.DataFrame(rows), "extractive_qa", ALL, 1, "[MASK]")
    _, rows = synthetic_task("classification", 5, seed=2)
    with pytest.raises(ConfigError, match="neither a mask nor an unknown token"):
        augment_frame(pd.DataFrame(rows), "classification", ALL, 1, None)


def test_epoch_augmented_redraws_per_epoch() -> None:
    _, rows = synthetic_task("classification", 40, seed=2)
    frame = pd.DataFrame(rows)
    data = EpochAugmented(frame, lambda f: f["text"].tolist(), "classification", ALL, seed=5, mask="[MASK]")
    first = list(data.features)
    data.set_epoch(1)
    assert len(data) == 40 and list(data.features) != first
    data.set_epoch(0)
    assert list(data.features) == first  # seeded by (seed, epoch): a resumed run sees the same rows


@pytest.mark.usefixtures("single_thread")
def test_finetune_augments_train_rows_only(tmp_path: Path) -> None:
    from unitask.tasks.text import read_split
    from unitask.training.finetune import build_trainer

    augment = {"rows": 1.0, "deletion": 0.2, "swap": 0.2, "mask": 0.2}
    cfg = load_config(text_project(tmp_path, "token_classification"), [f"tasks.toy.finetune={json.dumps({'augment': augment})}"])
    fit = build_trainer(cfg, "toy", tmp_path / "ckpt", [])
    train, tokenizer = fit.trainer.train_dataset, fit.tokenizer
    assert isinstance(train, EpochAugmented)
    for split in ("validation", "test"):  # evaluated on the prepared rows as they are
        assert fit.frames[split].equals(read_split(cfg, "toy", split))
        plain = fit.task.encode(read_split(cfg, "toy", split), tokenizer, cfg.model.max_length)
        assert fit.features[split]["input_ids"] == plain["input_ids"]
    assert fit.trainer.eval_dataset is fit.features["validation"]
    plain_train = fit.task.encode(fit.frames["train"], tokenizer, cfg.model.max_length)
    assert train.features["input_ids"] != plain_train["input_ids"]
    assert fit.trainer._get_train_sampler().on_epoch == train.set_epoch  # reaches it under DDP too
    fit.trainer.train()  # trains end to end on the re-drawn rows
    assert fit.trainer.state.epoch == cfg.finetune.epochs and train.epoch == cfg.finetune.epochs - 1
