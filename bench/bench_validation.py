"""Benchmark `unitask validate` on synthetic classification data (default 100k rows, 80/10/10).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_validation.py [--rows 100000] [--repeats 3]

Times the whole stage function (read Parquet, derive columns, tokenize for the truncation share, run
the GX suites, write reports, log MLflow) with and without Data Docs, and prints the median of
`--repeats` runs as seconds and rows/s, plus where the time goes in one profiled run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

WORDS = "the a of team market film vote phone goal price show party chip win rise star law data".split()
LABELS = ["sports", "business", "entertainment", "tech"]


def make_project(root: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, 40, rows)
    words = rng.integers(0, len(WORDS), int(lengths.sum()))
    texts, at = [], 0
    for i, n in enumerate(lengths):
        texts.append(f"{i} " + " ".join(WORDS[w] for w in words[at : at + n]))
        at += n
    frame = pd.DataFrame({"id": np.arange(rows), "text": texts, "label": [LABELS[i % 4] for i in range(rows)]})
    folder = root / "data/prepared/synthetic"
    folder.mkdir(parents=True)
    cut = [0, int(rows * 0.8), int(rows * 0.9), rows]
    for split, lo, hi in zip(("train", "validation", "test"), cut, cut[1:]):
        frame.iloc[lo:hi].to_parquet(folder / f"{split}.parquet", index=False)
    params = {
        "tasks": {
            "synthetic": {
                "type": "classification",
                "source": {"kind": "local", "path": "data/raw/synthetic"},
                "read": {"format": "parquet"},
                "columns": {"text": "text", "label": "label"},
                "labels": LABELS,
            }
        },
        "tracking": {"uri": "sqlite:///mlflow/mlflow.db"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from unitask.config import load_config
    from unitask.validation import validate

    with tempfile.TemporaryDirectory() as tmp:
        params = make_project(Path(tmp), args.rows)
        results = {}
        for docs in (False, True):
            cfg = load_config(params, [f"validate.data_docs={str(docs).lower()}"])
            validate(cfg)  # warm-up: imports, MLflow store, tokenizer files in the page cache
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                summary = validate(cfg)["synthetic"]
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            results["with_docs" if docs else "without_docs"] = {
                "seconds_median": round(median, 2),
                "seconds_all": [round(t, 2) for t in times],
                "rows_per_s": round(args.rows / median),
                "expectations": summary["expectations"]["evaluated"],
                "status": summary["status"],
            }
        results["phases_s"] = _phases(load_config(params, ["validate.data_docs=false"]))
    print(json.dumps({"rows": args.rows, "repeats": args.repeats, **results}, indent=2))


def _phases(cfg) -> dict[str, float]:
    """Seconds per phase of one run: reading, tokenizing, the rest of derive, GX validation."""
    from unitask.config import SPLITS
    from unitask.models.backbone import load_tokenizer
    from unitask.validation import checks, load
    from unitask.validation.suites import Suites

    task = cfg.tasks["synthetic"]
    tokenizer = load_tokenizer(cfg)
    out: dict[str, float] = {}
    start = time.perf_counter()
    splits = {s: load.load_split(cfg, "synthetic", task, s) for s in SPLITS}
    out["read"] = time.perf_counter() - start
    start = time.perf_counter()
    for frame in splits.values():
        checks._token_lengths(task.type, frame, tokenizer)
    out["tokenize"] = time.perf_counter() - start
    start = time.perf_counter()
    derived = checks.derive(cfg, task, splits, tokenizer)
    out["derive_incl_tokenize"] = time.perf_counter() - start
    suites = Suites("synthetic", None)
    severities = {c: checks.severity(cfg, c) for c in (checks.SCHEMA, *checks.DEFAULT_SEVERITY)}
    suites.add_suite("synthetic", checks.content_checks(cfg, task), severities)
    start = time.perf_counter()
    for split, frame in derived.items():
        suites.run("synthetic", split, frame)
    out["gx_validate"] = time.perf_counter() - start
    return {k: round(v, 2) for k, v in out.items()}


if __name__ == "__main__":
    main()
