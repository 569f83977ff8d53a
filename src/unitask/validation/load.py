"""Read one prepared split (`<split>.parquet`, else `<split>.csv`) and check its shape and column
types. Anything that stops the expectations from running at all (a missing or unreadable file,
non-UTF-8 bytes, an empty split, a column of the wrong type) is an `InputError`: one paragraph that
names the file, the column and the first rows at fault, never a traceback."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from unitask.config import Config, TaskConfig
from unitask.config.task_types import TASK_TYPES, TEXT_ROLES
from unitask.errors import DataError

STRING_ROLES = (*TEXT_ROLES, "image")
LIST_ROLES = ("tokens", "tags")
SHOW = 5


_ID_HINT = "prepare writes integer row ids; run `unitask prepare` again rather than editing the split"


class InputError(DataError):
    """A prepared split that cannot be validated: missing, unreadable, empty or mistyped."""


def split_file(cfg: Config, name: str, split: str) -> Path:
    folder = cfg.path(cfg.paths.prepared) / name
    parquet = folder / f"{split}.parquet"
    csv = folder / f"{split}.csv"
    if parquet.exists() or not csv.exists():
        return parquet
    return csv


def load_split(cfg: Config, name: str, task: TaskConfig, split: str) -> pd.DataFrame:
    """The split as a DataFrame with plain Python values: str, float, lists of str, dicts."""
    path = split_file(cfg, name, split)
    where = f"tasks.{name}, split {split} ({path})"
    if not path.is_file():
        raise InputError(
            f"{where}: file not found",
            hint=f"run `unitask prepare --task {name}` (or `dvc repro`) to write the prepared splits",
        )
    frame = _read_parquet(path, where) if path.suffix == ".parquet" else _read_csv(path, where, task)
    if frame.empty:
        raise InputError(
            f"{where}: the split has no rows",
            hint="check the raw data and prepare's fractions; every split needs at least one example",
        )
    if "id" in frame and not pd.api.types.is_integer_dtype(frame["id"]):
        raise InputError(f"{where}: column 'id' has type {frame['id'].dtype}; expected integer row ids", hint=_ID_HINT)
    for role in TASK_TYPES[task.type].roles:
        if role in frame:
            frame[role] = _typed(frame, role, task, where)
    return frame


def _read_parquet(path: Path, where: str) -> pd.DataFrame:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{where}: not a readable Parquet file ({exc})",
            hint="the file is truncated or not Parquet; regenerate it with `unitask prepare`",
        ) from None
    for column in table.column_names:
        chunked = table[column]
        if pa.types.is_string(chunked.type) or pa.types.is_large_string(chunked.type):
            try:
                for chunk in chunked.chunks:
                    chunk.validate(full=True)
            except pa.ArrowInvalid:
                raw = pd.Series(chunked.cast(pa.binary()).to_pylist(), dtype=object)
                frame = pd.DataFrame({"id": table["id"].to_pylist()} if "id" in table.column_names else {})
                raise _not_utf8(where, column, frame, raw) from None
    try:
        frame = table.to_pandas()
    except (ValueError, TypeError, KeyError) as exc:  # a damaged pandas schema in the file's metadata
        raise InputError(
            f"{where}: not a readable Parquet file (damaged metadata: {exc})",
            hint="the file is damaged; regenerate it with `unitask prepare`",
        ) from None
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(lambda v: isinstance(v, bytes)).any():
            frame[column] = _decode(where, column, frame)
    return frame


def _decode(where: str, column: str, frame: pd.DataFrame) -> pd.Series:
    """A binary column as text, or an InputError naming the rows that are not UTF-8."""
    raw = frame[column]
    try:
        return raw.map(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v)
    except UnicodeDecodeError:
        raise _not_utf8(where, column, frame, raw) from None


def _not_utf8(where: str, column: str, frame: pd.DataFrame, raw: pd.Series) -> InputError:
    def bad(value: Any) -> bool:
        if not isinstance(value, bytes):
            return False
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    mask = raw.map(bad).to_numpy()
    return InputError(
        f"{where}: column '{column}' has bytes that are not UTF-8 in {int(mask.sum())} rows, e.g. "
        + _rows(frame, mask, raw.map(lambda v: v[:60] if isinstance(v, bytes) else v)),
        hint="re-encode the source as UTF-8 (or set tasks.<task>.read.encoding) and prepare again",
    )


def _read_csv(path: Path, where: str, task: TaskConfig) -> pd.DataFrame:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{where}: not UTF-8 text: byte {data[exc.start]:#04x} at offset {exc.start} (line {line}) is {exc.reason}",
            hint="re-encode the file as UTF-8 (or set tasks.<task>.read.encoding) and prepare again",
        ) from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(
            f"{where}: not a readable CSV file ({str(exc).strip()})",
            hint="check the delimiter and quoting; regenerate it with `unitask prepare`",
        ) from None
    if "id" in frame:
        ids = pd.to_numeric(frame["id"], errors="coerce")
        if ids.isna().any():
            raise _wrong_type(where, "id", frame, ids.isna().to_numpy(), "integer row ids")
        frame["id"] = ids.astype("int64")
    for role in ("tokens", "tags", "answers"):
        if role in frame and role in TASK_TYPES[task.type].roles:
            frame[role] = _json_cells(frame, role, where)
    if TASK_TYPES[task.type].label_kind == "numeric" and "label" in frame:
        numbers = pd.to_numeric(frame["label"].replace("", None), errors="coerce")
        wrong = numbers.isna() & (frame["label"] != "")
        if wrong.any():
            raise _wrong_type(where, "label", frame, wrong.to_numpy(), "numbers (regression targets)")
        frame["label"] = numbers.astype("float64")
    return frame


def _json_cells(frame: pd.DataFrame, role: str, where: str) -> pd.Series:
    def parse(cell: str) -> Any:
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return _Unparsed(cell)

    values = frame[role].map(parse)
    bad = values.map(lambda v: isinstance(v, _Unparsed)).to_numpy()
    if bad.any():
        raise _wrong_type(where, role, frame, bad, "JSON cells (lists, or an answers object)")
    return values


class _Unparsed(str):
    """A CSV cell that should hold JSON and does not."""


def _typed(frame: pd.DataFrame, role: str, task: TaskConfig, where: str) -> pd.Series:
    """The role's column with its values checked for type (nulls pass: expectations report them)."""
    column = frame[role]
    kind = TASK_TYPES[task.type].label_kind
    if role in STRING_ROLES or (role == "label" and kind == "categorical"):
        bad = column.map(lambda v: not (v is None or isinstance(v, str) or _is_nan(v))).to_numpy()
        if bad.any():
            expected = f"text labels from tasks.<task>.labels {task.labels}" if role == "label" else "text"
            raise _wrong_type(where, role, frame, bad, expected)
        return column
    if role == "label":  # regression
        if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
            numeric = column.map(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool))
            raise _wrong_type(where, role, frame, (~numeric).to_numpy(), "numbers (regression targets)")
        return column.astype("float64")
    if role in LIST_ROLES:
        values = column.map(lambda v: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v)
        bad = values.map(lambda v: not (isinstance(v, list) and all(isinstance(t, str) for t in v)))
        if bad.any():
            raise _wrong_type(where, role, frame, bad.to_numpy(), "lists of strings")
        return values
    values = column.map(_answers)  # extractive QA
    bad = values.map(lambda v: v is None).to_numpy()
    if bad.any():
        raise _wrong_type(where, role, frame, bad, "objects {text: [str], answer_start: [int]}")
    return values


def _answers(value: Any) -> dict[str, list[Any]] | None:
    if not isinstance(value, dict) or not {"text", "answer_start"} <= set(value):
        return None
    texts, starts = value["text"], value["answer_start"]
    if not isinstance(texts, (list, tuple, np.ndarray)) or not isinstance(starts, (list, tuple, np.ndarray)):
        return None
    if not all(isinstance(t, str) for t in texts) or not all(isinstance(s, (int, np.integer)) for s in starts):
        return None
    return {"text": list(texts), "answer_start": [int(s) for s in starts]}


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _wrong_type(where: str, role: str, frame: pd.DataFrame, mask: np.ndarray, expected: str) -> InputError:
    kinds = sorted({type(v).__name__ for v in frame[role][mask]})
    return InputError(
        f"{where}: column '{role}' has the wrong type: expected {expected}, found {'/'.join(kinds)} "
        f"(dtype {frame[role].dtype}) in {int(mask.sum())} of {len(frame)} rows, e.g. "
        + _rows(frame, mask, frame[role]),
        hint="prepare writes every role in its canonical type; check tasks.<task>.columns and "
        "label_names, then run `unitask prepare` again",
    )


def _rows(frame: pd.DataFrame, mask: np.ndarray, values: pd.Series) -> str:
    """`id=7: 'value'` for the first rows of `mask` (row numbers when there is no id column)."""
    ids = frame["id"] if "id" in frame else pd.Series(np.arange(len(frame)), index=frame.index)
    shown = [
        f"{'id' if 'id' in frame else 'row'}={i}: {short(v)}" for i, v in zip(ids[mask][:SHOW], values[mask][:SHOW])
    ]
    return "; ".join(shown)


def short(value: Any, limit: int = 80) -> str:
    """A value's repr, cut to `limit` characters."""
    if value is None or value is pd.NA or _is_nan(value):
        return "null"
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.tolist()
    text = repr(round(value, 4) if isinstance(value, float) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
