"""`unitask task add FILE`: a declaration proposed from the file, written into params.yaml with its
comments kept, fetched, prepared and validated; it trains through `unitask finetune`. A file that
leaves a choice open, or cannot be read, stops with the question or the reader's error, and
params.yaml is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from conftest import keyword_rows
from test_kubeflow import tiny_project
from unitask.cli import main

COMMENT = "# the project's own comment, kept by `task add`\n"


def project(root: Path) -> Path:
    params = tiny_project(root, {"base": keyword_rows(40)}, pretrain={"enabled": False})
    params.write_text(COMMENT + params.read_text())
    return params


def sentence(i: int) -> list[tuple[str, str]]:
    city = ["Paris", "Oslo", "Lima", "Rome"][i % 4]
    return [("we", "O"), ("flew", "O"), ("to", "O"), (city, "B-LOC"), ("on", "O"), (f"day{i}", "O")]


def write_files(folder: Path) -> dict[str, tuple[str, str]]:
    """{file name: (its expected type, its label role)} of one file of each supported shape."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = keyword_rows(60)
    pd.DataFrame(rows).to_csv(folder / "plain.csv", index=False)
    pd.DataFrame(rows).to_parquet(folder / "columnar.parquet")
    pairs = [{"premise": r["text"] + " today", "hypothesis": f"it was {'good' if r['label'] == 'pos' else 'bad'} then",
              "label": r["label"]} for r in rows]  # fmt: skip
    pd.DataFrame(pairs).to_csv(folder / "pairs.tsv", sep="\t", index=False)
    scores = [{"text": r["text"] + f" case {i}", "score": (1.0 if r["label"] == "pos" else 0.0) + i / 1000} for i, r in enumerate(rows)]
    (folder / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    (folder / "places.conll").write_text("\n".join("\n".join(f"{t}\t{g}" for t, g in sentence(i)) + "\n" for i in range(60)))
    return {"plain.csv": ("classification", "label"), "columnar.parquet": ("classification", "label"),
            "pairs.tsv": ("pair_classification", "label"), "scores.jsonl": ("regression", "label"),
            "places.conll": ("token_classification", "tags")}  # fmt: skip


@pytest.mark.slow
def test_each_shape_is_declared_and_trains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = project(tmp_path)
    for name, (kind, label_role) in write_files(tmp_path / "data" / "mine").items():
        assert main(["task", "add", str(tmp_path / "data" / "mine" / name), "--params", str(params)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        task = Path(name).stem
        assert f"wrote tasks.{task}" in out and "validate\tpassed" in out and f"unitask finetune --task {task}" in out
        declared: dict[str, Any] = yaml.safe_load(params.read_text())["tasks"][task]
        assert declared["type"] == kind and label_role in declared["columns"], declared
        assert main(["finetune", "--task", task, "--params", str(params)]) == 0, capsys.readouterr().err
        report = json.loads((tmp_path / "reports" / "finetune" / f"{task}.json").read_text())
        assert report["type"] == kind and report["train"]["steps"] > 0
    assert params.read_text().startswith(COMMENT)  # comments kept
    declared = yaml.safe_load(params.read_text())["tasks"]
    assert declared["pairs"]["columns"] == {"text": "premise", "text_pair": "hypothesis", "label": "label"}
    assert declared["pairs"]["read"] == {"format": "csv", "sep": "\t"} and declared["plain"]["labels"] == ["neg", "pos"]
    assert declared["places"]["labels"] == ["B-LOC", "O"] and "labels" not in declared["scores"]


def test_an_ambiguous_or_unreadable_file_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = project(tmp_path)
    before = params.read_bytes()
    folder = tmp_path / "data"
    rows = [{**r, "mood": r["label"], "source": ["web", "mail"][i % 2]} for i, r in enumerate(keyword_rows(40))]
    pd.DataFrame(rows).to_csv(folder / "two_labels.csv", index=False)
    assert main(["task", "add", str(folder / "two_labels.csv"), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "which column is the label? candidates: 'label', 'mood', 'source'" in err and "fix: pass --label COLUMN" in err
    assert params.read_bytes() == before

    (folder / "broken.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "broken\n')
    assert main(["task", "add", str(folder / "broken.jsonl"), "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "broken.jsonl:2: not a JSON line" in err and "fix:" in err
    (folder / "notes.docx").write_text("x")
    assert main(["task", "add", str(folder / "notes.docx"), "--params", str(params)]) == 2
    assert "cannot tell the format from the suffix '.docx'" in capsys.readouterr().err
    assert params.read_bytes() == before and not list(tmp_path.glob(".params.yaml*"))

    # the flag answers the question
    assert main(["task", "add", str(folder / "two_labels.csv"), "--label", "mood", "--params", str(params)]) == 0
    assert yaml.safe_load(params.read_text())["tasks"]["two_labels"]["columns"] == {"text": "text", "label": "mood"}
