"""`unitask task add FILE`: propose a task declaration from a data file, write it into params.yaml
(comments kept), and fetch, prepare and validate the new task.

The file is read with the project's own readers (the format from its suffix). The type follows the
columns: tokens and tags (CoNLL) are token classification; one text column and a label are
classification, or regression when the label is numeric with many values; two text columns and a
label are pair classification. A file that leaves a choice open (two candidate label columns, say)
stops with the question and the flag that answers it, and params.yaml is not touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unitask.config import Config, ReadSpec
from unitask.errors import ConfigError, DataError

FORMATS = {".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".tab": ("csv", "\t"), ".jsonl": ("jsonl", ","),
           ".ndjson": ("jsonl", ","), ".json": ("json", ","), ".parquet": ("parquet", ","), ".conll": ("conll", "\t"),
           ".iob": ("conll", "\t"), ".bio": ("conll", "\t")}  # fmt: skip
MAX_CLASSES = 50  # a label column has at most this many values (more, and numeric: a regression target)
MIN_TEXT_CHARS = 12  # a text column's values are this long on average (shorter: a label or an id)


@dataclass
class Choices:
    """What the command line decided: the task's name and, where the file leaves a choice, the columns."""

    name: str | None = None
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


def read_spec(path: Path) -> ReadSpec:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"{path}: cannot tell the format from the suffix '{path.suffix}'",
                          hint=f"name the file with one of {', '.join(FORMATS)}")  # fmt: skip
    fmt, sep = FORMATS[path.suffix.lower()]
    return ReadSpec(format=fmt, sep=sep)


def _is_numeric(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values, errors="coerce").notna().all())


def _an_id(name: str, values: pd.Series) -> bool:
    """A row id: named like one, or whole numbers that are all different."""
    if re.fullmatch(r"(?i)(id|idx|index|.*_id)", str(name)):
        return True
    numbers = pd.to_numeric(values, errors="coerce")
    return bool(numbers.notna().all() and (numbers % 1 == 0).all() and numbers.is_unique and len(values) > MAX_CLASSES)


def _text_like(values: pd.Series) -> bool:
    return values.map(lambda v: isinstance(v, str)).all() and values.astype(str).str.len().mean() >= MIN_TEXT_CHARS


def _one(kind: str, candidates: list[str], flag: str, path: Path) -> str:
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(f"'{c}'" for c in candidates) or "none"
    raise ConfigError(f"{path}: which column is the {kind}? candidates: {found}", hint=f"pass {flag} COLUMN")


def columns(table: pd.DataFrame, choices: Choices, path: Path) -> tuple[str, dict[str, str]]:
    """(task type, role -> column) of a table, or a ConfigError that asks for the flag to decide."""
    if list(table.columns) == ["tokens", "tags"]:
        return "token_classification", {"tokens": "tokens", "tags": "tags"}
    texts = [c for c in table.columns if _text_like(table[c].dropna())]
    labels = [c for c in table.columns if c not in texts and not _an_id(c, table[c])
              and (table[c].nunique() <= MAX_CLASSES or _is_numeric(table[c]))]  # fmt: skip
    label = choices.label or _one("label", labels, "--label", path)
    texts = [c for c in texts if c != label]
    if choices.text:
        texts = [choices.text] + ([choices.text_pair] if choices.text_pair else [])
    elif len(texts) > 2:
        raise ConfigError(f"{path}: which columns are the text? candidates: {', '.join(map(repr, texts))}",
                          hint="pass --text COLUMN (and --text-pair COLUMN for pairs)")  # fmt: skip
    missing = [c for c in [label, *texts] if c not in table.columns]
    if missing or not texts:
        raise ConfigError(f"{path}: no column {missing[0]!r}" if missing else f"{path}: no text column found",
                          hint=f"columns: {', '.join(map(str, table.columns))}")  # fmt: skip
    regression = _is_numeric(table[label]) and table[label].nunique() > MAX_CLASSES
    roles = {"text": texts[0], **({"text_pair": texts[1]} if len(texts) > 1 else {}), "label": label}
    kind = "regression" if regression else ("pair_classification" if len(texts) > 1 else "classification")
    return kind, roles


def declaration(cfg: Config, path: Path, choices: Choices) -> tuple[str, dict[str, Any]]:
    """(name, the task's params.yaml entry) for the data file at `path`."""
    from unitask.data.readers import read_file

    spec = read_spec(path)
    table = read_file(path, spec)
    kind, roles = columns(table, choices, path)
    name = choices.name or re.sub(r"\W+", "_", path.stem.lower()).strip("_")
    if name in cfg.tasks:
        raise ConfigError(f"tasks.{name}: already declared in {cfg.root / 'params.yaml'}", hint="pass --name NEW_NAME")
    read: dict[str, Any] = {"format": spec.format, **({"sep": spec.sep} if spec.format in ("csv", "conll") and spec.sep != "," else {})}
    entry: dict[str, Any] = {"type": kind, "source": {"kind": "local", "path": _relative(cfg, path)}, "read": read,
                             "columns": roles}  # fmt: skip
    if kind == "token_classification":
        entry["labels"] = sorted({tag for tags in table["tags"] for tag in tags})
    elif kind != "regression":
        entry["labels"] = sorted(table[roles["label"]].dropna().astype(str).unique().tolist())
    return name, entry


def _relative(cfg: Config, path: Path) -> str:
    resolved = cfg.path(str(path.resolve()), "the data file")  # inside the project (or paths.roots)
    try:
        return resolved.relative_to(cfg.root.resolve()).as_posix()
    except ValueError:
        return str(resolved)


def write_task(params: Path, name: str, entry: dict[str, Any]) -> None:
    """Add `tasks.<name>` to params.yaml, keeping its comments and layout (ruamel.yaml), atomically."""
    from ruamel.yaml import YAML

    from unitask.atomic import atomic_file

    yaml = YAML()
    yaml.preserve_quotes = True
    doc = yaml.load(params.read_text(encoding="utf-8"))
    doc["tasks"][name] = entry
    with atomic_file(params) as tmp:
        with tmp.open("w", encoding="utf-8") as out:
            yaml.dump(doc, out)


def add_task(cfg: Config, params: Path, path: Path, choices: Choices) -> tuple[str, dict[str, Any]]:
    """Propose, check (the whole config loads with it) and write the declaration; nothing is written
    when the file cannot be read, leaves a choice open, or the config would not load."""
    import yaml

    from unitask.config import load_config, read_yaml

    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="give the path of a CSV, TSV, JSONL, JSON, Parquet or CoNLL file")
    name, entry = declaration(cfg, path, choices)
    raw = read_yaml(params.read_text(encoding="utf-8"))
    raw["tasks"][name] = entry
    trial = params.with_name(f".{params.name}.task-add")
    try:
        trial.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        load_config(trial)
    finally:
        trial.unlink(missing_ok=True)
    write_task(params, name, entry)
    return name, entry
