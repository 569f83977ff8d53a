"""`unitask prepare`: raw table -> canonical columns -> clean, deduplicated, seeded, stratified
train/validation/test splits in Parquet, with a JSON summary per task. Wrong data (NUL characters,
blank inputs unless `prepare.drop_blank`, splits or labels below the minimum rows) is refused with a
`RefusedData` naming the rows in the user's file, before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from unitask.atomic import atomic_dir, write_json
from unitask.config import SPLITS, Config, TaskConfig
from unitask.config.task_types import TASK_TYPES, TEXT_ROLES
from unitask.data.fetch import raw_entry
from unitask.data.readers import read_table, where
from unitask.errors import ConfigError, DataError, RefusedData
from unitask.tasks import example_keys
from unitask.tracking import flatten, log_source, stage_run


def prepare(cfg: Config, tasks: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Prepare the named tasks (all by default); return each task's summary."""
    names = tasks or list(cfg.tasks)
    for name in names:
        cfg.task(name)
    import mlflow

    summaries = {}
    params = {"seed": cfg.seed, **cfg.prepare.model_dump()}
    for name in tqdm(names, desc="prepare", unit="task"):
        with stage_run(cfg, "prepare", name, params):
            summaries[name] = summary = prepare_task(cfg, name)
            mlflow.log_metrics(flatten("", {k: summary[k] for k in ("input_rows", "rows", "dropped")}))
            mlflow.log_dict(summary, "summary.json")
            log_source(cfg, name, summary["input_rows"])
    return summaries


def prepare_task(cfg: Config, name: str) -> dict[str, Any]:
    task = cfg.tasks[name]
    entry = raw_entry(cfg, name)
    table = read_table(task, entry)
    frame = canonical(cfg, name, task, table, entry)
    locate = partial(where, task, entry, table)
    refuse_nul(name, task, frame, locate)
    frame, dropped = clean(task, frame, blank_inputs(cfg, name, task, frame, locate))
    if frame.empty:
        raise RefusedData(
            f"tasks.{name}: no usable rows in {entry} after dropping blanks and duplicates",
            hint="check tasks.<name>.columns (the text column may be the wrong one) and the raw data",
        )
    frame, dropped["capped"] = cap(cfg, task, frame)
    splits = split(cfg, task, frame)
    check_sizes(cfg, name, task, splits, entry)
    out = cfg.path(cfg.paths.prepared) / name
    with atomic_dir(out) as tmp:
        for split_name, part in splits.items():
            part.to_parquet(tmp / f"{split_name}.parquet", index=False)
    summary = summarize(name, task, splits, dropped, input_rows=len(table))
    distribution = {k: summary[k] for k in DISTRIBUTION if k in summary}
    write_json(summary_path(cfg, name), {k: v for k, v in summary.items() if k not in DISTRIBUTION})
    write_json(summary_path(cfg, name).with_suffix(".labels.json"), {"task": name, **distribution})
    return summary


DISTRIBUTION = ("labels", "target")  # per-label counts, target statistics: in <task>.labels.json


def summary_path(cfg: Config, name: str) -> Path:
    """reports/prepare/<task>.json: rows and drops; <task>.labels.json beside it holds
    the label distribution per split."""
    return cfg.path(cfg.paths.reports) / "prepare" / f"{name}.json"


def canonical(cfg: Config, name: str, task: TaskConfig, table: pd.DataFrame, entry: Path) -> pd.DataFrame:
    """Rename the raw columns to their roles, build image paths, check and normalize labels."""
    if task.read.image_path:
        table = table.assign(image=_image_paths(cfg, name, task.read.image_path, table, entry))
    frame = pd.DataFrame({"id": np.arange(len(table))})
    if "split" in table:
        frame["split"] = table["split"].to_numpy()
    for role, column in task.columns.items():
        if column not in table:
            raise ConfigError(
                f"tasks.{name}.columns.{role}: no column '{column}' in the raw data; it has {list(table.columns)}",
                hint="map the role to one of those columns (or set read.names for files without a header)",
            )
        frame[role] = _typed(name, task, role, table[column])
    spec = TASK_TYPES[task.type]
    if spec.label_kind == "categorical":
        labels = frame["label"].astype(str).str.strip()
        frame["label"] = labels.map(task.label_names).fillna(labels) if task.label_names else labels
        _check_label_set(name, task, frame, frame["label"].map(lambda v: {v}))
    elif spec.label_kind == "tags":
        _check_label_set(name, task, frame, frame["tags"].map(set))
    elif spec.label_kind == "numeric":
        frame["label"] = _numeric(name, task, frame["label"])
    if task.group is not None:
        frame["group"] = _groups(name, task, table, frame)
    return frame


def _typed(name: str, task: TaskConfig, role: str, values: pd.Series) -> np.ndarray:
    """The raw column of `role` with each value of the type the role needs, or a DataError naming the
    raw rows that have another: text (numbers become their text; nulls stay, to be dropped as empty),
    lists of strings for tokens and tags, and answers objects (or their JSON text) for extractive QA."""
    convert = {"tokens": _strings, "tags": _strings, "answers": _answers}.get(role)
    if convert is None and role not in TEXT_ROLES:
        return values.to_numpy()
    convert = convert or _text
    out, bad = [], []
    for i, value in enumerate(values):
        try:
            out.append(convert(value))
        except (TypeError, ValueError):
            bad.append(i)
    if bad:
        expected = {"tokens": "lists of strings", "tags": "lists of strings", "answers": ANSWERS}.get(role, "text")
        shown = "; ".join(f"row {i}: {str(values.iloc[i])[:60]!r}" for i in bad[:5])
        raise DataError(
            f"tasks.{name}.columns.{role}: column '{task.columns[role]}' holds values that are not {expected} "
            f"in {len(bad)} raw rows, e.g. {shown}",
            hint=f"fix those rows, or map columns.{role} to a column of {expected}",
        )
    result = np.empty(len(out), dtype=object)
    result[:] = out
    return result


ANSWERS = "answers objects {text: [str], answer_start: [int]}"


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (str, int, float, np.number)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(type(value).__name__)


def _strings(value: Any) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(type(value).__name__)


def _answers(value: Any) -> dict[str, list[Any]]:
    if isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, dict) and set(value) >= {"text", "answer_start"}:
        texts, starts = _strings(value["text"]), value["answer_start"]
        if isinstance(starts, (list, tuple, np.ndarray)) and len(starts) == len(texts) and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in starts
        ):
            return {"text": texts, "answer_start": [int(s) for s in starts]}
    raise TypeError(type(value).__name__)


def _groups(name: str, task: TaskConfig, table: pd.DataFrame, frame: pd.DataFrame) -> np.ndarray:
    """Each row's group (`tasks.<name>.group`): from its raw column, or from its label."""
    group = task.group
    if group.column is not None:
        if group.column not in table:
            raise ConfigError(
                f"tasks.{name}.group.column: no column '{group.column}' in the raw data; it has {list(table.columns)}",
                hint="name a raw column, or group by label with group.labels",
            )
        return table[group.column].astype(str).to_numpy()
    return frame["label"].map(group.of_label()).to_numpy()


def _image_paths(cfg: Config, name: str, template: str, table: pd.DataFrame, entry: Path) -> list[str]:
    try:
        rels = [template.format(**row) for row in table.to_dict("records")]
    except KeyError as exc:
        raise ConfigError(
            f"tasks.{name}.read.image_path: no column {exc} in the raw data; it has {list(table.columns)}",
            hint="use {column} placeholders (and {split}) that exist in the data",
        ) from None
    return [(entry / rel).relative_to(cfg.root).as_posix() for rel in rels]


def _check_label_set(name: str, task: TaskConfig, frame: pd.DataFrame, per_row: pd.Series) -> None:
    """The labels in the data must be exactly the declared list; name the offending raw rows."""
    declared = set(task.labels or [])
    found = set().union(*per_row)
    unknown, unseen = sorted(found - declared), sorted(declared - found)
    if not (unknown or unseen):
        return
    parts = []
    if unknown:
        bad = frame.loc[per_row.map(lambda labels: bool(labels - declared)), "id"].head(5).tolist()
        parts.append(f"the data has labels not in the list: {unknown[:20]} (raw rows {bad})")
    if unseen:
        parts.append(f"listed labels never occur in the data: {unseen[:20]}")
    raise ConfigError(
        f"tasks.{name}.labels: the label list does not match the data: " + "; ".join(parts),
        hint="fix those rows, or make the list match the data (label_names renames raw values)",
    )


def _numeric(name: str, task: TaskConfig, values: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").replace([np.inf, -np.inf], np.nan)
    bad = values[numbers.isna() & values.notna()]
    if len(bad):
        raise DataError(
            f"tasks.{name}.columns.label: {len(bad)} targets are not finite numbers, "
            f"e.g. rows {list(bad.index[:5])}: {list(bad.head(5))}",
            hint="fix those rows, or map columns.label to the numeric column",
        )
    if task.label_range is not None:
        lo, hi = task.label_range
        outside = numbers[(numbers < lo) | (numbers > hi)]
        if len(outside):
            raise ConfigError(
                f"tasks.{name}.label_range: {len(outside)} targets lie outside [{lo}, {hi}], "
                f"e.g. {list(outside.head(5))}",
                hint="widen label_range, or fix those rows",
            )
    return numbers.astype("float64")


Locate = Callable[[Iterable[int]], str]  # raw table positions -> where they are in the user's files
SHOW = 5  # offending rows a message names


def refuse_nul(name: str, task: TaskConfig, frame: pd.DataFrame, locate: Locate) -> None:
    """Refuse NUL characters in any value the task reads: they are no text (often a UTF-16 file read as UTF-8)."""
    for role, column in task.columns.items():
        bad = frame[role].map(_has_nul)
        if bad.any():
            raise RefusedData(
                f"tasks.{name}.columns.{role}: column '{column}' holds NUL characters (\\x00) in {_rows(bad.sum())}, "
                f"e.g. {locate(frame.loc[bad, 'id'].head(SHOW))}",
                hint=f"remove the NUL bytes from those rows; if most rows have them, the file is likely UTF-16: "
                f"set tasks.{name}.read.encoding",
            )


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, (list, tuple, np.ndarray)):
        return any(_has_nul(v) for v in value)
    return False


def blank_inputs(cfg: Config, name: str, task: TaskConfig, frame: pd.DataFrame, locate: Locate) -> pd.Series:
    """The rows with an input (a role that identifies an example) that is null, empty or only whitespace
    (an empty list for tokens), to drop when `prepare.drop_blank`; else a RefusedData naming them."""
    blank = pd.DataFrame({role: _blank(role, frame[role]) for role in TASK_TYPES[task.type].inputs}, index=frame.index)
    rows = blank.any(axis=1)
    if rows.any() and not cfg.prepare.drop_blank:
        columns = ", ".join(f"{role} (column '{task.columns[role]}')" for role in blank if blank[role].any())
        raise RefusedData(
            f"tasks.{name}: {_rows(rows.sum())} with a blank or null {columns}, "
            f"e.g. {locate(frame.loc[rows, 'id'].head(SHOW))}",
            hint="fill in or remove those rows, or set prepare.drop_blank: true to drop such rows "
            "(prepare then prints how many it dropped)",
        )
    return rows


def _blank(role: str, values: pd.Series) -> pd.Series:
    if role in TEXT_ROLES:
        return values.isna() | (values.astype(str).str.strip() == "")
    return values.map(lambda v: v is None or len(v) == 0)


def clean(task: TaskConfig, frame: pd.DataFrame, blank: pd.Series) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop the `blank` rows, then exact duplicates of the inputs (keeping predefined test rows over
    validation over train), so that no example can land in two splits."""
    spec = TASK_TYPES[task.type]
    frame = frame[~blank]
    if "split" in frame:
        order = frame["split"].map({"test": 0, "validation": 1, "train": 2})
        frame = frame.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
    duplicate = pd.Series(example_keys(frame, spec.inputs), index=frame.index).duplicated(keep="first")
    frame = frame[~duplicate].sort_values("id", kind="stable").reset_index(drop=True)
    return frame, {"empty": int(blank.sum()), "duplicate": int(duplicate.sum())}


def cap(cfg: Config, task: TaskConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A seeded, stratified sample of at most `max_rows` (the task's or prepare's, the lower)."""
    limits = [n for n in (task.max_rows, cfg.prepare.max_rows) if n]
    if not limits or min(limits) >= len(frame):
        return frame, 0
    n = min(limits)
    kept = _take(frame, n, _strata(task, frame), cfg.seed)
    return kept.sort_values("id").reset_index(drop=True), len(frame) - n


def split(cfg: Config, task: TaskConfig, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Predefined splits are kept; missing ones are carved, stratified, out of the train pool."""
    total = len(frame)
    predefined = frame.pop("split") if "split" in frame else pd.Series("train", index=frame.index)
    out = {s: frame[predefined == s] for s in SPLITS}
    fractions = {"test": cfg.prepare.test_fraction, "validation": cfg.prepare.validation_fraction}
    for name, fraction in fractions.items():
        if len(out[name]):
            continue
        pool = out["train"]
        n = min(max(1, round(fraction * total)), len(pool))  # too few rows leave train short: check_sizes says so
        out[name] = _take(pool, n, _strata(task, pool), cfg.seed)
        out["train"] = pool.drop(out[name].index)
    return {s: part.sample(frac=1.0, random_state=cfg.seed).reset_index(drop=True) for s, part in out.items()}


def check_sizes(cfg: Config, name: str, task: TaskConfig, splits: dict[str, pd.DataFrame], entry: Path) -> None:
    """Refuse splits with fewer rows than `prepare.min_rows_per_split` and, for tasks with one label
    per row, labels with fewer train rows than `prepare.min_rows_per_label`."""
    least = cfg.prepare.min_rows_per_split
    if min(map(len, splits.values())) < least:
        rows = ", ".join(f"{s} {len(part)}" for s, part in splits.items())
        raise RefusedData(
            f"tasks.{name}: {entry} is too small to split: its {sum(map(len, splits.values()))} usable rows "
            f"make {rows}; every split needs prepare.min_rows_per_split = {least} rows",
            hint="add rows, lower prepare.validation_fraction and prepare.test_fraction (or raise max_rows "
            "when it caps the task), or lower prepare.min_rows_per_split",
        )
    least = cfg.prepare.min_rows_per_label
    if TASK_TYPES[task.type].label_kind != "categorical" or not least:
        return
    counts = splits["train"]["label"].value_counts()
    few = [f"'{label}' {counts.get(label, 0)}" for label in task.labels or [] if counts.get(label, 0) < least]
    if few:
        raise RefusedData(
            f"tasks.{name}: the train split of {entry} has too few rows of some labels: {', '.join(few)}; "
            f"every label needs prepare.min_rows_per_label = {least} train rows",
            hint="add rows of those labels, lower prepare.validation_fraction and prepare.test_fraction (more "
            "rows stay in train), or lower prepare.min_rows_per_label",
        )


def _strata(task: TaskConfig, frame: pd.DataFrame) -> pd.Series | None:
    kind = TASK_TYPES[task.type].label_kind
    if kind == "categorical":
        strata = frame["label"].astype(str)
    elif kind == "numeric":
        strata = pd.qcut(frame["label"], q=5, duplicates="drop").astype(str)
    else:
        return None
    if "split" in frame:
        strata = frame["split"].astype(str) + "/" + strata
    counts = strata.map(strata.value_counts())
    return strata.where(counts >= 2, "rare")


def _take(frame: pd.DataFrame, n: int, strata: pd.Series | None, seed: int) -> pd.DataFrame:
    """`n` rows of `frame`, stratified when every stratum can be split, else a plain sample."""
    if strata is not None and strata.value_counts().min() >= 2 and strata.nunique() <= min(n, len(frame) - n):
        taken, _ = train_test_split(frame, train_size=n, stratify=strata, random_state=seed)
        return taken
    return frame.sample(n=n, random_state=seed)


def summarize(
    name: str, task: TaskConfig, splits: dict[str, pd.DataFrame], dropped: dict[str, int], input_rows: int
) -> dict[str, Any]:
    """What prepare made of the raw table: every one of its `input_rows` rows is in a split (`rows`)
    or `dropped`, counted by reason (empty input, duplicate of another row, over the row cap)."""
    kind = TASK_TYPES[task.type].label_kind
    rows = {s: len(part) for s, part in splits.items()}
    summary: dict[str, Any] = {
        "task": name,
        "type": task.type,
        "input_rows": input_rows,
        "rows": rows,
        "dropped": dropped,
    }
    if kind == "categorical":
        summary["labels"] = {s: _counts(part["label"]) for s, part in splits.items()}
    elif kind == "tags":
        summary["labels"] = {s: _counts(part["tags"].explode()) for s, part in splits.items()}
    elif kind == "numeric":
        summary["target"] = {
            s: {k: round(float(v), 6) for k, v in part["label"].agg(["mean", "std", "min", "max"]).items()}
            for s, part in splits.items()
        }
    return summary


# summary["dropped"] key -> why prepare drops such rows: a blank input (only with prepare.drop_blank),
# the same inputs as a row it keeps, or over the row cap
DROPPED = {"empty": "blank (prepare.drop_blank)", "duplicate": "duplicate", "capped": "over max_rows"}


def dropped_line(summary: dict[str, Any]) -> str:
    """What prepare dropped from a task and why, for the screen, e.g. 'dropped 413 of 4837 rows: 315
    duplicate, 98 over max_rows'."""
    dropped = summary["dropped"]
    reasons = ", ".join(f"{n} {DROPPED[key]}" for key, n in dropped.items() if n)
    return f"dropped {sum(dropped.values())} of {summary['input_rows']} rows" + (f": {reasons}" if reasons else "")


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(values.value_counts().items())}
