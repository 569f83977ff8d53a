"""`unitask llm` under `torchrun --nproc_per_node=2` (DDP, gloo on CPU) matches one process with the
same global batch: the same adapter weights, losses and metrics; only rank 0 scores (once) and writes
the adapter, the predictions, the metrics and the MLflow run. And the FSDP wiring (`llm.fsdp`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_ranks_disagree, torchrun
from test_llm import llm_project, tiny_llm  # noqa: F401  (tiny_llm: the tiny random-init Llama fixture)

from unitask.config import load_config
from unitask.errors import ConfigError
from unitask.tracking import tracking_uri

GLOBAL_BATCH = 8
# no LoRA dropout (the tiny Llama has none elsewhere): with the same rows per step (the task sampler's
# shards) and the loss a mean over the global batch's answer tokens, the runs differ only by the
# order of float sums and by the padding of each shard. Measured (2 cores, load ~6): losses 1.8e-7
# relative at most, adapter weights 8.4e-7 of each tensor's largest value. TOL and the adapter's
# allclose leave room for other CPUs and BLAS and still fail for per-rank mean losses (each rank's
# mean over its own answer tokens, averaged by DDP): losses 1.4e-4 off, adapter weights 8% off.
SETTINGS = {"max_steps": 8, "logging_steps": 2, "lora": {"dropout": 0.0}}
TOL = {"rel": 1e-5, "abs": 1e-6}
WEIGHTS_TOL = {"rtol": 1e-4, "atol": 1e-6}
# answers of 2 to 4 tokens (with the end token): the ranks' shards hold different numbers of them
LONG_LABELS = {"sports": "sports", "tech": "computers and technology", "food": "food and drink"}


def long_label_project(root: Path, model: Path, **llm: object) -> Path:
    """`llm_project` with the classification task's labels renamed to words of 1 to 4 tokens, so that
    the ranks' shards of a batch hold different numbers of answer tokens."""
    import pandas as pd
    import yaml

    params = llm_project(root, model, **llm)
    raw = yaml.safe_load(params.read_text())
    raw["tasks"]["class"]["labels"] = [LONG_LABELS[label] for label in raw["tasks"]["class"]["labels"]]
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    for split in (root / "data" / "prepared" / "class").glob("*.parquet"):
        frame = pd.read_parquet(split)
        frame.assign(label=frame["label"].map(LONG_LABELS)).to_parquet(split, index=False)
    return params


def outputs(params: Path) -> tuple[dict, dict[str, str], list[float], dict]:
    """The stage's metrics JSON, its single MLflow run's params and training losses, and the adapter."""
    import mlflow
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    mlflow.set_tracking_uri(tracking_uri(load_config(params)))
    (run,) = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    losses = [m.value for m in MlflowClient().get_metric_history(run.info.run_id, "loss")]
    adapter = load_file(params.parent / "models" / "llm" / "adapter_model.safetensors")
    return json.loads((params.parent / "reports" / "llm.json").read_text()), run.data.params, losses, adapter


@pytest.mark.usefixtures("single_thread")
def test_two_process_ddp_matches_one_process(tmp_path: Path, tiny_llm: Path) -> None:  # noqa: F811
    import torch

    from unitask.evaluation.predictions import read_predictions
    from unitask.llm.train import llm

    one_params = long_label_project(tmp_path / "one", tiny_llm, batch_size=GLOBAL_BATCH, **SETTINGS)
    llm(load_config(one_params))
    one, _, one_losses, one_adapter = outputs(one_params)

    params = long_label_project(tmp_path / "ddp", tiny_llm, batch_size=GLOBAL_BATCH // 2, **SETTINGS)
    done = torchrun("llm", "--params", str(params))
    # rank 0 alone scores llm_zeroshot and llm and reports them
    assert done.stdout.count("unitask: llm_zeroshot class test") == 1 and done.stdout.count("class\ttest macro_f1") == 1
    two, two_params, two_losses, two_adapter = outputs(params)  # exactly one MLflow run: rank 0's
    assert two_params["world_size"] == "2" and float(two_params["llm.batch_size"]) == GLOBAL_BATCH // 2
    assert two["train"]["world_size"] == 2 and one["train"]["world_size"] == 1
    for model in ("llm", "llm_zeroshot"):  # every test row once, with the label probabilities one process gives
        _, two_rows = read_predictions(load_config(params), model, "class")
        _, one_rows = read_predictions(load_config(one_params), model, "class")
        assert len(two_rows) == 12
        for got, want in zip(two_rows, one_rows, strict=True):
            assert got["label"] == want["label"] and got["scores"] == pytest.approx(want["scores"], **TOL), model

    assert two["train"]["steps"] == one["train"]["steps"] == 8
    assert len(one_losses) == 5 and two_losses == pytest.approx(one_losses, **TOL)
    assert two["train"]["loss"] == pytest.approx(one["train"]["loss"], **TOL)
    assert two_adapter.keys() == one_adapter.keys()
    for key, weight in one_adapter.items():
        assert torch.allclose(two_adapter[key], weight, **WEIGHTS_TOL), key
    assert two["zeroshot"] == one["zeroshot"] | {"seconds": two["zeroshot"]["seconds"]}  # the same base model
    for split in ("validation", "test"):
        for name in ("class", "regre"):
            assert two[split][name] == pytest.approx(one[split][name], **TOL), (split, name)
    assert one_losses[-1] < one_losses[0]  # it learns


def test_ranks_with_different_weights_stop_with_a_clear_error(tmp_path: Path) -> None:
    """The check behind 'both ranks end with the same adapter': a process that trained alone is caught."""
    setup = (
        "torch.manual_seed(0)\n"
        "layer = torch.nn.Linear(4, 2)\n"
        "layer.bias.requires_grad_(False)\n"
        "same_on_every_rank(weights_fingerprint(layer), 'the weights', hint='-')\n"
        "with torch.no_grad():\n"
        "    layer.bias += rank  # frozen: not part of the fingerprint\n"
        "same_on_every_rank(weights_fingerprint(layer), 'the weights', hint='-')\n"
        "with torch.no_grad():\n"
        "    layer.weight[0, 0] += 1e-7 * rank\n"
    )
    assert_ranks_disagree(tmp_path / "apart.py", setup, "same_on_every_rank(weights_fingerprint(layer), 'the weights', hint='-')",
                          "the weights")


def test_fsdp_config_builds_accelerates_fsdp2_plugin_and_is_refused_on_cpu(tmp_path: Path, tiny_llm: Path) -> None:  # noqa: F811
    """llm.fsdp -> TrainingArguments(fsdp, fsdp_config) -> accelerate's FullyShardedDataParallelPlugin,
    as Trainer builds it; on a machine without GPUs the stage refuses it (accelerate would run DDP)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    from unitask.llm.train import training_settings

    fsdp = {"enabled": True, "reshard_after_forward": False, "cpu_offload": True, "activation_checkpointing": True}
    cfg = load_config(llm_project(tmp_path, tiny_llm, fsdp=fsdp))
    with pytest.raises(ConfigError, match="llm.fsdp.enabled: FSDP needs GPUs") as err:
        training_settings(cfg)
    assert "set llm.fsdp.enabled to false on CPU" in err.value.hint

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **cfg.llm.fsdp.training_arguments())
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)  # what Trainer hands accelerate
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is False and plugin.activation_checkpointing is True
    assert plugin.cpu_offload is not None and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy is not None  # transformer-based: the model's decoder layers
    default = load_config(llm_project(tmp_path / "off", tiny_llm))
    assert default.llm.fsdp.training_arguments() == {} and "fsdp" not in training_settings(default)  # default: DDP
    with pytest.raises(ConfigError, match="cpu_ofload"):
        load_config(llm_project(tmp_path / "typo", tiny_llm, fsdp={"enabled": True, "cpu_ofload": True}))


def test_a_distributed_llm_stage_runs_as_a_trainjob(tmp_path: Path, tiny_llm: Path, monkeypatch) -> None:  # noqa: F811
    """`kubeflow.stages.llm.nodes=2` compiles to a launching step on the workspace volume, and the
    component runs `torchrun -m unitask.cli llm` as a TrainJob there (a Trainer double runs it here),
    waits for it and exports what it wrote, as the other training stages do."""
    import yaml
    from test_cluster import Artifact, TrainerDouble, compiles_to_a_launcher

    from unitask.kubeflow import jobs, runtime, schemas
    from unitask.kubeflow.project import pipeline_arguments

    volume = tmp_path / "volume"
    volume.mkdir()
    params = llm_project(tmp_path, tiny_llm, max_steps=2, zeroshot=False)
    raw = yaml.safe_load(params.read_text())
    raw["kubeflow"] = {"stages": {"llm": {"nodes": 2, "procs_per_node": 2, "gpus": 1}}, "jobs": {"mount_path": str(volume)}}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    compiles_to_a_launcher(params, "llm", volume)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(params)
    manifest = jobs.job_manifest(cfg, "llm", ["llm", "--params", "/w/params.yaml"], jobs.job_name("llm", "run-1"))
    assert schemas.manifest_errors(manifest) == []
    assert manifest["spec"]["trainer"]["numProcPerNode"] == 2 and manifest["spec"]["trainer"]["numNodes"] == 2
    arguments = pipeline_arguments(cfg, local=True)
    art = {name: Artifact(tmp_path / "artifacts" / name) for name in ("prepared", "model", "data", "metrics")}
    shutil.copytree(cfg.path(cfg.paths.prepared), Path(art["prepared"].path) / cfg.paths.prepared)  # prepare's output
    api = TrainerDouble([])
    monkeypatch.setattr(jobs, "custom_objects_api", lambda: api)
    monkeypatch.setattr(jobs, "current_namespace", lambda default="default": "team")
    runtime.run_stage("llm", None, arguments["params"], arguments["seed"], "", [art["prepared"]],
                      {"model": art["model"], "data": art["data"]}, art["metrics"])  # fmt: skip
    assert [verb for verb, _, plural in api.calls if plural == "trainjobs"][:2] == ["create", "get"]
    assert (Path(art["model"].path) / cfg.llm.output / "adapter_model.safetensors").is_file()
    report = json.loads((Path(art["data"].path) / cfg.llm.metrics).read_text())
    assert report["train"]["steps"] == 2
    assert art["metrics"].metadata["test.class.macro_f1"] == pytest.approx(report["test"]["class"]["macro_f1"])
    assert list(volume.iterdir()) == []  # the job's workspace is removed afterwards
