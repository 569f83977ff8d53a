"""The same `unitask multitask` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU) matches one
process with the same global batch: every rank trains the task one process would in each step, on
its shard of that task's batch; heads unused in a step do not break DDP; only rank 0 writes outputs
and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_ranks_disagree, torchrun
from test_multitask import multitask_project

from unitask.config import load_config
from unitask.tracking import tracking_uri
from unitask.training.sampling import TaskBatchSampler, shard

GLOBAL_BATCH = 16
# a sequence head (BERT's pooler) and a token head (no pooler): each step leaves parameters unused
KINDS = ("classification", "token_classification")
# DWA: its loss history must be the global batch's on every rank
SETTINGS = {"epochs": 6, "weighting": "dwa", "logging_steps": 5, "eval_batch_size": 64}
# No dropout: with the same examples per step and each rank's loss scaled by its share of the step's
# loss items (`shard_share`), the runs compute the same global-batch losses and differ only by the
# order of float sums: measured 1.4e-7 relative at most. TOL leaves room for other CPUs and BLAS, and
# still fails for per-rank mean losses (3.7% off in the mean score after 3 epochs, measured).
TOL = {"rel": 1e-3, "abs": 1e-4}
NO_DROPOUT = ["model.backbone_config.hidden_dropout_prob=0", "model.backbone_config.attention_probs_dropout_prob=0"]


def run_outputs(params: Path) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Params and some metric histories of the project's single MLflow run."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    keys = ("eval_mean_score", "loss_t_classification", "loss_t_token_classification")
    history = {k: [m.value for m in MlflowClient().get_metric_history(run.info.run_id, k)] for k in keys}
    return run.data.params, history


def test_ranks_share_each_global_batch_of_one_task() -> None:
    lengths = [[3, 9, 4, 7, 5] * 8, [6] * 13]
    one = TaskBatchSampler(lengths, 8, [0.5, 0.5], steps=12, seed=4)
    ranks = [TaskBatchSampler(lengths, 8, [0.5, 0.5], steps=12, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 3):
        for sampler in (one, *ranks):
            sampler.set_epoch(epoch)
        assert len({s.fingerprint() for s in (one, *ranks)}) == 1
        for whole, *shards in zip(one, *ranks, strict=True):
            assert [i for part in shards for i in part] == whole and len({one.task_of(i) for i in whole}) == 1  # one task a step
            assert abs(len(shards[0]) - len(shards[1])) <= 1
    assert sum(ranks[0].examples_seen(24)) == sum(one.examples_seen(24))  # counts every rank's rows
    assert shard([5], 1, 2) == [5] and shard([5], 0, 2) == [5]  # a one-row batch: each rank gets it
    assert shard([1, 2, 3], 1, 3) == [2]
    with pytest.raises(ValueError, match="rank 2 is not among the 2 processes"):
        TaskBatchSampler(lengths, 8, [0.5, 0.5], steps=1, seed=4, rank=2, world_size=2)


@pytest.mark.usefixtures("single_thread")
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    from unitask.training.multitask import multitask

    one_params = multitask_project(tmp_path / "one", KINDS, batch_size=GLOBAL_BATCH, **SETTINGS)
    one = multitask(load_config(one_params, NO_DROPOUT))
    _, one_history = run_outputs(one_params)

    params = multitask_project(tmp_path / "ddp", KINDS, batch_size=GLOBAL_BATCH // 2, **SETTINGS)
    done = torchrun("multitask", "--params", str(params), *(a for item in NO_DROPOUT for a in ("--set", item)))
    assert done.stdout.count("mean\tvalidation") == 1  # only rank 0 reports
    two = json.loads((params.parent / "reports" / "multitask.json").read_text())
    two_params, two_history = run_outputs(params)  # exactly one MLflow run: rank 0's

    assert two["train"]["world_size"] == 2 and two_params["world_size"] == "2" and one["train"]["world_size"] == 1
    assert two["train"]["steps_per_epoch"] == one["train"]["steps_per_epoch"] == 20  # 160 / 16 rows a task
    assert two["train"]["steps"] == one["train"]["steps"]
    assert two["train"]["examples_seen"] == one["train"]["examples_seen"]  # same tasks, same rows, each step
    assert two["train"]["loss"] == pytest.approx(one["train"]["loss"], **TOL)
    for key, values in one_history.items():
        assert two_history[key] == pytest.approx(values, **TOL), key
    assert len(one_history["eval_mean_score"]) == 6 and len(one_history["loss_t_classification"]) > 10
    # DWA's weights (from the epochs before the last) come from the same loss history
    final = one["weighting"]["final_weights"]
    assert final != pytest.approx(dict.fromkeys(final, 1.0), abs=1e-2)
    assert two["weighting"]["final_weights"] == pytest.approx(final, **TOL)
    for split in ("validation", "test"):
        for name in one["tasks"]:
            assert two[split][name] == pytest.approx(one[split][name], **TOL), (split, name)
    assert two["validation"]["mean_score"] > 0.9  # both tasks learn


def test_ranks_that_disagree_on_the_batches_stop_with_a_clear_error(tmp_path: Path) -> None:
    assert_ranks_disagree(tmp_path / "disagree.py", "same_on_every_rank('same', 'the task batches', hint='-')\n",
                          "same_on_every_rank('a' if rank == 0 else 'b', 'the task batches', hint='-')", "the task batches")
