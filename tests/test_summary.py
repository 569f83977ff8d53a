"""`unitask summary` (what a person reads after `make demo`) and `unitask repro` (`dvc repro` as one
pipeline run in MLflow, its stage runs nested under one parent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import text_project

from unitask.cli import main
from unitask.config import load_config
from unitask.tracking import PIPELINE_TAG, pipeline, tracking_uri

BIN = Path(sys.executable).parent


def test_summary_puts_each_models_main_metric_side_by_side_with_the_champion_and_where_to_look(tmp_path, capsys):
    params = text_project(tmp_path, "classification")
    cfg = load_config(params)
    table = {"toy": {"baseline": {"macro_f1": 0.8125, "accuracy": 0.9}, "finetune": {"macro_f1": 0.93333, "accuracy": 0.95}}}
    (tmp_path / "reports/evaluate").mkdir(parents=True)
    # evaluate's layout: a validation and a test table (the summary shows test, the reported split)
    validation = {"toy": {m: {k: 0.0 for k in v} for m, v in table["toy"].items()}}
    (tmp_path / "reports/evaluate/comparison.json").write_text(json.dumps({"validation": validation, "test": table}))
    record = {"name": "unitask", "version": 2, "decision": "not promoted", "reason": "toy: -0.03 below the champion",
              "routes": {"toy": "multitask"}}  # fmt: skip
    (tmp_path / "reports/register.json").write_text(json.dumps(record))
    with pipeline(cfg, "dvc") as parent:
        pass
    assert main(["summary", "--params", str(params)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["task", "metric", "baseline", "finetune"]
    assert out[3].split() == ["toy", "macro_f1", "0.8125", "0.9333"]
    assert out[2].index("finetune") == out[3].index("0.9333")  # columns line up
    assert "Champion: unitask version 2 not promoted: toy: -0.03 below the champion" in out
    assert "  serves: toy -> multitask" in out
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    run = mlflow.get_run(parent)
    assert f"  MLflow UI (`make mlflow-ui`): http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning" in out
    assert f"    this pipeline run only: search  tags.`{PIPELINE_TAG}` = '{run.data.tags[PIPELINE_TAG]}'" in out
    assert "  tables: reports/evaluate/comparison.md" in out


def test_summary_before_evaluate_says_what_to_run(tmp_path, capsys):
    assert main(["summary", "--params", str(text_project(tmp_path, "classification"))]) == 1
    err = capsys.readouterr().err
    assert "reports/evaluate/comparison.json: not written yet" in err and "fix: run `unitask evaluate`" in err


STAGE = """import sys
from unitask.config import load_config
from unitask.tracking import stage_run
with stage_run(load_config("params.yaml"), sys.argv[1], "toy"):
    pass
"""


def test_repro_nests_the_dvc_stages_under_one_parent_that_ends_with_dvc(tmp_path):
    import mlflow

    params = text_project(tmp_path, "classification")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "stage.py").write_text(STAGE)
    stages = {
        "prepare": {"cmd": f"{sys.executable} stage.py prepare"},
        "validate": {"cmd": f"{sys.executable} stage.py validate && exit 3", "deps": ["params.yaml"]},  # fails after its run
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    assert main(["repro", "--params", str(params)]) == 1
    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["unitask"], output_format="list")}
    (parent,) = [r for name, r in runs.items() if name.startswith("pipeline:dvc:")]
    assert {runs[n].data.tags.get("mlflow.parentRunId") for n in ("prepare:toy", "validate:toy")} == {parent.info.run_id}
    assert parent.info.status == "FAILED" and parent.data.tags["unitask.pipeline_driver"] == "dvc"
