"""Concurrency: two stages log to one MLflow server at the same time, and two `dvc repro` run at once
in separate clones that share that server; nothing is lost and nothing is mixed up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from conftest import REPO, Server, keyword_rows, single_thread_env, text_project, write_project, logged_model_files

BIN = Path(sys.executable).parent
ENV = {**single_thread_env(), "PATH": f"{BIN}:{os.environ['PATH']}"}  # DVC stages call `unitask`


def _runs(url: str, experiment: str) -> list:
    import mlflow

    mlflow.set_tracking_uri(url)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def _start_all(commands: list[tuple[list[str], Path]]) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd, cwd in commands
    ]
    return [subprocess.CompletedProcess(p.args, p.wait(), p.communicate()[0]) for p in procs]


def test_two_stages_log_to_one_server_at_once(tmp_path: Path, mlflow_server: Server) -> None:
    url = mlflow_server.url
    tracking = {"uri": url, "experiment": "concurrent-stages"}
    projects = {
        name: text_project(tmp_path / name, kind, name=name, tracking=tracking, finetune={"epochs": 2})
        for name, kind in (("alpha", "classification"), ("beta", "regression"))
    }
    done = _start_all(
        [([str(BIN / "unitask"), "finetune", "--task", name, "--params", str(p)], p.parent) for name, p in projects.items()]
    )
    assert [d.returncode for d in done] == [0, 0], [d.stdout[-2000:] for d in done]

    import mlflow

    runs = {r.data.tags["unitask.task"]: r for r in _runs(url, "concurrent-stages")}
    assert sorted(runs) == ["alpha", "beta"]
    client = mlflow.MlflowClient()
    for name, params in projects.items():
        run = runs[name]
        summary = json.loads((params.parent / "reports/finetune" / f"{name}.json").read_text())
        metric = summary["main_metric"]
        assert run.info.status == "FINISHED" and run.data.params["task"] == name
        assert run.data.params["type"] == ("classification" if name == "alpha" else "regression")
        assert run.data.metrics[f"test/{name}/{metric}"] == summary["test"][metric]
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 2
        assert "model.safetensors" in logged_model_files(run)


def _clone(root: Path, url: str, max_rows: int) -> Path:
    """A DVC project with the repository's dvc.yaml and code and one local task, logging to `url`."""
    root.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "src"):
        src = REPO / name
        copy = shutil.copytree if src.is_dir() else shutil.copy
        copy(src, root / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    (root / "raw").mkdir()
    pd.DataFrame(keyword_rows(120)).to_csv(root / "raw" / "reviews.csv", index=False)
    task = {
        "type": "classification",
        "source": {"kind": "local", "path": "raw/reviews.csv"},
        "read": {"format": "csv"},
        "columns": {"text": "text", "label": "label"},
        "labels": ["neg", "pos"],
    }
    write_project(
        root,
        {"reviews": task},
        tracking={"uri": url, "experiment": "concurrent-clones"},
        prepare={"max_rows": max_rows},
        model={"max_length": 64},
        validate={"data_docs": False},
        finetune={"tasks": []},
    )
    commands = (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], [str(BIN / "unitask"), "dvc"], [str(BIN / "unitask"), "data", "fetch"])
    for command in commands:  # `unitask dvc`: the DVC stages of this project's one task
        subprocess.run(command, cwd=root, check=True, capture_output=True, env=ENV)
    return root


def test_two_dvc_repro_in_separate_clones_at_once(tmp_path: Path, mlflow_server: Server) -> None:
    url = mlflow_server.url
    clones = {rows: _clone(tmp_path / f"clone{rows}", url, rows) for rows in (60, 80)}
    done = _start_all([([str(BIN / "dvc"), "repro", "validate@reviews"], root) for root in clones.values()])
    assert [d.returncode for d in done] == [0, 0], [d.stdout[-2000:] for d in done]

    runs = _runs(url, "concurrent-clones")
    assert sorted(r.data.tags["unitask.stage"] for r in runs) == ["prepare", "prepare", "validate", "validate"]
    assert all(r.info.status == "FINISHED" for r in runs)
    prepared = {int(r.data.params["max_rows"]): r for r in runs if r.data.tags["unitask.stage"] == "prepare"}
    assert sorted(prepared) == [60, 80]
    for rows, root in clones.items():
        summary = json.loads((root / "reports/prepare/reviews.json").read_text())
        assert sum(summary["rows"].values()) == rows  # each clone kept its own config and data
        assert {f"rows.{k}": float(v) for k, v in summary["rows"].items()}.items() <= prepared[rows].data.metrics.items()
        assert json.loads((root / "reports/validate/reviews.json").read_text())["status"] == "passed"
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        assert {"prepare@reviews", "validate@reviews"} <= set(lock["stages"])
