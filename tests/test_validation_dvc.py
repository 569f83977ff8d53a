"""The DVC gate: the repo's `validate` stage in a scratch project runs, is a no-op the second time,
and stops the pipeline (no downstream stage runs) when one label in one split is broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from conftest import REPO
from test_validation import make_project
from unitask.cli import main

BIN = Path(sys.executable).parent


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=root, capture_output=True, text=True, env=env)


def test_dvc_repro_runs_validate_and_stops_at_a_broken_label(tmp_path):
    root = tmp_path / "project"
    params = make_project(root, {"uri": "sqlite:///mlflow/mlflow.db", "artifact_location": "mlflow/artifacts"})
    config = yaml.safe_load(params.read_text())
    config["tasks"] = {"topic": config["tasks"]["topic"]}
    params.write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "data/raw/topic").mkdir(parents=True)
    (root / "data/raw/topic/source.txt").write_text("raw\n")
    shutil.copytree(REPO / "src/unitask", root / "src/unitask", ignore=shutil.ignore_patterns("__pycache__"))
    assert main(["dvc", "--params", str(params)]) == 0  # the generated validate stage of this project
    stages = {"validate": yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["validate"]}
    stages["train"] = {  # stands in for the training stages, which depend on the summary
        "foreach": "${tasks}",
        "do": {
            "cmd": "echo trained > trained-${key}.txt",
            "deps": ["reports/validate/${key}.json"],
            "outs": ["trained-${key}.txt"],
        },
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert _dvc(root, "init", "-q").returncode == 0

    first = _dvc(root, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'validate@topic'" in first.stdout and (root / "trained-topic.txt").is_file()
    second = _dvc(root, "repro")
    assert second.returncode == 0 and "Running stage" not in second.stdout
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["validate@topic"]
    assert "reports/validate/topic.json" in {out["path"] for out in lock["outs"]}  # the gate's summary, versioned

    split = root / "data/prepared/topic/validation.parquet"
    frame = pd.read_parquet(split)
    frame.loc[4, "label"] = "sprots"
    frame.to_parquet(split, index=False)
    (root / "trained-topic.txt").unlink()
    broken = _dvc(root, "repro")
    output = broken.stdout + broken.stderr
    assert broken.returncode != 0
    assert "split validation, column 'label': label_in_set failed" in output, output
    assert f"id={frame['id'][4]}: label='sprots'" in output and "Traceback" not in output
    assert "Running stage 'train@topic'" not in output and not (root / "trained-topic.txt").exists()
