"""The same `unitask pretrain` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU) matches one
process with the same global batch, and only rank 0 writes the encoder, the metrics and the MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_BERT, text_project, torchrun

from unitask.config import load_config
from unitask.tracking import tracking_uri

GLOBAL_BATCH = 16
# causal-LM on a BERT decoder without dropout: the labels are the inputs, so with the same examples
# per step (UnitaskTrainer's sampler) and the loss a mean over the global batch's tokens
# (average_tokens_across_devices) the runs differ only by the order of float sums. Masked-LM would
# also differ by its random masks, drawn per process.
# 168 rows: 160 train texts after the held-out 5%, ten full global batches an epoch. A last, short
# global batch would differ: under DDP each process's share is filled up with examples from the
# start of the epoch (accelerate's even_batches), where one process trains on the short batch.
SIZES = (168, 40, 40)
MODEL = {"backbone_config": {**TINY_BERT, "is_decoder": True, "hidden_dropout_prob": 0.0,
                             "attention_probs_dropout_prob": 0.0}, "max_length": 64}
PRETRAIN = {"enabled": True, "objective": "clm", "max_steps": 30, "learning_rate": 3e-3, "warmup_ratio": 0.0,
            "logging_steps": 5, "eval_batch_size": 16, "bf16": False}
TOL = {"rel": 1e-4}


def outputs(params: Path) -> tuple[dict, dict[str, str], list[float]]:
    """The stage's metrics JSON, and params and training losses of its single MLflow run."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    losses = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "loss")]
    return json.loads((params.parent / "reports" / "pretrain.json").read_text()), run.data.params, losses


@pytest.mark.usefixtures("single_thread")
def test_two_process_ddp_matches_one_process(tmp_path: Path) -> None:
    from unitask.training.pretrain import pretrain

    one_params = text_project(tmp_path / "one", "classification", sizes=SIZES, model=MODEL,
                              pretrain={**PRETRAIN, "batch_size": GLOBAL_BATCH})
    pretrain(load_config(one_params))
    one, _, one_losses = outputs(one_params)

    params = text_project(tmp_path / "ddp", "classification", sizes=SIZES, model=MODEL,
                          pretrain={**PRETRAIN, "batch_size": GLOBAL_BATCH // 2})
    done = torchrun("pretrain", "--params", str(params))
    assert done.stdout.count("held-out perplexity") == 1  # only rank 0 reports
    two, two_params, two_losses = outputs(params)  # exactly one MLflow run: rank 0's
    assert two_params["pretrain.batch_size"] == str(GLOBAL_BATCH // 2)
    assert (params.parent / "models" / "pretrained" / "model.safetensors").is_file()

    assert one["corpus"]["train_texts"] == 160 and two["corpus"] == one["corpus"]
    assert two["steps"] == one["steps"] == 30
    assert len(one_losses) == 6 and two_losses == pytest.approx(one_losses, **TOL)
    assert two["train_loss"] == pytest.approx(one["train_loss"], **TOL)
    assert two["heldout"] == pytest.approx(one["heldout"], **TOL)
    assert two["heldout"]["perplexity_after"] < one["heldout"]["perplexity_before"] / 2  # it learns

