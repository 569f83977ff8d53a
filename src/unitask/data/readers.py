"""Read fetched bytes into a table, one reader per `read.format`.

Text stays text: CSV cells are read as strings (no 'NA' -> NaN guessing); labels are cast later.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from unitask.config import HubSource, ReadSpec, TaskConfig
from unitask.errors import DataError

Reader = Callable[[Path, ReadSpec], pd.DataFrame]


def read_table(task: TaskConfig, entry: Path) -> pd.DataFrame:
    """The task's raw table; with `read.files` (or a hub export) it has a `split` column."""
    spec = task.read
    files = spec.files
    if isinstance(task.source, HubSource) and files is None:
        files = {p.stem: p.name for p in sorted(entry.glob("*.parquet"))}  # type: ignore[misc]
    if not files:
        return read_file(entry, spec)
    parts = []
    for split, rel in files.items():
        part = read_file(entry / rel, spec)
        part.insert(0, "split", split)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


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
    return pd.read_csv(
        io.StringIO(_text(path, spec)),
        sep=spec.sep,
        header=0 if spec.header else None,
        names=spec.names,
        dtype=str,
        keep_default_na=False,
    )


def _jsonl(path: Path, spec: ReadSpec) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(_lines(path, spec), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{number}: not a JSON line: {exc.msg}", hint="fix that line (one JSON object per line)"
                ) from None
    return _records(rows, spec, path)


def _json(path: Path, spec: ReadSpec) -> pd.DataFrame:
    try:
        rows = json.loads(_text(path, spec))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}", hint="fix the JSON there") from None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected a JSON list of rows", hint="use format jsonl for one object per line")
    return _records(rows, spec, path)


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
    try:
        return pd.read_parquet(path)
    except (TypeError, KeyError) as exc:  # a damaged pandas schema in the file's metadata
        raise ValueError(f"damaged metadata ({exc})") from None


def _text_folder(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """`<path>/<label>/<file>.txt`: one example per file."""
    files = sorted(p for p in path.glob("*/*.txt") if p.is_file())
    if not files:
        raise DataError(
            f"{path}: no <label>/<name>.txt files", hint="text_folder reads one folder per label of .txt files"
        )
    return pd.DataFrame(
        {
            "text": [_text(p, spec) for p in files],
            "label": [p.parent.name for p in files],
            "file": [p.relative_to(path).as_posix() for p in files],
        }
    )


def _conll(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """`token<TAB>tag` lines, a blank line between sentences."""
    sentences: list[tuple[list[str], list[str]]] = [([], [])]
    for number, line in enumerate(_lines(path, spec), 1):
        if not line.strip():
            if sentences[-1][0]:
                sentences.append(([], []))
            continue
        fields = line.split(spec.sep if spec.sep != "," else "\t")
        if len(fields) < 2:
            raise DataError(
                f"{path}:{number}: expected 'token<TAB>tag', got {line!r}",
                hint="give every token line a tag (read.sep sets the separator); sentences end at a blank line",
            )
        sentences[-1][0].append(fields[0])
        sentences[-1][1].append(fields[-1])
    sentences = [s for s in sentences if s[0]]
    return pd.DataFrame({"tokens": [s[0] for s in sentences], "tags": [s[1] for s in sentences]})


def _regex(path: Path, spec: ReadSpec) -> pd.DataFrame:
    """One example per non-empty line, columns from the pattern's named groups."""
    pattern = re.compile(spec.pattern or "")
    rows, bad = [], []
    for number, line in enumerate(_lines(path, spec), 1):
        if not line.strip():
            continue
        match = pattern.fullmatch(line)
        if match is None:
            bad.append(f"{number}: {line[:60]!r}")
        else:
            rows.append(match.groupdict())
    if bad:
        raise DataError(
            f"{path}: {len(bad)} lines do not match read.pattern, e.g. " + "; ".join(bad[:5]),
            hint="fix the lines or the pattern",
        )
    return pd.DataFrame(rows, columns=list(pattern.groupindex))


READERS: dict[str, Reader] = {
    "csv": _csv,
    "jsonl": _jsonl,
    "json": _json,
    "parquet": _parquet,
    "text_folder": _text_folder,
    "conll": _conll,
    "regex": _regex,
}
