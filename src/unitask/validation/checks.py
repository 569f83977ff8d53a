"""The checks of a task, derived from its type's roles and its declaration (labels, label_range).

Every check is a great-expectations expectation, so every check shows in the suite and Data Docs.
Where GX has an expectation for the question it is used on the role column directly (not null, in
set, between, unique). Where it has none (tags against tokens, BIO order, answer spans, images,
leakage, class balance, truncation) pandas/PIL compute a derived column `_<name>` first and a plain
GX expectation asserts it: an empty error string per row (`_bio_error` in {''}), a boolean
(`_image_exists` in {True}), or a split-level statistic (min of `_class_ratio`, mean of `_truncated`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from PIL import Image

from unitask.config import CheckName, Config, Severity, TaskConfig
from unitask.config.task_types import TASK_TYPES, TEXT_ROLES
from unitask.tasks import example_keys

SCHEMA = "columns_exist"
"""Required columns: always an error, since no other check can run on a split without them."""

DEFAULT_SEVERITY: dict[str, Severity] = {
    **{name: "error" for name in typing.get_args(CheckName)},
    "class_balance": "warn",
    "truncation": "warn",
}
ORDER = ("train", "validation", "test")  # leakage: a row may not repeat a row of an earlier split


@dataclass(frozen=True)
class Check:
    name: str
    column: str  # the role the check is about, named in messages
    expectation: gxe.Expectation
    offenders: str | None = None  # split-level checks: derived boolean column marking rows to show
    shows: str | None = None  # derived column whose value a message shows per row (default: the checked one)


def severity(cfg: Config, name: str) -> Severity:
    return "error" if name == SCHEMA else {**DEFAULT_SEVERITY, **cfg.validate.severity}[name]


def schema_checks(task: TaskConfig) -> list[Check]:
    return [
        Check(SCHEMA, column, gxe.ExpectColumnToExist(column=column)) for column in ("id", *TASK_TYPES[task.type].roles)
    ]


def content_checks(cfg: Config, task: TaskConfig) -> list[Check]:
    """The task's row and split checks; the derived columns they read come from `derive`."""
    spec = TASK_TYPES[task.type]
    checks: list[Check] = []
    for role in spec.roles:
        if role in TEXT_ROLES:
            checks += [
                Check("text_not_empty", role, gxe.ExpectColumnValuesToNotBeNull(column=role)),
                Check("text_not_empty", role, gxe.ExpectColumnValuesToNotMatchRegex(column=role, regex=r"^\s*$")),
            ]
    checks += _label_checks(cfg, task)
    if "image" in spec.roles:
        checks += _image_checks(cfg)
    return checks + _split_checks(cfg, task)


def _label_checks(cfg: Config, task: TaskConfig) -> list[Check]:
    spec, v = TASK_TYPES[task.type], cfg.validate
    checks: list[Check] = []
    if spec.label_kind in ("categorical", "numeric"):
        checks.append(Check("label_not_null", "label", gxe.ExpectColumnValuesToNotBeNull(column="label")))
    if spec.label_kind == "categorical":
        checks += [
            Check("label_in_set", "label", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=task.labels)),
            Check(
                "class_balance",
                "label",
                gxe.ExpectColumnMinToBeBetween(
                    column="_class_ratio",
                    min_value=v.class_balance_min_ratio,
                    description="rows of the rarest declared label / rows of the most common one",
                ),
                offenders="_rare_class",
                shows="_class_ratio",
            ),
        ]
    if spec.label_kind == "numeric" and task.label_range:
        lo, hi = task.label_range
        checks.append(
            Check(
                "label_in_range", "label", gxe.ExpectColumnValuesToBeBetween(column="label", min_value=lo, max_value=hi)
            )
        )
    if spec.label_kind == "tags":
        checks += [
            Check(
                "tags_match_tokens",
                "tags",
                gxe.ExpectColumnPairValuesToBeEqual(column_A="_n_tokens", column_B="_n_tags"),
            ),
            _derived("tags_in_set", "tags", "_unknown_tags", "", "tags not in tasks.<task>.labels"),
            _derived("tags_bio_order", "tags", "_bio_error", "", "an I-X tag must follow B-X or I-X"),
        ]
    if spec.label_kind == "span":
        checks.append(_derived("answer_in_context", "answers", "_span_error", "", "context[start:start+len] == text"))
    return checks


def _image_checks(cfg: Config) -> list[Check]:
    v = cfg.validate
    (w0, h0), (w1, h1) = v.image_min_size, v.image_max_size
    return [
        _derived("image_exists", "image", "_image_exists", True, "the image file exists"),
        _derived("image_decodes", "image", "_image_decodes", True, "PIL decodes the whole image"),
        Check("image_mode", "image", gxe.ExpectColumnValuesToBeInSet(column="_image_mode", value_set=v.image_modes)),
        Check(
            "image_size",
            "image",
            gxe.ExpectColumnValuesToBeBetween(column="_image_width", min_value=w0, max_value=w1),
        ),
        Check(
            "image_size",
            "image",
            gxe.ExpectColumnValuesToBeBetween(column="_image_height", min_value=h0, max_value=h1),
        ),
    ]


def _split_checks(cfg: Config, task: TaskConfig) -> list[Check]:
    """Checks across rows and splits: duplicates, leakage, truncation."""
    spec, v = TASK_TYPES[task.type], cfg.validate
    first = spec.inputs[0]
    return [
        Check(
            "unique_in_split",
            first,
            gxe.ExpectColumnValuesToBeUnique(column="_input_key", description="inputs: " + ", ".join(spec.inputs)),
        ),
        _derived(
            "no_leakage",
            first,
            "_seen_in",
            "",
            "the split an identical input already occurs in (train < validation < test)",
        ),
        Check(
            "truncation",
            first,
            gxe.ExpectColumnMeanToBeBetween(
                column="_truncated",
                min_value=0.0,
                max_value=v.max_truncated_share,
                description=f"share of rows longer than model.max_length={cfg.model.max_length} tokens",
            ),
            offenders="_truncated",
            shows="_n_model_tokens",
        ),
    ]


def _derived(name: str, role: str, column: str, ok: Any, description: str) -> Check:
    return Check(name, role, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[ok], description=description))


# ---- derived columns ---------------------------------------------------------------------------


def derive(cfg: Config, task: TaskConfig, splits: dict[str, pd.DataFrame], tokenizer: Any) -> dict[str, pd.DataFrame]:
    """Each split with the derived columns its checks read (the role columns stay untouched)."""
    spec = TASK_TYPES[task.type]
    keys = {s: example_keys(frame, spec.inputs) for s, frame in splits.items()}
    images: dict[str, tuple[bool, bool | None, str | None, float, float]] = {}
    out = {}
    for split, frame in splits.items():
        frame = frame.copy()
        frame["_input_key"] = keys[split]
        earlier = [s for s in ORDER[: ORDER.index(split)] if s in keys]
        frame["_seen_in"] = _seen_in(keys[split], {s: set(keys[s]) for s in earlier})
        lengths = _token_lengths(spec.name, frame, tokenizer)
        frame["_n_model_tokens"] = lengths
        frame["_truncated"] = (lengths > cfg.model.max_length).astype("float64")
        if spec.label_kind == "categorical":
            declared = frame["label"].where(frame["label"].isin(task.labels or []))  # others: label_in_set
            counts = declared.map(declared.value_counts()).astype("float64")
            frame["_class_ratio"] = counts / counts.max()
            rare = frame["_class_ratio"] < cfg.validate.class_balance_min_ratio
            frame["_rare_class"] = rare & ~frame["label"].duplicated()  # one row per rare label
        if spec.label_kind == "tags":
            frame["_n_tokens"] = frame["tokens"].map(len)
            frame["_n_tags"] = frame["tags"].map(len)
            allowed = set(task.labels or [])
            frame["_unknown_tags"] = frame["tags"].map(lambda tags: " ".join(sorted(set(tags) - allowed)))
            frame["_bio_error"] = frame["tags"].map(bio_error)
        if spec.label_kind == "span":
            frame["_span_error"] = [span_error(c, a) for c, a in zip(frame["context"], frame["answers"])]
        if "image" in spec.roles:
            facts = [_image(cfg.root, p, images) for p in frame["image"]]
            columns = ("_image_exists", "_image_decodes", "_image_mode", "_image_width", "_image_height")
            for i, column in enumerate(columns):
                frame[column] = pd.Series(
                    [f[i] for f in facts], index=frame.index, dtype=object if i < 3 else "float64"
                )
        out[split] = frame
    return out


def _seen_in(keys: list[str], earlier: dict[str, set[str]]) -> list[str]:
    return [next((s for s, seen in earlier.items() if k in seen), "") for k in keys]


def _token_lengths(type_name: str, frame: pd.DataFrame, tokenizer: Any) -> np.ndarray:
    """Tokens per row with the task encoder's tokenizer, special tokens included, nothing cut."""

    def texts(role: str) -> list[str]:
        return ["" if not isinstance(v, str) else v for v in frame[role]]

    options: dict[str, Any] = {
        "truncation": False,
        "verbose": False,
        "return_attention_mask": False,
        "return_token_type_ids": False,
    }
    if type_name == "token_classification":
        encoded = tokenizer(list(frame["tokens"]), is_split_into_words=True, **options)
    elif type_name == "pair_classification":
        encoded = tokenizer(texts("text"), texts("text_pair"), **options)
    elif type_name == "extractive_qa":
        encoded = tokenizer(texts("question"), texts("context"), **options)
    else:
        encoded = tokenizer(texts("text"), **options)
    return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(frame))


def bio_error(tags: list[str]) -> str:
    """'' when every I-X follows B-X or I-X, else where the first one does not."""
    previous = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return f"{tag} at token {i} follows {previous}"
        previous = tag
    return ""


def span_error(context: Any, answers: dict[str, list[Any]]) -> str:
    """'' when every answer lies inside the context and matches its text, else the first fault."""
    if not isinstance(context, str):
        return ""
    if len(answers["text"]) != len(answers["answer_start"]):
        return f"{len(answers['text'])} answer texts but {len(answers['answer_start'])} starts"
    for text, start in zip(answers["text"], answers["answer_start"]):
        end = start + len(text)
        if start < 0 or end > len(context):
            return f"answer {text!r} at [{start}, {end}) lies outside the context (length {len(context)})"
        if context[start:end] != text:
            return f"answer {text!r} at {start}: the context has {context[start:end]!r} there"
    return ""


def _image(
    root: Path, rel: Any, cache: dict[str, tuple[bool, bool | None, str | None, float, float]]
) -> tuple[bool, bool | None, str | None, float, float]:
    """(exists, decodes, mode, width, height) of one image path, decoded once per path."""
    if not isinstance(rel, str):
        return (False, None, None, np.nan, np.nan)
    if rel not in cache:
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        if not path.is_file():
            cache[rel] = (False, None, None, np.nan, np.nan)
        else:
            try:
                with Image.open(path) as image:
                    image.load()
                    cache[rel] = (True, True, image.mode, float(image.width), float(image.height))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                cache[rel] = (True, False, None, np.nan, np.nan)
    return cache[rel]
