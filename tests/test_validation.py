"""`unitask validate` on small synthetic projects: the default data passes, each kind of bad data
fails with a message naming task, split, column, check and rows, and never with a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, synthetic_task, write_project, write_splits
from PIL import Image

from unitask.cli import main

SIZES = {"train": 40, "validation": 10, "test": 10}
KINDS = {"topic": "classification", "score": "regression", "ner": "token_classification", "qa": "extractive_qa"}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> dict[str, str]:
    """One MLflow store for the module: creating a sqlite store costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"uri": f"sqlite:///{root}/mlflow.db", "artifact_location": str(root / "artifacts")}


def make_project(root: Path, tracking: dict[str, str], **validate: Any) -> Path:
    """Five tasks (one per type with data) prepared as Parquet in `root`; returns params.yaml."""
    tasks = {}
    for name, kind in KINDS.items():
        task, rows = synthetic_task(kind, sum(SIZES.values()), seed=3)
        write_splits(root, name, rows, tuple(SIZES.values()))
        tasks[name] = task
    tasks["score"]["label_range"] = [0.0, 5.0]
    images = root / "data/raw/vqa"
    images.mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(images / f"{i}.png")
    rows = [
        {"id": i, "text": f"is shape {i} red?", "image": f"data/raw/vqa/{i % 4}.png", "label": ["yes", "no"][i % 2]}
        for i in range(sum(SIZES.values()))
    ]
    write_splits(root, "vqa", rows, tuple(SIZES.values()))
    tasks["vqa"] = {
        "type": "multimodal_classification",
        "source": {"kind": "local", "path": "data/raw/vqa"},
        "read": {"format": "parquet"},
        "columns": {"text": "text", "image": "image", "label": "label"},
        "labels": ["yes", "no"],
    }
    shared = str(Path(tracking["artifact_location"]).parent)  # the module's MLflow store, outside the project
    return write_project(
        root,
        tasks,
        paths={"roots": [shared]},
        model={"max_length": 64},
        tracking=tracking,
        validate={"data_docs": False, **validate},
    )


def edit(root: Path, task: str, split: str, change: Callable[[pd.DataFrame], pd.DataFrame | None]) -> pd.DataFrame:
    """Apply `change` to a prepared split (in place, or by returning a new frame); return the result."""
    path = root / "data/prepared" / task / f"{split}.parquet"
    frame = pd.read_parquet(path)
    changed = change(frame)
    frame = frame if changed is None else changed
    frame.to_parquet(path, index=False)
    return frame


def run(params: Path, task: str, capsys, *extra: str) -> tuple[int, str]:
    code = main(["validate", "--params", str(params), "--task", task, *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return code, out.err


@pytest.fixture
def params(tmp_path, tracking) -> Path:
    return make_project(tmp_path, tracking)


# ---- the good data ------------------------------------------------------------------------------


def test_clean_synthetic_data_passes_with_reports_docs_and_mlflow(tmp_path, tracking, capsys):
    params = make_project(tmp_path, tracking)
    code = main(["validate", "--params", str(params)])
    out = capsys.readouterr()
    assert code == 0, out.err
    for name in (*KINDS, "vqa"):
        summary = json.loads((tmp_path / "reports/validate" / f"{name}.json").read_text())
        assert summary["status"] in ("passed", "warned"), summary["failures"]
        assert summary["rows_checked"] == 60 and summary["expectations"]["failed_error"] == 0
        assert f"{name}\t{summary['status']}" in out.out
    assert main(["validate", "--params", str(params), "--task", "vqa", "--set", "validate.data_docs=true"]) == 0
    docs = tmp_path / "reports/data_docs/vqa"
    assert (docs / "index.html").is_file() and list(docs.glob("validations/**/*.html"))
    assert not (docs / "static/images/glossary_scroller.gif").exists()  # unused assets pruned

    import mlflow

    mlflow.set_tracking_uri(tracking["uri"])
    run = mlflow.search_runs(
        experiment_names=["unitask"], filter_string="tags.`unitask.task` = 'vqa'", output_format="list"
    )[0]
    assert run.data.metrics["rows_checked"] == 60 and run.data.metrics["expectations.failed_error"] == 0
    artifacts = [a.path for a in mlflow.artifacts.list_artifacts(run_id=run.info.run_id, artifact_path="data_docs")]
    assert "data_docs/index.html" in artifacts


def test_real_default_data_passes_with_known_warnings(tmp_path, tracking, capsys):
    """The packaged default tasks, fetched and prepared afresh: only warnings (trec_coarse: rare abbreviation
    class; bbc_topic: articles longer than model.max_length; easy_vqa: yes/no dominate)."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    overrides = [
        "tasks.easy_vqa.max_rows=1500",
        f"tracking.uri={tracking['uri']}",
        "validate.data_docs=false",
        "paths.reports=.",
    ]
    args = ["--params", str(tmp_path / "params.yaml"), *(a for o in overrides for a in ("--set", o))]
    assert main(["data", "fetch", *args]) == 0
    assert main(["prepare", *args]) == 0
    code = main(["validate", *args])
    assert code == 0, capsys.readouterr().err
    trec = json.loads((tmp_path / "validate/trec_coarse.json").read_text())
    bbc = json.loads((tmp_path / "validate/bbc_topic.json").read_text())
    assert trec["status"] == bbc["status"] == "warned"
    assert {k.split("/")[-1] for k in trec["failures"]} == {"class_balance"}
    assert {k.split("/")[-1] for k in bbc["failures"]} == {"truncation"}
    for name in ("sms_spam", "movie_sentiment", "wnut_ner", "easy_vqa"):
        summary = json.loads((tmp_path / f"validate/{name}.json").read_text())
        assert summary["status"] != "failed", summary["failures"]


# ---- bad data: one case per kind ------------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"PAR1 this is not a parquet file")


def _to_csv(folder: Path, split: str, encode: Callable[[str], bytes] = str.encode) -> None:
    frame = pd.read_parquet(folder / f"{split}.parquet")
    (folder / f"{split}.parquet").unlink()
    (folder / f"{split}.csv").write_bytes(encode(frame.to_csv(index=False)))


def _binary_text(folder: Path) -> None:
    frame = pd.read_parquet(folder / "train.parquet")
    texts = [t.encode() for t in frame["text"]]
    texts[2] = b"caf\xe9 au lait"
    table = pa.table({"id": frame["id"], "text": pa.array(texts, pa.binary()), "label": frame["label"]})
    pq.write_table(table, folder / "train.parquet")


INPUT_ERRORS = {
    "missing file": (
        "topic",
        lambda f: (f / "validation.parquet").unlink(),
        ["split validation", "file not found", "unitask prepare --task topic"],
    ),
    "unreadable parquet": (
        "topic",
        lambda f: _garbage(f / "train.parquet"),
        ["split train", "not a readable Parquet file"],
    ),
    "unreadable csv": (
        "topic",
        lambda f: (
            (f / "test.parquet").unlink(),
            (f / "test.csv").write_text('id,text,label\n1,a,sports\n2,"b,sports\n'),
        ),
        ["split test", "test.csv", "not a readable CSV file", "EOF inside string"],
    ),
    "non-utf8 csv": (
        "topic",
        lambda f: _to_csv(f, "test", lambda s: s.replace("the", "th\xe9", 1).encode("cp1252")),
        ["test.csv", "not UTF-8 text", "byte 0xe9", "line"],
    ),
    "non-utf8 parquet": (
        "topic",
        _binary_text,
        ["split train", "column 'text'", "not UTF-8", "id=2: b'caf\\xe9 au lait'"],
    ),
    "empty split": (
        "topic",
        lambda f: pd.read_parquet(f / "test.parquet").iloc[:0].to_parquet(f / "test.parquet"),
        ["split test", "has no rows"],
    ),
    "label of wrong type": (
        "topic",
        lambda f: (
            pd.read_parquet(f / "train.parquet").assign(label=lambda d: range(len(d))).to_parquet(f / "train.parquet")
        ),
        ["split train", "column 'label' has the wrong type", "expected text labels", "found int", "id=0: 0"],
    ),
    "regression target as text": (
        "score",
        lambda f: pd.read_parquet(f / "train.parquet").assign(label="high").to_parquet(f / "train.parquet"),
        ["tasks.score, split train", "column 'label' has the wrong type", "expected numbers", "found str"],
    ),
}


@pytest.mark.parametrize("kind", INPUT_ERRORS)
def test_bad_input_is_one_clear_error(params, capsys, kind):
    task, damage, expected = INPUT_ERRORS[kind]
    damage(params.parent / "data/prepared" / task)
    code, err = run(params, task, capsys)
    assert code == 1
    assert f"unitask: error: tasks.{task}, split " in err
    for text in expected:
        assert text in err, err
    summary = json.loads((params.parent / "reports/validate" / f"{task}.json").read_text())
    assert summary["status"] == "error"


def _set(column: str, value: Any, rows: tuple[int, ...] = (3,)) -> Callable[[pd.DataFrame], None]:
    def change(frame: pd.DataFrame) -> None:
        for row in rows:
            frame.at[row, column] = value

    return change


def _edit_tags(frame: pd.DataFrame, how: Callable[[list[str]], list[str]]) -> None:
    frame["tags"] = [how(list(t)) if i == 3 else list(t) for i, t in enumerate(frame["tags"])]


def _shift_answer(frame: pd.DataFrame) -> None:
    frame["answers"] = [
        {"text": list(a["text"]), "answer_start": [int(a["answer_start"][0]) + (2 if i == 3 else 0)]}
        for i, a in enumerate(frame["answers"])
    ]


def _image(root: Path, frame: pd.DataFrame, save: Callable[[Path], None]) -> None:
    path = root / "data/raw/vqa/bad.png"
    save(path)
    frame.at[3, "image"] = "data/raw/vqa/bad.png"


# kind: (task, split, change(root, frame), check, column named, expectation, texts the message shows)
FAILURES = {
    "label not in set": (
        "topic",
        "validation",
        lambda r, f: _set("label", "sprots")(f),
        "label_in_set",
        "label",
        "expect_column_values_to_be_in_set on label",
        ["label='sprots'"],
    ),
    "blank text": (
        "topic",
        "train",
        lambda r, f: _set("text", "  \n ")(f),
        "text_not_empty",
        "text",
        "expect_column_values_to_not_match_regex on text",
        ["text='  \\n '"],
    ),
    "null text": (
        "topic",
        "train",
        lambda r, f: _set("text", None)(f),
        "text_not_empty",
        "text",
        "expect_column_values_to_not_be_null on text",
        ["text=null"],
    ),
    "target out of range": (
        "score",
        "test",
        lambda r, f: _set("label", 9.5)(f),
        "label_in_range",
        "label",
        "expect_column_values_to_be_between on label",
        ["label=9.5"],
    ),
    "tags shorter than tokens": (
        "ner",
        "train",
        lambda r, f: _edit_tags(f, lambda t: t[:-1]),
        "tags_match_tokens",
        "tags",
        "expect_column_pair_values_to_be_equal on _n_tokens, _n_tags",
        [],
    ),
    "tag not in set": (
        "ner",
        "train",
        lambda r, f: _edit_tags(f, lambda t: ["B-org", *t[1:]]),
        "tags_in_set",
        "tags",
        "on _unknown_tags",
        ["unknown_tags='B-org'"],
    ),
    "broken BIO order": (
        "ner",
        "validation",
        lambda r, f: _edit_tags(f, lambda t: ["I-loc", *t[1:]]),
        "tags_bio_order",
        "tags",
        "on _bio_error",
        ["I-loc at token 0 follows O"],
    ),
    "answer span off": (
        "qa",
        "train",
        lambda r, f: _shift_answer(f),
        "answer_in_context",
        "answers",
        "on _span_error",
        ["the context has"],
    ),
    "missing image": (
        "vqa",
        "train",
        lambda r, f: _set("image", "data/raw/vqa/nope.png")(f),
        "image_exists",
        "image",
        "on _image_exists",
        ["nope.png", "image_exists=False"],
    ),
    "corrupt image": (
        "vqa",
        "test",
        lambda r, f: _image(r, f, lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken")),
        "image_decodes",
        "image",
        "on _image_decodes",
        ["bad.png", "image_decodes=False"],
    ),
    "grayscale image": (
        "vqa",
        "train",
        lambda r, f: _image(r, f, lambda p: Image.new("L", (16, 16)).save(p)),
        "image_mode",
        "image",
        "on _image_mode",
        ["image_mode='L'"],
    ),
    "tiny image": (
        "vqa",
        "train",
        lambda r, f: _image(r, f, lambda p: Image.new("RGB", (4, 16)).save(p)),
        "image_size",
        "image",
        "on _image_width",
        ["image_width=4.0"],
    ),
    "missing column": (
        "topic",
        "train",
        lambda r, f: f.drop(columns="label"),
        "columns_exist",
        "label",
        "expect_column_to_exist on label",
        [],
    ),
    "duplicate in split": (
        "topic",
        "train",
        lambda r, f: _set("text", f["text"][0], rows=(5,))(f),
        "unique_in_split",
        "text",
        "expect_column_values_to_be_unique on _input_key",
        [],
    ),
}


@pytest.mark.parametrize("kind", FAILURES)
def test_bad_data_fails_naming_task_split_column_check_and_row(params, capsys, kind):
    task, split, change, check, column, expectation, expected = FAILURES[kind]
    root = params.parent
    frame = edit(root, task, split, lambda f: change(root, f))
    code, err = run(params, task, capsys)
    assert code == 1
    assert f"tasks.{task}: 1 failed expectation(s) of severity error" in err, err
    assert f"split {split}, column '{column}': {check} failed (" in err, err
    assert expectation in err, err
    if check != "columns_exist":
        assert f"id={frame['id'][5 if check == 'unique_in_split' else 3]}:" in err, err
    for text in expected:
        assert text in err, err
    summary = json.loads((root / "reports/validate" / f"{task}.json").read_text())
    assert summary["status"] == "failed" and summary["expectations"]["failed_error"] == 1


def test_leakage_between_train_and_test_is_detected(params, capsys):
    root = params.parent
    train = pd.read_parquet(root / "data/prepared/topic/train.parquet")
    test = edit(
        root,
        "topic",
        "test",
        lambda f: f.assign(text=[train["text"][7] if i == 2 else t for i, t in enumerate(f["text"])]),
    )
    code, err = run(params, "topic", capsys)
    assert code == 1
    assert "split test, column 'text': no_leakage failed" in err
    assert f"id={test['id'][2]}: text={train['text'][7]!r} (seen_in='train')" in err


def test_at_most_five_rows_are_shown(params, capsys):
    edit(params.parent, "topic", "train", _set("label", "wrong", rows=tuple(range(12))))
    code, err = run(params, "topic", capsys)
    assert code == 1 and "label_in_set failed (expect_column_values_to_be_in_set on label; 12 of 40 rows)" in err
    assert err.count("id=") == 5


def test_warn_severity_reports_but_passes(params, capsys):
    edit(params.parent, "topic", "train", _set("label", "sprots"))
    code, err = run(params, "topic", capsys, "--set", "validate.severity.label_in_set=warn")
    assert code == 0, err
    summary = json.loads((params.parent / "reports/validate/topic.json").read_text())
    assert summary["status"] == "warned"
    assert summary["failures"] == {"train/label/label_in_set": "warn: 1 of 40 rows"}


def test_truncation_share_uses_the_tokenizer_and_can_gate(params, capsys):
    code, err = run(params, "qa", capsys, "--set", "validate.severity.truncation=error", "--set", "model.max_length=16")
    assert code == 1
    assert (
        "split train, column 'question': truncation failed (expect_column_mean_to_be_between on _truncated; observed"
        in err
    )
    assert "n_model_tokens=" in err
    summary = json.loads((params.parent / "reports/validate/qa.json").read_text())
    assert summary["splits"]["train"]["truncated_share"] > 0.5


def test_unknown_check_name_in_config_is_a_config_error(params, capsys):
    code, err = run(params, "topic", capsys, "--set", "validate.severity.label_in_sett=warn")
    assert code == 2 and "validate.severity" in err
