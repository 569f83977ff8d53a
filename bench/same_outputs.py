"""Do two runs of the stages write the same predictions and metrics? The check behind a refactor that
must not change results: run the stages with the old and the new code into two project folders, then

    .venv/bin/python bench/same_outputs.py BEFORE AFTER [--tolerance 1e-9]

compares every JSON and JSON-lines file under reports/ (and llmproj/reports/, when there), numbers within
the relative tolerance, paths inside each run's folder as `<root>`; it ignores timings, MLflow run ids,
the encoder's name and Data Docs. It prints
the count of files compared and each difference, and exits 1 when there is one.

A run for one side, the smoke profile (every text task and every training stage, tiny models), one torch
thread so that both sides reduce in the same order:

    git worktree add /tmp/old OLD_COMMIT
    cd /tmp/side && cp /tmp/old/params.yaml . (tests/smoke.yaml merged over it for the smoke profile)
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/old/src python -m unitask.cli data fetch   # then prepare, validate,
    # pretrain, baseline, finetune --task T for each text task, multitask, multitask-comparison, llm,
    # fusion, evaluate
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

SKIP = ("seconds", "runtime", "per_second", "mlflow_run_id", "encoder", "started", "finished")
ROOTS = ("reports", "llmproj/reports")


def differences(ours: Any, theirs: Any, where: str, tolerance: float) -> list[tuple[Any, ...]]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(k for k in set(ours) | set(theirs) if not any(s in k for s in SKIP))
        found = [(f"{where}:{k}", "missing") for k in keys if k not in ours or k not in theirs]
        return found + [d for k in keys if k in ours and k in theirs for d in differences(ours[k], theirs[k], f"{where}:{k}", tolerance)]
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [(where, f"{len(ours)} items", f"{len(theirs)} items")]
        return [d for i, (a, b) in enumerate(zip(ours, theirs)) for d in differences(a, b, f"{where}[{i}]", tolerance)]
    if isinstance(ours, float) and isinstance(theirs, (int, float)):
        same = math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=1e-12) or (math.isnan(ours) and math.isnan(theirs))
        return [] if same else [(where, ours, theirs)]
    return [] if ours == theirs else [(where, ours, theirs)]


def read(path: Path, root: Path) -> Any:
    """A JSON or JSON-lines file, with the run's own folder in any path it holds written `<root>`."""
    text = path.read_text().replace(str(root.resolve()), "<root>")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line]
    return json.loads(text)


def compare(before: Path, after: Path, tolerance: float) -> tuple[int, list[tuple[Any, ...]]]:
    files, found = 0, []
    for root in ROOTS:
        for path in sorted((before / root).rglob("*.json*")):
            relative = path.relative_to(before)
            if "data_docs" in relative.parts:
                continue
            if not (after / relative).is_file():
                found.append((str(relative), "only before"))
                continue
            files += 1
            found += differences(read(path, before), read(after / relative, after), str(relative), tolerance)
    return files, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--tolerance", type=float, default=1e-9)
    args = parser.parse_args()
    files, found = compare(args.before, args.after, args.tolerance)
    print(f"{files} files compared; {len(found)} differences")
    for row in found[:50]:
        print(*row, sep="\t")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
