"""Adding a stage is writing two files: the stage's module and its declaration in stages.py. Every
driver follows: the CLI command, the dvc.yaml entry, the Kubeflow component in its place in the graph,
and its step in a local Kubeflow run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, classification_task, keyword_rows, write_project

TOY_MODULE = '''"""A toy stage: each task's number of training rows."""

import pandas as pd

from unitask.atomic import write_json
from unitask.config import Config


def count_rows(cfg: Config) -> dict[str, int]:
    counts = {name: len(pd.read_parquet(cfg.path(cfg.paths.prepared) / name / "train.parquet")) for name in cfg.tasks}
    write_json(cfg.path(cfg.paths.reports) / "toy.json", counts)
    return counts
'''

TOY_DECLARATION = '''    Stage(
        "toy", "count each task's training rows", "Count the rows of each task's prepared train split.",
        "unitask.toy:count_rows", deps=("{c.paths.prepared}",), metrics=("{c.paths.reports}/toy.json",),
    ),
'''


def add_toy_stage(src: Path) -> None:
    """The two files: a new module, and one more entry in the declarations."""
    (src / "unitask" / "toy.py").write_text(TOY_MODULE, encoding="utf-8")
    stages = src / "unitask" / "stages.py"
    text = stages.read_text(encoding="utf-8")
    end = ")}  # fmt: skip"
    assert text.count(end) == 1
    stages.write_text(text.replace(end, TOY_DECLARATION + end), encoding="utf-8")


@pytest.mark.slow
def test_a_stage_is_one_module_and_one_declaration(tmp_path: Path) -> None:
    from unitask.kubeflow import schemas

    root = tmp_path / "project"
    shutil.copytree(REPO / "src" / "unitask", root / "src" / "unitask", ignore=shutil.ignore_patterns("__pycache__"))
    before = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    add_toy_stage(root / "src")
    changed = {p.relative_to(root) for p in root.rglob("*") if p.is_file()} - before
    assert changed == {Path("src/unitask/toy.py")}  # and stages.py, edited in place

    (root / "data").mkdir()
    import pandas as pd

    pd.DataFrame(keyword_rows(30)).to_csv(root / "data" / "t.csv", index=False)
    write_project(root, {"t": classification_task("data/t.csv")}, tracking={"uri": "sqlite:///mlflow/mlflow.db"})
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)

    def unitask(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "unitask.cli", *args], cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    assert "count each task's training rows" in unitask("--help")  # the command
    assert "Count the rows of each task's prepared train split." in unitask("toy", "--help")

    unitask("dvc")  # the dvc.yaml entry: its deps, code deps and metrics from the declaration
    entry = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["toy"]
    assert entry["cmd"] == "unitask toy" and entry["metrics"] == [{"reports/toy.json": {"cache": False}}]
    assert "data/prepared" in entry["deps"] and "src/unitask/toy.py" in entry["deps"]

    unitask("pipeline", "compile", "--output", "pipeline.yaml")  # the component, in the graph, in kfp's protobufs
    text = (root / "pipeline.yaml").read_text()
    assert schemas.pipeline_errors(text) == []
    spec = next(yaml.safe_load_all(text))
    task = spec["root"]["dag"]["tasks"]["toy"]
    assert task["dependentTasks"] == ["prepare-t"] and set(task["inputs"]["artifacts"]) == {"prepare__t_data"}

    out = unitask("pipeline", "run-local", "--stage", "toy", "--output", "kfp")  # its step, run with what it needs
    run = Path(next(line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("outputs\t")))
    assert {p.name for p in run.iterdir() if p.is_dir()} == {"prepare-t", "toy"}
    counts = json.loads((run / "toy" / "data" / "reports" / "toy.json").read_text())
    train = pd.read_parquet(run / "prepare-t" / "data" / "data" / "prepared" / "t" / "train.parquet")
    assert counts == {"t": len(train)} and counts["t"] > 0
    logged = json.loads((run / "toy" / "executor_output.json").read_text())["artifacts"]["metrics"]["artifacts"][0]
    assert logged["metadata"]["t"] == len(train)
