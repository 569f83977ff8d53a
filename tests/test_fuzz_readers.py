"""Malformed data cannot crash the readers: property-based fuzzing (hypothesis) of `data fetch`,
`prepare` and `validate`'s reader over every `read.format`.

Each example copies a project whose valid raw file is already fetched and prepared, mutates the
source (bytes, encodings, quoting, headers, rows per label; for Parquet also cell types), then runs
fetch, prepare and validate's split loader in this process. Every input must end in success or in a
`UnitaskError` with a `fix:` line (what the CLI prints and exits non-zero on), never another
exception; a stage that fails leaves what was written before byte for byte. Some inputs are the seed
with one class of wrong data (a column named twice, NUL characters in a text, blank or null text,
too few rows to split): prepare must refuse each with exit code 2, and a success must hold none of
them (no blank row dropped, no NUL in a prepared split, no split below the minimum). `test_cli_*`
runs a few mutated inputs through the real CLI. CI runs `FUZZ_EXAMPLES` (default 40) examples per
format; set UNITASK_FUZZ_EXAMPLES=2000 for a long run (the count of inputs tried is printed with `-s`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_project
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unitask.config import SPLITS, Prepare, load_config
from unitask.data.fetch import fetch
from unitask.data.prepare import prepare_task
from unitask.errors import RefusedData, UnitaskError
from unitask.validation.load import load_split

FUZZ_EXAMPLES = int(os.environ.get("UNITASK_FUZZ_EXAMPLES", "40"))
TRIED: Counter[str] = Counter()  # inputs tried per format, printed at the end of the module
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (format, 'ok' or the refusing stage, + the kind of wrong data)

# ---- one valid seed project per read format ---------------------------------------------------

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "ok", "nice", "meh", "wow", "sad", "glad"]


def _sentence(i: int) -> str:
    return f"{WORDS[i % 12]} thing number {i} {WORDS[(i * 7) % 12]}"


def _csv_rows(n: int = 24) -> str:
    lines = ["text,label,note"]
    for i in range(n):
        text = f'"{_sentence(i)}, quoted ""{i}"""' if i % 5 == 0 else _sentence(i)
        lines.append(f"{text},{['neg', 'pos'][i % 2]},n{i}")
    return "\n".join(lines) + "\n"


def _jsonl_rows(n: int = 24) -> str:
    return "".join(json.dumps({"text": _sentence(i), "score": i % 5 + 0.5}) + "\n" for i in range(n))


def _qa_rows(n: int = 24) -> str:
    rows = []
    for i in range(n):
        context = f"{_sentence(i)} and the answer is {WORDS[i % 12]}{i}"
        answer = f"{WORDS[i % 12]}{i}"
        rows.append({"q": f"what is {i}?", "c": context, "a": {"text": [answer], "answer_start": [context.index(answer)]}})
    return json.dumps(rows, indent=1)


def _conll_rows(n: int = 24) -> str:
    sentences = []
    for i in range(n):
        sentences.append(f"{['alice', 'paris'][i % 2]}\t{['B-per', 'B-loc'][i % 2]}\nwent\tO\nhome{i}\tO\n")
    return "\n".join(sentences)


def _regex_rows(n: int = 24) -> str:
    return "".join(f"{['neg', 'pos'][i % 2]}\t{_sentence(i)}\n" for i in range(n))


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


CLASSIFICATION = {"type": "classification", "columns": {"text": "text", "label": "label"}, "labels": ["neg", "pos"]}
SEEDS: dict[str, dict[str, Any]] = {
    "csv": {"task": {**CLASSIFICATION, "read": {"format": "csv"}}, "file": "raw.csv", "data": _csv_rows().encode()},
    "jsonl": {
        "task": {"type": "regression", "read": {"format": "jsonl"}, "columns": {"text": "text", "label": "score"}},
        "file": "raw.jsonl", "data": _jsonl_rows().encode(),
    },
    "json": {
        "task": {"type": "extractive_qa", "read": {"format": "json"},
                 "columns": {"question": "q", "context": "c", "answers": "a"}},
        "file": "raw.json", "data": _qa_rows().encode(),
    },
    "parquet": {
        "task": {**CLASSIFICATION, "read": {"format": "parquet"}}, "file": "raw.parquet",
        "data": _parquet_bytes(pd.DataFrame({"text": [_sentence(i) for i in range(24)], "label": ["neg", "pos"] * 12})),
    },
    "conll": {
        "task": {"type": "token_classification", "read": {"format": "conll"}, "columns": {"tokens": "tokens", "tags": "tags"},
                 "labels": ["O", "B-per", "B-loc"]},
        "file": "raw.conll", "data": _conll_rows().encode(),
    },
    "regex": {
        "task": {**CLASSIFICATION, "read": {"format": "regex", "pattern": r"(?P<label>\w+)\t(?P<text>.+)"}},
        "file": "raw.txt", "data": _regex_rows().encode(),
    },
    "text_folder": {"task": {**CLASSIFICATION, "read": {"format": "text_folder"}}, "file": "raw_folder", "data": None},
}  # fmt: skip


def write_source(root: Path, fmt: str, data: bytes | dict[str, bytes] | None = None) -> Path:
    """The seed's raw source under `root/sources/` (a folder of files for text_folder)."""
    seed = SEEDS[fmt]
    path = root / "sources" / seed["file"]
    if fmt == "text_folder":
        files = data if data is not None else {f"{['neg', 'pos'][i % 2]}/{i}.txt": _sentence(i).encode() for i in range(24)}
        shutil.rmtree(path, ignore_errors=True)
        for rel, content in files.items():
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_bytes(content)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(seed["data"] if data is None else data)
    return path


def seed_project(root: Path, fmt: str) -> Path:
    seed = SEEDS[fmt]
    task = {**seed["task"], "source": {"kind": "local", "path": f"sources/{seed['file']}"}}
    write_source(root, fmt)
    return write_project(root, {"t": task}, prepare={"validation_fraction": 0.2, "test_fraction": 0.2})


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per format, a project with its valid source fetched and prepared (the outputs a bad input must not touch)."""
    out = {}
    for fmt in SEEDS:
        root = tmp_path_factory.mktemp(f"seed-{fmt}")
        cfg = load_config(seed_project(root, fmt))
        fetch(cfg, ["t"])
        prepare_task(cfg, "t")
        out[fmt] = root
    yield out
    print(f"\nfuzz: inputs tried per format {dict(TRIED)}, {sum(TRIED.values())} in all")
    print("fuzz: outcomes", {f"{fmt}/{outcome}": n for (fmt, outcome), n in sorted(OUTCOMES.items())})


# ---- mutations --------------------------------------------------------------------------------

SPECIAL = [b'"', b"'", b",", b"\t", b"\n", b"\r\n", b"\r", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"{", b"}", b"[", b"]",
           b"\\", "é".encode(), "\u2028".encode(), "日本語".encode(), "\x85".encode(), b"null", b"NaN", b"-inf", b"1e999",
           b'""', b",,,", b"\x1c", b"\x0b"]  # fmt: skip
CODECS = ["latin-1", "cp1252", "utf-16", "utf-32", "utf-8-sig", "shift_jis"]
position = st.floats(min_value=0, max_value=1)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 255)),
    st.tuples(st.just("insert"), position, st.one_of(st.sampled_from(SPECIAL), st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("duplicate_line"), position),
    st.tuples(st.just("drop_line"), position),
    st.tuples(st.just("swap_lines"), position, position),
    st.tuples(st.just("reencode"), st.sampled_from(CODECS)),
    st.tuples(st.just("crlf")),
    st.tuples(st.just("drop_label"), st.sampled_from(["neg", "pos", "B-per", "B-loc", "good", "0.5"])),
    st.tuples(st.just("header"), st.sampled_from([b"label,text", b"text,label,extra,more", b"text", b"", b"text,text,label",
                                                  b"TEXT,LABEL", b'"text","label"', b"text;label", b"\xef\xbb\xbftext,label"])),
)  # fmt: skip


def _at(data: bytes, where: float) -> int:
    return min(int(where * len(data)), len(data))


def mutate(data: bytes, mutation: tuple) -> bytes:
    op, *args = mutation
    lines = data.split(b"\n")
    if op == "flip" and data:
        i = min(_at(data, args[0]), len(data) - 1)
        return data[:i] + bytes([args[1]]) + data[i + 1 :]
    if op == "insert":
        i = _at(data, args[0])
        return data[:i] + args[1] + data[i:]
    if op == "delete":
        i = _at(data, args[0])
        return data[:i] + data[i + args[1] :]
    if op == "truncate":
        return data[: _at(data, args[0])]
    if op in ("duplicate_line", "drop_line") and lines:
        i = min(int(args[0] * len(lines)), len(lines) - 1)
        return b"\n".join(lines[: i + 1] + lines[i:] if op == "duplicate_line" else lines[:i] + lines[i + 1 :])
    if op == "swap_lines" and lines:
        i, j = (min(int(a * len(lines)), len(lines) - 1) for a in args)
        lines[i], lines[j] = lines[j], lines[i]
        return b"\n".join(lines)
    if op == "reencode":
        return data.decode("utf-8", errors="replace").encode(args[0], errors="replace")
    if op == "crlf":
        return data.replace(b"\n", b"\r\n")
    if op == "drop_label":
        return b"\n".join(line for line in lines if args[0].encode() not in line)
    if op == "header":
        return b"\n".join([args[0], *lines[1:]])
    return data


CELL = st.one_of(
    st.text(max_size=12), st.none(), st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(),
    st.sampled_from(["neg", "pos", "", " "]), st.lists(st.sampled_from(["neg", "pos"]), max_size=2),
)  # fmt: skip


@st.composite
def parquet_tables(draw: Callable[..., Any]) -> bytes:
    """A Parquet file whose cells may have any type, with columns that may be missing, extra or renamed."""
    n = draw(st.integers(0, 30))
    columns = draw(st.lists(st.sampled_from(["text", "label", "extra", "Text"]), min_size=1, max_size=4, unique=True))
    values = {c: [draw(CELL) if draw(st.booleans()) else (_sentence(i) if c != "label" else ["neg", "pos"][i % 2])
                  for i in range(n)] for c in columns}  # fmt: skip
    try:
        return _parquet_bytes(pd.DataFrame(values))
    except Exception:  # pyarrow refuses to write some mixed columns: that file cannot exist
        return _parquet_bytes(pd.DataFrame({c: [str(v) for v in vs] for c, vs in values.items()}))


@st.composite
def folder_files(draw: Callable[..., Any]) -> dict[str, bytes]:
    """text_folder contents: the seed's files with some mutated, removed, emptied or moved to a new label."""
    files = {f"{['neg', 'pos'][i % 2]}/{i}.txt": _sentence(i).encode() for i in range(24)}
    for _ in range(draw(st.integers(1, 4))):
        rel = draw(st.sampled_from(sorted(files) or ["neg/0.txt"]))
        op = draw(st.sampled_from(["mutate", "remove", "empty", "new_label", "drop_label"]))
        if op == "mutate" and rel in files:
            files[rel] = mutate(files[rel], draw(MUTATION))
        elif op == "remove":
            files.pop(rel, None)
        elif op == "empty":
            files[rel] = b""
        elif op == "new_label":
            files[f"{draw(st.sampled_from(['other', 'é', 'neg pos']))}/{len(files)}.txt"] = b"new"
        else:
            files = {k: v for k, v in files.items() if not k.startswith(rel.split("/")[0] + "/")}
    return files


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(["neg", "pos", "O"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["text", "answer_start", "x"]), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@st.composite
def json_records(draw: Callable[..., Any], fmt: str) -> bytes:
    """The seed's records with some fields set to JSON values of any type, removed or added."""
    data = SEEDS[fmt]["data"].decode()
    records = [json.loads(line) for line in data.splitlines()] if fmt == "jsonl" else json.loads(data)
    for _ in range(draw(st.integers(1, 4))):
        record = records[draw(st.integers(0, len(records) - 1))]
        key = draw(st.sampled_from([*record, "extra"]))
        if draw(st.booleans()) and key in record:
            del record[key]
        else:
            record[key] = draw(JSON_VALUE)
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    return json.dumps(records).encode()


@st.composite
def csv_cells(draw: Callable[..., Any]) -> bytes:
    """The seed CSV with some cells replaced by awkward text (quotes, separators, newlines, labels)."""
    table = pd.read_csv(io.StringIO(_csv_rows()), dtype=str, keep_default_na=False)
    for _ in range(draw(st.integers(1, 6))):
        row, column = draw(st.integers(0, len(table) - 1)), draw(st.sampled_from(list(table.columns)))
        table.loc[row, column] = draw(st.text(max_size=10) | st.sampled_from(["", "neg", "pos", '"', "a,b", "x\ny", "NA"]))
    return table.to_csv(index=False, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).encode()


@dataclass(frozen=True)
class Wrong:
    """The seed with one class of wrong data (`kind`): prepare must refuse it with exit code 2, unless
    the format cannot hold the class (`refused` false: it must succeed)."""

    kind: str
    data: Any
    refused: bool = True


# the classes each format can hold: a column named twice needs a header or object keys; in CoNLL a
# whitespace-only line ends a sentence, so "blank" there is no wrong data
WRONG_KINDS = {
    "csv": ("column twice", "NUL", "blank", "few rows"), "jsonl": ("column twice", "NUL", "blank", "few rows"),
    "json": ("column twice", "NUL", "blank", "few rows"), "parquet": ("column twice", "NUL", "blank", "few rows"),
    "conll": ("NUL", "blank", "few rows"), "regex": ("NUL", "blank", "few rows"), "text_folder": ("NUL", "blank", "few rows"),
}  # fmt: skip
TEXT_KEY = {"csv": "text", "jsonl": "text", "json": "q", "parquet": "text", "conll": "tokens", "regex": "text",
            "text_folder": "text"}  # fmt: skip
BLANKS = {  # blank values of the text field ("" ends a regex line too early; JSON and Parquet hold nulls)
    fmt: [" ", "\t", "   "] + ([""] if fmt != "regex" else []) + ([None] if fmt in ("jsonl", "json", "parquet") else [])
    for fmt in WRONG_KINDS
}


def seed_records(fmt: str, n: int) -> list[dict[str, Any]]:
    """The first `n` rows of the seed of `fmt`, as records of the fields its file holds."""
    if fmt == "csv":
        return pd.read_csv(io.StringIO(_csv_rows(n)), dtype=str, keep_default_na=False).to_dict("records")
    if fmt == "jsonl":
        return [json.loads(line) for line in _jsonl_rows(n).splitlines()]
    if fmt == "json":
        return json.loads(_qa_rows(n))
    if fmt == "conll":
        return [{"tokens": [["alice", "paris"][i % 2], "went", f"home{i}"], "tags": [["B-per", "B-loc"][i % 2], "O", "O"]}
                for i in range(n)]  # fmt: skip
    return [{"text": _sentence(i), "label": ["neg", "pos"][i % 2]} for i in range(n)]  # parquet, regex, text_folder


def write_records(fmt: str, records: list[dict[str, Any]], twice: str | None = None) -> Any:
    """`records` as the bytes (text_folder: files) of `fmt`; `twice`: a field written again as a second
    column of that name (csv, parquet) or a second key of the first object (jsonl, json)."""
    if fmt in ("csv", "parquet"):
        names = list(records[0]) + ([twice] if twice else [])
        rows = [[r[c] for c in names] for r in records]
        if fmt == "csv":
            return pd.DataFrame(rows, columns=names).to_csv(index=False).encode()
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_arrays([pa.array(list(c)) for c in zip(*rows)], names=names), buffer)
        return buffer.getvalue()
    if fmt in ("jsonl", "json"):
        objects = [json.dumps(r) for r in records]
        if twice:
            objects[0] = objects[0][:-1] + f", {json.dumps(twice)}: {json.dumps(records[0][twice])}}}"
        return ("".join(o + "\n" for o in objects) if fmt == "jsonl" else "[" + ",\n".join(objects) + "]").encode()
    if fmt == "conll":
        return "\n".join("".join(f"{t}\t{g}\n" for t, g in zip(r["tokens"], r["tags"])) for r in records).encode()
    if fmt == "regex":
        return "".join(f"{r['label']}\t{r['text']}\n" for r in records).encode()
    return {f"{r['label']}/{i}.txt": r["text"].encode() for i, r in enumerate(records)}  # text_folder


def wrong_data(fmt: str, kind: str, rows: int = 24, row: int = 0, at: int = 0, blank: str | None = " ") -> Wrong:
    """The first `rows` rows of the seed of `fmt` with wrong data of `kind`: in `row`, a NUL at character
    `at` or the text `blank`; or the field number `at` named twice (CoNLL: `blank` as line number `at`)."""
    records = seed_records(fmt, rows)
    record, key = records[row % rows], TEXT_KEY[fmt]
    if kind == "column twice":
        return Wrong(kind, write_records(fmt, records, twice=list(record)[at % len(record)]))
    if kind == "NUL" and fmt == "conll":
        record[key][at % 3] += "\x00"
    elif kind == "NUL":
        at %= len(record[key]) + 1
        record[key] = record[key][:at] + "\x00" + record[key][at:]
    elif kind == "blank" and fmt != "conll":
        record[key] = blank
    data = write_records(fmt, records)
    if kind == "blank" and fmt == "conll":  # a whitespace-only line: a sentence break, no blank row
        lines = data.split(b"\n")
        at %= len(lines) + 1
        return Wrong(kind, b"\n".join([*lines[:at], str(blank).encode(), *lines[at:]]), refused=False)
    return Wrong(kind, data)


@st.composite
def wrong_inputs(draw: Callable[..., Any], fmt: str) -> Wrong:
    """The seed of `fmt` with one class of wrong data, in a drawn row, column or character."""
    kind = draw(st.sampled_from(WRONG_KINDS[fmt]))
    rows = draw(st.integers(2, 5)) if kind == "few rows" else 24
    at, blank = draw(st.integers(0, 80)), draw(st.sampled_from(BLANKS[fmt]))
    return wrong_data(fmt, kind, rows, row=draw(st.integers(0, rows - 1)), at=at, blank=blank)


def source_inputs(fmt: str) -> st.SearchStrategy[Any]:
    wrong = wrong_inputs(fmt)
    if fmt == "text_folder":
        return st.one_of(folder_files(), wrong)
    mutated = st.lists(MUTATION, min_size=1, max_size=4).map(lambda ms: _apply(SEEDS[fmt]["data"], ms))
    structured = {"parquet": parquet_tables(), "json": json_records("json"), "jsonl": json_records("jsonl"), "csv": csv_cells()}
    return st.one_of(mutated, structured[fmt], wrong) if fmt in structured else st.one_of(mutated, wrong)


def _apply(data: bytes, mutations: list[tuple]) -> bytes:
    for mutation in mutations:
        data = mutate(data, mutation)
    return data


# ---- the property -----------------------------------------------------------------------------


def snapshot(root: Path, *folders: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()}


def accounted(summary: dict[str, Any]) -> None:
    """Every raw row is kept in a split or dropped with a reason; none was dropped as blank (that needs
    prepare.drop_blank), and no split is below prepare's minimum."""
    assert sum(summary["rows"].values()) + sum(summary["dropped"].values()) == summary["input_rows"], summary
    assert summary["dropped"]["empty"] == 0 and min(summary["rows"].values()) >= Prepare().min_rows_per_split, summary


def without_nul(split: pd.DataFrame) -> None:
    """No value of a prepared split holds a NUL character."""

    def nul(value: Any) -> bool:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, (list, tuple, np.ndarray)):
            return any(nul(v) for v in value)
        return isinstance(value, str) and "\x00" in value

    assert not split.map(nul).any().any(), split


def run_stages(root: Path) -> tuple[str, UnitaskError | None]:
    """Fetch, prepare and load every split of task `t` in `root`: ('ok', None), or the stage that
    refused the input and its error. Fails the test on any exception other than a UnitaskError with
    a `fix:` line, or on a refusing stage that changed what was written before."""
    cfg = load_config(root / "params.yaml")
    stages: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
        ("fetch", lambda: fetch(cfg, ["t"], force=True), ("data/raw",)),
        ("prepare", lambda: accounted(prepare_task(cfg, "t")), ("data/prepared", "reports")),
        ("validate", lambda: [without_nul(load_split(cfg, "t", cfg.tasks["t"], s)) for s in SPLITS], ("data/prepared", "reports")),
    ]  # fmt: skip
    for stage, call, outputs in stages:
        before = snapshot(root, *outputs)
        try:
            call()
        except UnitaskError as exc:
            assert "\n  fix: " in str(exc), f"{stage}: an error without a fix: line: {exc}"
            assert snapshot(root, *outputs) == before, f"{stage} failed and changed earlier outputs"
            return stage, exc
    return "ok", None


def check_input(templates: dict[str, Path], tmp: Path, fmt: str, data: Any) -> str:
    """Run the stages on `data` as the source of `fmt`'s project; the outcome ('ok' or the refusing
    stage). Wrong data must be refused by prepare with exit code 2 (or pass where it cannot apply)."""
    TRIED[fmt] += 1
    root = tmp / f"{fmt}-{TRIED[fmt]}"
    shutil.copytree(templates[fmt], root)
    write_source(root, fmt, data.data if isinstance(data, Wrong) else data)
    try:
        outcome, error = run_stages(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    OUTCOMES[fmt, f"{outcome} ({data.kind})" if isinstance(data, Wrong) else outcome] += 1
    if isinstance(data, Wrong) and data.refused:
        refused = outcome == "prepare" and isinstance(error, RefusedData) and error.exit_code == 2
        assert refused, f"{data.kind}: {outcome}: {error}"
    elif isinstance(data, Wrong):
        assert outcome == "ok", f"{data.kind} cannot apply to {fmt}, yet: {error}"
    return outcome


FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # a shared, busy machine: time per example varies
    database=None,
    derandomize=FUZZ_EXAMPLES <= 100,  # CI: the same inputs every run; a long run explores
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("fmt", list(SEEDS))
def test_malformed_sources_end_in_success_or_a_clear_error(templates: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    @FUZZ
    @given(data=source_inputs(fmt))
    def fuzz(data: Any) -> None:
        check_input(templates, tmp_path, fmt, data)

    fuzz()


@pytest.mark.parametrize(("fmt", "kind"), [(fmt, kind) for fmt, kinds in WRONG_KINDS.items() for kind in kinds])
def test_each_class_of_wrong_data_is_refused_with_exit_2(
    templates: dict[str, Path], tmp_path: Path, fmt: str, kind: str
) -> None:
    """Every class of wrong data in every format that can hold it, whatever the fuzzer happened to draw."""
    check_input(templates, tmp_path, fmt, wrong_data(fmt, kind, rows=3 if kind == "few rows" else 24, row=1, at=2))


def check_prepared(templates: dict[str, Path], tmp: Path, fmt: str, mutations: list[tuple]) -> None:
    """validate's reader on the csv seed's prepared train split, damaged by `mutations` after prepare
    (Parquet, or the CSV a person may write by hand)."""
    TRIED[f"prepared-{fmt}"] += 1
    root = tmp / f"prepared-{TRIED[f'prepared-{fmt}']}"
    shutil.copytree(templates["csv"], root)
    folder = root / "data" / "prepared" / "t"
    train = pd.read_parquet(folder / "train.parquet")
    seed = _parquet_bytes(train) if fmt == "parquet" else train.to_csv(index=False).encode()
    (folder / "train.parquet").unlink()
    (folder / f"train.{fmt}").write_bytes(_apply(seed, mutations))
    cfg = load_config(root / "params.yaml")
    try:
        load_split(cfg, "t", cfg.tasks["t"], "train")
    except UnitaskError as exc:
        assert "\n  fix: " in str(exc), f"an error without a fix: line: {exc}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_malformed_prepared_splits_end_in_a_clear_error(templates: dict[str, Path], tmp_path: Path, fmt: str) -> None:
    @FUZZ
    @given(mutations=st.lists(MUTATION, min_size=1, max_size=4))
    def fuzz(mutations: list[tuple]) -> None:
        check_prepared(templates, tmp_path, fmt, mutations)

    fuzz()


# the crashes that long runs found (then fixed), kept as fixed cases
FOUND = {
    "jsonl line 'null'": ("source", "jsonl", [("insert", 1.0, b"null")]),
    "jsonl line holding a list": ("source", "jsonl", [("insert", 0.0, b"[1, 2]\n")]),
    "json list holding a number": ("source", "json", [("insert", 2.0 / len(SEEDS["json"]["data"]), b"3,")]),
    "text cell holding a list (jsonl)": ("bytes", "jsonl", b'{"text": [], "score": 0.5}\n' + SEEDS["jsonl"]["data"]),
    "answers as a bad JSON string": ("bytes", "json", b'[{"q": "a?", "c": "a b", "a": "{not json"}]'),
    "infinite regression target": ("bytes", "jsonl", SEEDS["jsonl"]["data"] + b'{"text": "x", "score": Infinity}\n'),
    "prepared csv with a bad id": ("prepared", "csv", [("duplicate_line", 0.0)]),
    "parquet pandas metadata: bad JSON": ("prepared", "parquet", [("flip", 0.705078125, 48)]),
    "parquet pandas metadata: bad dtype": ("prepared", "parquet", [("flip", 0.70703125, 48)]),
    "parquet pandas metadata: bad UTF-8": ("prepared", "parquet", [("flip", 0.75, 47)]),
}


@pytest.mark.parametrize("case", FOUND, ids=list(FOUND))
def test_crashes_found_by_fuzzing_stay_fixed(templates: dict[str, Path], tmp_path: Path, case: str) -> None:
    kind, fmt, data = FOUND[case]
    if kind == "prepared":
        check_prepared(templates, tmp_path, fmt, data)
    else:
        assert check_input(templates, tmp_path, fmt, _apply(SEEDS[fmt]["data"], data) if kind == "source" else data) != "ok"


# ---- a few inputs through the real CLI: exit 0, or non-zero with a fix: line and no traceback ------

CLI_CASES = {
    "csv in utf-16": ("csv", _csv_rows().encode("utf-16")),
    "jsonl with a broken line": ("jsonl", _jsonl_rows().encode() + b'{"text": "x", "score": \n'),
}


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unitask.cli", *argv], capture_output=True, text=True)


@pytest.mark.parametrize("case", CLI_CASES, ids=list(CLI_CASES))
def test_cli_prepare_refuses_malformed_data_cleanly(templates: dict[str, Path], tmp_path: Path, case: str) -> None:
    fmt, data = CLI_CASES[case]
    root = tmp_path / "project"
    shutil.copytree(templates[fmt], root)
    write_source(root, fmt, data)
    fetch(load_config(root / "params.yaml"), ["t"], force=True)
    before = snapshot(root, "data/prepared", "reports")
    prepared = _cli("prepare", "--params", str(root / "params.yaml"))
    assert prepared.returncode in (1, 2)
    assert "fix:" in prepared.stderr and "Traceback" not in prepared.stderr
    assert snapshot(root, "data/prepared", "reports") == before


def test_cli_validate_refuses_a_damaged_split_cleanly(templates: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(templates["csv"], root)
    train = root / "data" / "prepared" / "t" / "train.parquet"
    train.write_bytes(train.read_bytes()[:-200])
    validated = _cli("validate", "--params", str(root / "params.yaml"))
    assert validated.returncode == 1
    assert "not a readable Parquet file" in validated.stderr and "fix:" in validated.stderr
    assert "Traceback" not in validated.stderr
