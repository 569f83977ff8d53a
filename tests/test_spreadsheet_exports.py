"""Files a person exports from a spreadsheet or another tool are read without loss (UTF-8 with BOM,
CRLF, quoted fields holding newlines, extra or reordered columns, non-Latin text), and prepare's
summary accounts for every input row: kept in a split, or dropped with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import write_project

from unitask.config import SPLITS, load_config
from unitask.data.fetch import fetch
from unitask.data.prepare import prepare_task

TEXTS = [
    "plain ascii text",
    "a cell with, a comma",
    'a cell with "quotes" inside',
    "two lines\r\nin one cell",  # Excel writes CRLF inside a quoted cell too
    "東京は日本の首都です",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "emoji 🙂 and accents: café, naïve, Øre",
    "a line separator\u2028inside",
    "ends with spaces   ",
]


def _cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def _prepare(root: Path, task: dict, **prepare: object) -> tuple[dict, pd.DataFrame]:
    fractions = {"validation_fraction": 0.2, "test_fraction": 0.2}
    cfg = load_config(write_project(root, {"t": task}, prepare={**fractions, **prepare}))
    fetch(cfg, ["t"])
    summary = prepare_task(cfg, "t")
    folder = cfg.path(cfg.paths.prepared) / "t"
    return summary, pd.concat([pd.read_parquet(folder / f"{s}.parquet") for s in SPLITS], ignore_index=True)


def test_an_excel_csv_export_is_read_without_loss(tmp_path: Path) -> None:
    """Excel's 'CSV UTF-8': a BOM, CRLF rows, quoted cells; the columns reordered with extras around."""
    rows = [(f"{text} #{i}", f"id{i}", f"note {i}", ["neg", "pos"][i % 2]) for i, text in enumerate(TEXTS * 2)]
    lines = ["text,Sheet ID,Notes,label"] + [",".join(_cell(c) for c in row) for row in rows]
    (tmp_path / "export.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    task = {"type": "classification", "source": {"kind": "local", "path": "export.csv"}, "read": {"format": "csv"},
            "columns": {"text": "text", "label": "label"}, "labels": ["neg", "pos"]}  # fmt: skip
    summary, prepared = _prepare(tmp_path, task)
    assert sorted(prepared["text"]) == sorted(text for text, *_ in rows)  # byte for byte, newlines kept
    assert dict(zip(prepared["text"], prepared["label"])) == {text: label for text, *_, label in rows}
    assert summary["input_rows"] == len(rows) and sum(summary["rows"].values()) == len(rows)


def test_jsonl_and_regex_exports_with_bom_and_crlf(tmp_path: Path) -> None:
    """A BOM and CRLF line ends in line-based formats; U+2028 inside a JSON string or a line is text,
    not a line break."""
    texts = [f"{text} #{i}".replace("\r\n", " ") for i, text in enumerate(TEXTS * 2)]
    labels = [["neg", "pos"][i % 2] for i in range(len(texts))]
    records = [{"extra": i, "stars": label, "review": text} for i, (text, label) in enumerate(zip(texts, labels))]
    formats = {
        "jsonl": ("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records), {"format": "jsonl"},
                  {"text": "review", "label": "stars"}),
        "regex": ("\r\n".join(f"{label}\t{text}" for text, label in zip(texts, labels)),
                  {"format": "regex", "pattern": r"(?P<label>\w+)\t(?P<text>.+)"}, {"text": "text", "label": "label"}),
    }  # fmt: skip
    for fmt, (content, read, columns) in formats.items():
        root = tmp_path / fmt
        root.mkdir()
        (root / "export.txt").write_bytes(b"\xef\xbb\xbf" + (content + "\r\n").encode("utf-8"))
        task = {"type": "classification", "source": {"kind": "local", "path": "export.txt"}, "read": read,
                "columns": columns, "labels": ["neg", "pos"]}  # fmt: skip
        summary, prepared = _prepare(root, task)
        assert dict(zip(prepared["text"], prepared["label"])) == dict(zip(texts, labels)), fmt
        assert summary["input_rows"] == len(texts) == sum(summary["rows"].values()), fmt


def test_every_input_row_is_kept_or_dropped_with_its_reason(tmp_path: Path) -> None:
    """20 distinct rows, 3 with an empty text (dropped with prepare.drop_blank), 4 repeats of earlier
    rows, a cap of 15 rows."""
    texts = [f"row number {i}" for i in range(20)] + ["", "   ", ""] + ["row number 1", "row number 2"] * 2
    labels = [["neg", "pos"][i % 2] for i in range(20)] + ["neg", "pos", "neg"] + ["pos", "neg"] * 2
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "raw.csv", index=False)
    task = {"type": "classification", "source": {"kind": "local", "path": "raw.csv"}, "read": {"format": "csv"},
            "columns": {"text": "text", "label": "label"}, "labels": ["neg", "pos"], "max_rows": 15}  # fmt: skip
    summary, prepared = _prepare(tmp_path, task, drop_blank=True)
    assert summary["input_rows"] == 27
    assert summary["dropped"] == {"empty": 3, "duplicate": 4, "capped": 5}
    assert sum(summary["rows"].values()) == len(prepared) == 15
    assert sum(summary["rows"].values()) + sum(summary["dropped"].values()) == summary["input_rows"]
