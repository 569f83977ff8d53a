"""Fetch and prepare on the real offline default: deterministic, DVC-consistent, disjoint, stratified."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, classification_task, keyword_rows

from unitask.cli import main
from unitask.config import load_config
from unitask.config.task_types import TASK_TYPES
from unitask.data.fetch import fetch
from unitask.data.hashing import sha256_path
from unitask.data.prepare import prepare

SPLITS = ("train", "validation", "test")
DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(scope="module")
def default_project(tmp_path_factory) -> Path:
    """The repo's params.yaml in a fresh folder, fetched and prepared (easy_vqa capped for speed)."""
    root = tmp_path_factory.mktemp("default")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    cfg = load_config(root / "params.yaml", ["tasks.easy_vqa.max_rows=3000"])
    fetch(cfg)
    prepare(cfg)
    return root


def _splits(root: Path, task: str) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(root / "data/prepared" / task / f"{s}.parquet") for s in SPLITS}


def test_two_fetches_give_identical_bytes(default_project, tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    first = fetch(load_config(tmp_path / "params.yaml"))
    second = fetch(load_config(tmp_path / "params.yaml"), force=True)
    assert first == second
    assert sha256_path(tmp_path / "data/raw") == sha256_path(default_project / "data/raw")


def test_committed_data_dvc_matches_a_fresh_fetch(default_project):
    """data.dvc records the md5 DVC computes for data/raw; `dvc status` after a fresh fetch is clean."""
    shutil.copy(REPO / "data.dvc", default_project / "data.dvc")
    for cmd in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(cmd, cwd=default_project, check=True)
    # `make data` caches the fetched bytes; when they match, data.dvc is left as committed
    subprocess.run([DVC, "commit", "--force", "-q", "data.dvc"], cwd=default_project, check=True)
    assert (default_project / "data.dvc").read_text() == (REPO / "data.dvc").read_text()
    status = subprocess.run([DVC, "status", "--json", "data.dvc"], cwd=default_project, capture_output=True, text=True, check=True)
    assert json.loads(status.stdout) == {}
    nfiles = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["nfiles"]
    assert nfiles == sum(1 for p in (default_project / "data/raw").rglob("*") if p.is_file())


def test_splits_are_disjoint_and_cover_the_data(default_project):
    cfg = load_config(default_project / "params.yaml")
    for name, task in cfg.tasks.items():
        parts = _splits(default_project, name)
        inputs = list(TASK_TYPES[task.type].inputs)
        keys = {s: set(p[inputs].map(lambda v: json.dumps(list(v)) if hasattr(v, "__len__") and not isinstance(v, str) else v).apply(tuple, axis=1)) for s, p in parts.items()}
        assert not keys["train"] & keys["validation"], name
        assert not keys["train"] & keys["test"], name
        assert not keys["validation"] & keys["test"], name
        summary = json.loads((default_project / "reports/prepare" / f"{name}.json").read_text())
        assert summary["rows"] == {s: len(p) for s, p in parts.items()}
        assert all(len(p) > 0 for p in parts.values())
        distribution = json.loads((default_project / "reports/prepare" / f"{name}.labels.json").read_text())
        assert not {"labels", "target"} & summary.keys()  # per-label counts are no DVC metric
        if "label" in parts["train"] and task.type != "regression":
            assert sum(distribution["labels"]["train"].values()) == len(parts["train"])


def test_classification_splits_are_stratified(default_project):
    parts = _splits(default_project, "bbc_topic")
    shares = {s: p["label"].value_counts(normalize=True) for s, p in parts.items()}
    for split in ("validation", "test"):
        assert (shares[split] - shares["train"]).abs().max() < 0.02


def test_trec_duplicates_are_removed(default_project):
    rows = pd.concat(_splits(default_project, "trec_coarse").values())
    assert rows["text"].is_unique
    assert 5300 < len(rows) < 5460  # 15,452 lines hold ~5,4xx unique questions
    summary = json.loads((default_project / "reports/prepare/trec_coarse.json").read_text())
    assert summary["dropped"]["duplicate"] == 15452 - len(rows)


def test_predefined_test_split_is_kept(default_project):
    test = _splits(default_project, "easy_vqa")["test"]
    assert test["image"].str.contains("/test/images/").all()
    assert Path(default_project / test["image"].iloc[0]).is_file()


def test_prepare_is_deterministic_and_seeded(project, tmp_path):
    pd.DataFrame(keyword_rows(200)).to_csv(tmp_path / "d.csv", index=False)
    params = project({"t": classification_task("d.csv")})

    def run(*overrides: str) -> dict[str, list[int]]:
        cfg = load_config(params, list(overrides))
        fetch(cfg)
        prepare(cfg)
        return {s: p["id"].tolist() for s, p in _splits(tmp_path, "t").items()}

    first, second = run(), run()
    assert first == second
    assert run("seed=8") != first
    assert {s: len(ids) for s, ids in first.items()} == {"train": 160, "validation": 20, "test": 20}
    assert sum(map(len, run("prepare.max_rows=50").values())) == 50


def test_blank_rows_are_refused_or_dropped_and_every_drop_is_printed(project, tmp_path, capsys):
    """Blank text stops prepare, naming the rows in the file; with prepare.drop_blank they are dropped,
    and prepare prints how many rows it dropped for each reason."""
    rows = keyword_rows(40)
    rows[3]["text"], rows[8]["text"] = "", "   "
    pd.DataFrame([*rows, rows[0]]).to_csv(tmp_path / "d.csv", index=False)  # and a duplicate of the first row
    args = ["--params", str(project({"t": classification_task("d.csv")})), "--set", "prepare.max_rows=30"]
    assert main(["data", "fetch", *args]) == 0
    assert main(["prepare", *args]) == 2
    err = capsys.readouterr().err
    assert "2 rows with a blank or null text (column 'text'), e.g. " in err and "d.csv rows 5, 10" in err
    assert not (tmp_path / "data/prepared/t").exists()
    assert main(["prepare", *args, "--set", "prepare.drop_blank=true"]) == 0
    out = capsys.readouterr().out
    assert "t\tdropped 11 of 41 rows: 2 blank (prepare.drop_blank), 1 duplicate, 8 over max_rows" in out.splitlines()
    summary = json.loads((tmp_path / "reports/prepare/t.json").read_text())
    assert summary["dropped"] == {"empty": 2, "duplicate": 1, "capped": 8}
    assert "" not in set(pd.concat(_splits(tmp_path, "t").values())["text"].str.strip())


def test_easy_vqa_rows_carry_the_question_kind_their_answer_gives(default_project):
    """tasks.easy_vqa.group: the kind derived from the answer agrees with the question's wording."""
    for frame in _splits(default_project, "easy_vqa").values():
        what = frame["text"].str.startswith("what")
        assert (frame.loc[~what, "group"] == "yes/no").all()  # is / does / are ... questions
        assert (frame.loc[what & frame["text"].str.contains("color"), "group"] == "colour").all()
        assert (frame.loc[what & ~frame["text"].str.contains("color"), "group"] == "shape").all()
        assert set(frame["group"]) == {"colour", "shape", "yes/no"}


def test_a_group_declaration_must_name_one_source_and_cover_the_labels():
    from pydantic import ValidationError

    from unitask.config import TaskConfig

    base = {"type": "classification", "source": {"kind": "local", "path": "x.csv"}, "read": {"format": "csv"},
            "columns": {"text": "t", "label": "l"}, "labels": ["a", "b", "c"]}  # fmt: skip
    assert TaskConfig(**base, group={"labels": {"ab": ["a", "b"], "c": ["c"]}}).group.of_label() == {"a": "ab", "b": "ab", "c": "c"}
    assert TaskConfig(**base, group={"column": "kind"}).group.column == "kind"
    for group, message in [
        ({}, "exactly one of column"),
        ({"column": "kind", "labels": {"a": ["a"]}}, "exactly one of column"),
        ({"labels": {"x": ["a", "b"], "y": ["b", "c"]}}, r"labels \['b'\] are in more than one group"),
        ({"labels": {"x": ["a", "b"], "y": ["z"]}}, r"not grouped \['c'\], not labels \['z'\]"),
    ]:
        with pytest.raises(ValidationError, match=message):
            TaskConfig(**base, group=group)


def test_json_value_makes_parquet_and_numpy_values_json() -> None:
    """What example keys, predictions' gold values and validation's observed values are written as."""
    import json

    import numpy as np

    from unitask.atomic import json_value

    values = [np.array(["B-PER", "O"]), np.int64(3), np.float32(0.5), pd.Timestamp("2026-01-02"), ("a", 1), None, {"k": 1}]
    assert [json_value(v) for v in values] == [["B-PER", "O"], 3, 0.5, "2026-01-02 00:00:00", ("a", 1), None, {"k": 1}]
    assert json.dumps([json_value(v) for v in values])  # every one of them writes
