"""Read fetched bytes into a table, one reader per `read.format`.

Text stays text: CSV cells are read as strings (no 'NA' -> NaN guessing); labels are cast later.
Each table's index says where its rows are in the file, for messages that name them (`where`): the
line (jsonl, conll, regex), the row (csv: as a spreadsheet numbers it, the header is row 1; json and
parquet: the record, from 1), or the file's path (text_folder). A column named twice is refused.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from unitask.config import HubSource, ReadSpec, TaskConfig
from unitask.errors import DataError, RefusedData

Reader = Callable[[Path, ReadSpec], pd.DataFrame]


def read_table(task: TaskConfig, entry: Path) -> pd.DataFrame:
    """The task's raw table; with `read.files` (or a hub export) it has a `split` column."""
    files = split_files(task, entry)
    if not files:
        return read_file(entry, task.read)
    parts = []
    for split, rel in files.items():
        part = read_file(entry / rel, task.read)
        part.insert(0, "split", split)
        parts.append(part)
    return pd.concat(parts)


def split_files(task: TaskConfig, entry: Path) -> dict[str, str] | None:
    """Split -> file inside `entry` when the task has predefined splits (`read.files`, or a hub
    export's Parquet files); None when `entry` is the one file."""
    if isinstance(task.source, HubSource) and task.read.files is None:
        return {p.stem: p.name for p in sorted(entry.glob("*.parquet"))}
    return task.read.files or None


def read_file(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """One file (or text folder) as a table; a DataError that names the file when it cannot be read."""
    if not path.exists():
        raise DataError(f"{path}: not found", hint="run `unitask data fetch`, or fix read.files")
    try:
        table = READERS[spec.format](path, spec)
    except (ValueError, OSError) as exc:  # pandas' and pyarrow's parse errors are ValueErrors
        raise DataError(
            f"{path}: cannot read as {spec.format}: {exc}", hint="set read.format (and read.sep) to match the file"
        ) from None
    return table


def where(task: TaskConfig, entry: Path, table: pd.DataFrame, positions: Iterable[int]) -> str:
    """Where the rows at `positions` of `read_table`'s table are in the task's files, e.g.
    '.../reviews.csv rows 4, 9' or '.../train.jsonl line 3; .../test.jsonl line 7'."""
    files = split_files(task, entry)
    places: dict[Path, list[str]] = {}
    for i in positions:
        path = entry / files[table["split"].iloc[i]] if files else entry
        places.setdefault(path, []).append(str(table.index[i]))
    kind = table.index.name
    if kind == "path":
        return ", ".join(str(path / label) for path, labels in places.items() for label in labels)
    return "; ".join(f"{path} {kind if len(n) == 1 else kind + 's'} {', '.join(n)}" for path, n in places.items())


def _numbered(table: pd.DataFrame, kind: str, numbers: Iterable[int | str]) -> pd.DataFrame:
    """`table` indexed by where each row is in its file (`kind`: line, row, or path inside the folder)."""
    table.index = pd.Index(list(numbers), name=kind)
    return table


def _unique_names(place: str | Path, names: Sequence[object], what: str = "the header", unit: str = "column") -> None:
    """Refuse column (or JSON key) names given twice: the task would read one copy and silently ignore
    the other (pandas renames it 'name.1', json keeps the last value)."""
    shown = [str(n) for n in names]
    if len(set(shown)) == len(shown):
        return
    twice = sorted({n for n in shown if n.strip() and shown.count(n) > 1})
    if twice:
        at = {n: ", ".join(str(i) for i, m in enumerate(shown, 1) if m == n) for n in twice}
        raise RefusedData(
            f"{place}: {what} names the same {unit} more than once: "
            + "; ".join(f"{n!r} ({unit}s {at[n]})" for n in twice),
            hint=f"rename or remove the extra {unit}s so that every name is unique (tasks.<task>.columns reads by name)",
        )


def _text(path: Path, spec: ReadSpec) -> str:
    """A file's text in `read.encoding`, else in `read.fallback_encoding` when one is set. A UTF-8
    byte-order mark (spreadsheet exports write one) is dropped, not read as part of the first cell."""
    data = path.read_bytes()
    encodings = [spec.encoding] + ([spec.fallback_encoding] if spec.fallback_encoding else [])
    for encoding in encodings:
        try:
            return data.decode(_without_bom(encoding))
        except UnicodeDecodeError as exc:
            error = exc
    raise DataError(
        f"{path}: not {' or '.join(encodings)} text ({error.reason} at byte {error.start})",
        hint="set read.encoding (or read.fallback_encoding) to the file's encoding",
    ) from None


def _without_bom(encoding: str) -> str:
    return "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding


def _lines(path: Path, spec: ReadSpec) -> list[str]:
    """The file's lines, ended by LF, CRLF or CR only (`str.splitlines` also splits at U+2028, U+0085
    and other characters that are text inside a JSON string or a sentence)."""
    return LINE_END.split(_text(path, spec))


LINE_END = re.compile(r"\r\n|\r|\n")


def _csv(path: Path, spec: ReadSpec) -> pd.DataFrame:
    text = _text(path, spec)
    if spec.header and not spec.names:
        header = pd.read_csv(io.StringIO(text), sep=spec.sep, header=None, nrows=1, dtype=str, keep_default_na=False)
        _unique_names(path, list(header.iloc[0]) if len(header) else [])
    table = pd.read_csv(
        io.StringIO(text),
        sep=spec.sep,
        header=0 if spec.header else None,
        names=spec.names,
        dtype=str,
        keep_default_na=False,
    )
    first = 2 if spec.header else 1
    return _numbered(table, "row", range(first, first + len(table)))


def _jsonl(path: Path, spec: ReadSpec) -> pd.DataFrame:
    rows, numbers = [], []
    for number, line in enumerate(_lines(path, spec), 1):
        if line.strip():
            try:
                rows.append(json.loads(line, object_pairs_hook=partial(_object, f"{path}:{number}")))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not a JSON line: {exc.msg}", hint="fix that line (one JSON object per line)"
                ) from None
            numbers.append(number)
    return _numbered(_records(rows, spec, path), "line", numbers)


def _json(path: Path, spec: ReadSpec) -> pd.DataFrame:
    try:
        rows = json.loads(_text(path, spec), object_pairs_hook=partial(_object, path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", hint="fix the JSON there") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows", hint="use format jsonl for one object per line")
    return _numbered(_records(rows, spec, path), "row", range(1, len(rows) + 1))


def _object(place: str | Path, pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object (json's `object_pairs_hook`), refused when it names a key twice: `json` would keep the last."""
    _unique_names(place, [key for key, _ in pairs], "an object", "key")
    return dict(pairs)


def _records(rows: list, spec: ReadSpec, path: Path) -> pd.DataFrame:
    """Rows that are all objects, or all lists (named by `read.names`), as a table."""
    kind = dict if not rows or isinstance(rows[0], dict) else list
    odd = next((i for i, row in enumerate(rows) if not isinstance(row, kind)), None)
    if odd is not None or (kind is list and not isinstance(rows[0], list)):
        odd = odd or 0
        raise DataError(
            f"{path}: row {odd + 1} is {type(rows[odd]).__name__} {str(rows[odd])[:60]!r}; "
            f"every row must be a JSON {'object' if kind is dict else 'list'} like the first",
            hint="fix that row (one object per row, or lists with read.names)",
        )
    if kind is list:
        if not spec.names:
            raise DataError(f"{path}: rows are lists, not objects", hint="set read.names")
        return pd.DataFrame(rows, columns=spec.names)
    return pd.DataFrame(rows)


def _parquet(path: Path, spec: ReadSpec) -> pd.DataFrame:
    _unique_names(path, pq.read_schema(path).names, "the schema")
    try:
        table = pd.read_parquet(path)
    except (TypeError, KeyError) as exc:  # a damaged pandas schema in the file's metadata
        raise ValueError(f"damaged metadata ({exc})") from None
    return _numbered(table, "row", range(1, len(table) + 1))


def _text_folder(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """`<path>/<label>/<file>.txt`: one example per file."""
    files = sorted(p for p in path.glob("*/*.txt") if p.is_file())
    if not files:
        raise DataError(
            f"{path}: no <label>/<name>.txt files", hint="text_folder reads one folder per label of .txt files"
        )
    names = [p.relative_to(path).as_posix() for p in files]
    texts = [_text(p, spec) for p in files]
    return _numbered(
        pd.DataFrame({"text": texts, "label": [p.parent.name for p in files], "file": names}), "path", names
    )


def _conll(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """`token<TAB>tag` lines, a blank line between sentences."""
    sentences: list[tuple[list[str], list[str]]] = [([], [])]
    starts = []
    for number, line in enumerate(_lines(path, spec), 1):
        if not line.strip():
            if sentences[-1][0]:
                sentences.append(([], []))
            continue
        if not sentences[-1][0]:
            starts.append(number)
        fields = line.split(spec.sep if spec.sep != "," else "\t")
        if len(fields) < 2:
            raise DataError(
                f"{path}:{number}: expected 'token<TAB>tag', got {line!r}",
                hint="give every token line a tag (read.sep sets the separator); sentences end at a blank line",
            )
        sentences[-1][0].append(fields[0])
        sentences[-1][1].append(fields[-1])
    sentences = [s for s in sentences if s[0]]
    table = pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})
    return _numbered(table, "line", starts)


def _regex(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """One example per non-empty line, columns from the pattern's named groups."""
    pattern = re.compile(spec.pattern or "")
    rows, numbers, bad = [], [], []
    for number, line in enumerate(_lines(path, spec), 1):
        if not line.strip():
            continue
        match = pattern.fullmatch(line)
        if match is None:
            bad.append(f"{number}: {line[:60]!r}")
        else:
            rows.append(match.groupdict())
            numbers.append(number)
    if bad:
        raise DataError(
            f"{path}: {len(bad)} lines do not match read.pattern, e.g. " + "; ".join(bad[:5]),
            hint="fix the lines or the pattern",
        )
    return _numbered(pd.DataFrame(rows, columns=list(pattern.groupindex)), "line", numbers)


READERS: dict[str, Reader] = {
    "csv": _csv,
    "jsonl": _jsonl,
    "json": _json,
    "parquet": _parquet,
    "text_folder": _text_folder,
    "conll": _conll,
    "regex": _regex,
}
