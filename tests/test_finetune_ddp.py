"""The same `unitask finetune` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU) matches one
process with the same global batch, and only rank 0 writes outputs and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_BERT, text_project, torchrun

from unitask.config import load_config
from unitask.tracking import tracking_uri

GLOBAL_BATCH = 16
# no dropout: with the same examples per step (see UnitaskTrainer), the runs differ only by float sums
MODEL = {"backbone_config": {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def outputs(params: Path) -> tuple[dict, dict[str, str], list[float]]:
    """The project's metrics JSON, and params and eval losses of its single MLflow run."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    losses = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "eval_loss")]
    return json.loads((params.parent / "reports" / "finetune" / "toy.json").read_text()), run.data.params, losses


@pytest.mark.usefixtures("single_thread")
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    from unitask.training.finetune import finetune

    one_params = text_project(tmp_path / "one", "classification", model=MODEL, finetune={"batch_size": GLOBAL_BATCH})
    finetune(load_config(one_params), "toy")
    one, _, one_losses = outputs(one_params)

    params = text_project(tmp_path / "ddp", "classification", model=MODEL, finetune={"batch_size": GLOBAL_BATCH // 2})
    done = torchrun("finetune", "--task", "toy", "--params", str(params))
    assert done.stdout.count("toy\tvalidation macro_f1") == 1  # only rank 0 reports
    two, two_params, two_losses = outputs(params)  # exactly one MLflow run: rank 0's

    assert two["train"]["world_size"] == 2 and two_params["world_size"] == "2"
    assert two["train"]["steps"] == one["train"]["steps"]  # same global batch, same number of updates
    assert two["train"]["loss"] == pytest.approx(one["train"]["loss"], rel=1e-2)
    assert two_losses == pytest.approx(one_losses, rel=1e-2) and len(one_losses) == 10
    for split in ("validation", "test"):
        assert two[split] == pytest.approx(one[split], rel=1e-2), split
    assert two["validation"]["accuracy"] > 0.9
