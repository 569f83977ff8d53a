"""The benchmark scripts follow the code they measure: each one's measuring function runs on a tiny
project (numbers are not checked here; BENCHMARKS.md holds them). bench/gpu_check.py measures with
bench_finetune's `one_run`, so this also covers what the GPU check runs before it reaches a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_BERT, classification_task, keyword_rows, write_project
from unitask.cli import main
from unitask.config import load_config

sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    import pandas as pd

    data = tmp_path / "data" / "external" / "toy.csv"
    data.parent.mkdir(parents=True)
    pd.DataFrame(keyword_rows(60)).to_csv(data, index=False)
    params = write_project(tmp_path, {"toy": classification_task("data/external/toy.csv")},
                           model={"backbone_config": TINY_BERT, "max_length": 32}, tracking={"uri": "sqlite:///mlflow/mlflow.db"},
                           finetune={"batch_size": 8, "bf16": False})  # fmt: skip
    assert main(["data", "fetch", "--params", str(params)]) == 0 and main(["prepare", "--params", str(params)]) == 0
    return params


def test_every_fine_tuning_variant_runs(tiny: Path) -> None:
    import bench_finetune

    cfg = load_config(tiny)
    for variant in [*bench_finetune.VARIANTS, *(v for v in bench_finetune.ABLATIONS if v != bench_finetune.COMPILED)]:
        measured = bench_finetune.one_run(variant, cfg, "toy", steps=1, bf16=False)
        assert measured["samples_per_s"] > 0 and measured["flops_per_s"] > 0, variant


def test_seeds_scratch_params_default_to_the_multitask_tasks(tiny: Path, tmp_path: Path) -> None:
    import bench_seeds

    params, tasks = bench_seeds.scratch_params(tmp_path / "scratch", REPO / "params.yaml", None)
    assert tasks == load_config(REPO / "params.yaml").multitask_tasks()
    assert list(load_config(params).tasks) == tasks


def test_the_avx2_only_emulation_reaches_every_process_the_suite_starts(tmp_path: Path) -> None:
    """bench/bench_suite.py --avx2-only: a process started with bench/avx2_only on PYTHONPATH trains in
    fp32 on AVX2 kernels (`bf16: auto` says no), and the per-file table adds up pytest's junit times."""
    import os
    import subprocess

    import bench_suite

    probe = ("import torch; from unitask.training.trainer import use_bf16; "
             "print(torch.backends.cpu.get_cpu_capability(), use_bf16('auto'), torch.cpu._is_avx512_bf16_supported())")
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "avx2_only")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "False", "False"], out
    junit = tmp_path / "suite.xml"
    junit.write_text('<testsuites><testsuite><testcase classname="tests.test_a" name="x" time="1.5"/>'
                     '<testcase classname="tests.test_a" name="y" time="2"/><testcase classname="tests.test_b" name="z" time="9"/>'
                     "</testsuite></testsuites>")
    assert bench_suite.per_file(junit) == [("test_b", 9.0, 1), ("test_a", 3.5, 2)]


def test_same_outputs_finds_a_changed_prediction_and_nothing_else(tmp_path: Path) -> None:
    """The refactor check: equal runs (timings, run ids and each run's own folder aside) compare equal;
    one changed prediction is found."""
    import json

    from same_outputs import compare

    for side, seconds in (("before", 1.0), ("after", 9.0)):
        root = tmp_path / side
        (root / "reports" / "predictions" / "finetune").mkdir(parents=True)
        (root / "reports" / "finetune.json").write_text(json.dumps(
            {"test": {"accuracy": 0.5 + 1e-12}, "train": {"seconds": seconds}, "model": str(root / "m"), "mlflow_run_id": side}))
        (root / "reports" / "predictions" / "finetune" / "t.jsonl").write_text('{"gold": "a", "label": "a"}\n')
    assert compare(tmp_path / "before", tmp_path / "after", 1e-9) == (2, [])
    (tmp_path / "after" / "reports" / "predictions" / "finetune" / "t.jsonl").write_text('{"gold": "a", "label": "b"}\n')
    files, found = compare(tmp_path / "before", tmp_path / "after", 1e-9)
    assert files == 2 and found == [("reports/predictions/finetune/t.jsonl[0]:label", "a", "b")]
