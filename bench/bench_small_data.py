"""The default fine-tune on a small skewed task: 1,000 movie-review snippets in 3 labels, 64% one label
(the task `tests/test_small_data.py` builds), against TF-IDF with balanced class weights.

Arms are `--set` overrides of the finetune section: the step floor and label weights off (the old
budget: 2 epochs, rows weighed equally), each alone, and the defaults. Each seed draws its own
splits (`seed` in params.yaml); every arm of a seed trains on the same splits. Prints a Markdown
table of validation and test macro-F1 (mean and standard deviation over the seeds) and seconds.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_small_data.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_small_data import TASK, skewed_reviews, tfidf_macro_f1  # noqa: E402

from unitask.cli import main  # noqa: E402

ARMS = {
    "2 epochs, rows weighed equally (no floor, balance 0)": ["finetune.min_steps=null", "finetune.label_balance=0"],
    "step floor only (balance 0)": ["finetune.label_balance=0"],
    "balanced label weights only (no floor)": ["finetune.min_steps=null"],
    "floor, half-balanced weights (balance 0.5)": ["finetune.label_balance=0.5"],
    "**defaults** (floor 100 steps, balance 1)": [],
}


def run_seed(root: Path, seed: int) -> dict[str, dict[str, float]]:
    """Every arm's validation and test macro-F1 and seconds on one seed's splits, and TF-IDF's."""
    skewed_reviews(root / "reviews.csv")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": seed, "tasks": {"reviews": TASK}, "pretrain": {"enabled": False},
                                      "tracking": {"uri": "sqlite:///mlflow/mlflow.db"}}))  # fmt: skip
    for command in (["data", "fetch"], ["prepare"]):
        assert main([*command, "--params", str(params)]) == 0
    out = {"TF-IDF, balanced class weights": tfidf_macro_f1(root / "data/prepared/reviews")}
    for arm, overrides in ARMS.items():
        started = time.perf_counter()
        sets = [item for o in overrides for item in ("--set", o)]
        assert main(["finetune", "--task", "reviews", "--params", str(params), *sets]) == 0
        summary = json.loads((root / "reports/finetune/reviews.json").read_text())
        out[arm] = {"validation": summary["validation"]["macro_f1"], "test": summary["test"]["macro_f1"],
                    "seconds": time.perf_counter() - started}  # fmt: skip
    return out


def cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    seeds = parser.parse_args().seeds
    results = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as folder:
            results.append(run_seed(Path(folder), seed))
    print(f"| arm | validation macro-F1 | test macro-F1 | s per run |  ({len(seeds)} seeds: {seeds})")
    print("|---|---:|---:|---:|")
    for arm, first in results[0].items():
        if isinstance(first, float):  # TF-IDF: its test score; C is chosen on validation inside
            print(f"| {arm} | | {cell([r[arm] for r in results])} | |")
            continue
        scores = {k: [r[arm][k] for r in results] for k in ("validation", "test", "seconds")}
        print(f"| {arm} | {cell(scores['validation'])} | {cell(scores['test'])} | {statistics.mean(scores['seconds']):.0f} |")


if __name__ == "__main__":
    main_bench()
