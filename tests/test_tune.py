"""`unitask tune`: a tiny Optuna search beats a deliberately bad learning rate, trials are child MLflow
runs, the stage's outputs stay untouched, and the Katib Experiment is one Katib would accept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import text_project

from unitask.cli import build_parser, main
from unitask.config import load_config
from unitask.kubeflow.settings import kubeflow_settings
from unitask.kubeflow.schemas import katib_errors, load_kubectl
from unitask.tuning import metric_line
from unitask.tuning.katib import METRICS_FORMAT, experiment, write_experiment

pytestmark = pytest.mark.usefixtures("single_thread")

BAD_LR = 1e-7
TUNE = {
    "trials": 3, "seed": 0, "pruner_startup_trials": 2, "pruner_warmup": 3, "budget": {"max_train_rows": 150},
    "space": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": {"choices": [16, 32]},
              "weight_decay": {"low": 0.0, "high": 0.1}},
}  # fmt: skip


def tiny_project(root: Path) -> Path:
    return text_project(root, "classification", finetune={"learning_rate": BAD_LR, "epochs": 10}, tune=TUNE)


def test_tiny_search_beats_a_bad_learning_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    from unitask.tracking import tracking_uri
    from unitask.training.finetune import finetune

    params = tiny_project(tmp_path)
    assert main(["tune", "--stage", "finetune", "--task", "toy", "--params", str(params)]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^trial \d/3\t(complete|pruned)", out, re.M)) == 3, out
    best_file = tmp_path / "reports" / "tune" / "toy.yaml"
    best = yaml.safe_load(best_file.read_text())["tasks"]["toy"]["finetune"]
    assert set(best) == {"learning_rate", "batch_size", "weight_decay"} and best["batch_size"] in (16, 32)
    assert not (tmp_path / "models" / "finetune").exists() and not (tmp_path / "reports" / "finetune").exists()

    # the documented merge: the block under the task in params.yaml
    raw = yaml.safe_load(params.read_text())
    raw["tasks"]["toy"]["finetune"] = best
    params.write_text(yaml.safe_dump(raw))
    tuned_cfg = load_config(params)
    assert tuned_cfg.finetune_for("toy").learning_rate == best["learning_rate"] != BAD_LR
    # the default (bad) learning rate, trained like a trial (same rows, epochs, seed)
    bad = finetune(load_config(params, ["tasks.toy.finetune={}", "finetune.max_train_rows=150"]), "toy")

    mlflow.set_tracking_uri(tracking_uri(tuned_cfg))
    runs = mlflow.search_runs(experiment_names=["unitask"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("unitask.stage") == "tune" and "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert parent.data.metrics["best_value"] == max(c.data.metrics["best_macro_f1"] for c in children)
    assert parent.data.metrics["best_value"] >= bad["validation"]["macro_f1"] + 0.3, bad
    assert float(parent.data.params["best.learning_rate"]) == best["learning_rate"]
    assert all("eval_macro_f1" in c.data.metrics for c in children)


def test_pruning_stops_a_trailing_trial(tmp_path: Path) -> None:
    import optuna
    from transformers import TrainerControl

    from unitask.tuning.search import pruning_callback

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    for value in (0.9, 0.8):
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={1: value}))
    trial = study.ask()
    callback, control = pruning_callback(trial, "macro_f1"), TrainerControl()
    callback.on_evaluate(None, None, control, metrics={"eval_macro_f1": 0.1})
    assert callback.pruned and control.should_training_stop


def test_katib_experiment(tmp_path: Path) -> None:
    params = tiny_project(tmp_path)
    cfg = load_config(params)
    path = write_experiment(cfg, "toy", "macro_f1", tmp_path / "toy-katib.yaml")
    (manifest,) = load_kubectl(path.read_text())  # as kubectl sends it to Katib's webhook
    assert katib_errors(manifest) == []
    assert manifest == experiment(cfg, "toy", "macro_f1")  # the YAML round trip changes nothing
    spec = manifest["spec"]
    assert spec["objective"] == {"type": "maximize", "objectiveMetricName": "validation_macro_f1"}
    assert spec["algorithm"]["algorithmName"] == "tpe" and spec["maxTrialCount"] == TUNE["trials"]
    by_name = {p["name"]: p for p in spec["parameters"]}
    assert by_name["learning_rate"] == {"name": "learning_rate", "parameterType": "double",
                                        "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"}}
    assert by_name["batch_size"]["feasibleSpace"] == {"list": ["16", "32"]}
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == kubeflow_settings(cfg).image_ref

    # Katib's collector reads the metric from the line `unitask finetune` prints
    match = re.search(spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"][0], metric_line("macro_f1", 0.8125))
    assert match and match.group(1) == "validation_macro_f1" and float(match.group(2)) == 0.8125
    assert METRICS_FORMAT in spec["metricsCollectorSpec"]["source"]["filter"]["metricsFormat"]

    # a trial's command, as Katib substitutes it, is a valid `unitask finetune` call with those values
    values = {"learningRate": "0.00123", "batchSize": "32", "weightDecay": "0.05", "trialName": "toy-abc123"}
    command = [re.sub(r"\$\{trialParameters\.(\w+)\}", lambda m: values[m.group(1)], part) for part in container["command"]]
    assert command[:2] == ["unitask", "finetune"]
    args = build_parser().parse_args([*command[1:], "--params", str(params)])
    trial_cfg = load_config(args.params, args.overrides)
    ft = trial_cfg.finetune_for("toy")
    assert (ft.learning_rate, ft.batch_size, ft.weight_decay, ft.max_train_rows) == (0.00123, 32, 0.05, 150)
    assert trial_cfg.finetune.output == "models/tune/toy-abc123"  # parallel trials write apart


def test_katib_experiments_of_the_default_tasks(tmp_path: Path) -> None:
    """The Experiment of every default task `unitask tune` takes (the text tasks; easy_vqa, text+image, is
    fusion's), written and read back as kubectl reads it (YAML 1.2), is one Katib's models accept: the
    1e-05 lower bound of the learning rate stays a string."""
    from conftest import REPO

    from unitask.tasks.text import text_task

    cfg = load_config(REPO / "params.yaml")
    names = [name for name, task in cfg.tasks.items() if task.type != "multimodal_classification"]
    assert names == ["bbc_topic", "sms_spam", "trec_coarse", "movie_sentiment", "wnut_ner"]
    for name in names:
        path = write_experiment(cfg, name, text_task(cfg, name).main_metric, tmp_path / f"{name}-katib.yaml")
        (manifest,) = load_kubectl(path.read_text())
        assert katib_errors(manifest) == [], name
        lr = {p["name"]: p for p in manifest["spec"]["parameters"]}["learning_rate"]["feasibleSpace"]
        assert (lr["min"], lr["max"]) == ("1e-05", "0.0003")


@pytest.mark.parametrize(("kind", "container"), [("trainjob", "node"), ("pytorchjob", "pytorch")])
def test_distributed_katib_trials(tmp_path: Path, kind: str, container: str) -> None:
    """A fine-tune set to several processes makes each trial the TrainJob/PyTorchJob a pipeline would run."""
    params = tiny_project(tmp_path)
    cfg = load_config(params, [f"kubeflow.job_kind={kind}", "kubeflow.stages.finetune.nodes=2",
                               "kubeflow.stages.finetune.procs_per_node=2"])  # fmt: skip
    path = write_experiment(cfg, "toy", "macro_f1", tmp_path / "toy-katib.yaml")
    (manifest,) = load_kubectl(path.read_text())
    assert katib_errors(manifest) == []
    template = manifest["spec"]["trialTemplate"]
    trial = template["trialSpec"]
    assert trial["kind"] == {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob"}[kind] and "metadata" not in trial
    assert template["primaryContainerName"] == container and template["primaryPodLabels"]
    command = trial["spec"]["trainer"]["command"] if kind == "trainjob" else \
        trial["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "torchrun" and command[command.index("-m") + 1] == "unitask.cli"
    args = command[command.index("-m") + 2:]
    assert args[:3] == ["finetune", "--task", "toy"] and args[-2:] == ["--params", "/workspace/params.yaml"]
    assert "tasks.toy.finetune.learning_rate=${trialParameters.learningRate}" in args
    volumes = trial["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"]["spec"]["volumes"] if kind == "trainjob" else trial["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": cfg.tune.katib.workspace_pvc}} in volumes


def test_katib_validator_catches_planted_errors(tmp_path: Path) -> None:
    cfg = load_config(tiny_project(tmp_path), ["tune.space.learning_rate={low: 1.0e-5, high: 1.0e-2, log: true}"])
    manifest = experiment(cfg, "toy", "macro_f1")
    # the bug Katib's webhook answered with HTTP 400: PyYAML leaves 1e-05 unquoted, kubectl reads a number
    (unquoted,) = load_kubectl(yaml.safe_dump(manifest))
    assert katib_errors(unquoted) == ["Experiment/unitask-finetune-toy: V1beta1FeasibleSpace.min: Input should be a valid string"]

    def planted(edit: Any) -> list[str]:
        bad = load_kubectl(yaml.safe_dump(experiment(cfg, "toy", "macro_f1")).replace("min: 1e-05", "min: '1e-05'"))[0]
        assert katib_errors(bad) == []
        edit(bad)
        return katib_errors(bad)

    spec = lambda m: m["spec"]  # noqa: E731
    job = lambda m: m["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]  # noqa: E731
    assert "V1beta1ExperimentSpec.maxTrialCount: Input should be a valid integer" in planted(lambda m: spec(m).update(maxTrialCount="3"))[0]
    assert "spec.objective.objectiveMetricNames: unknown field of V1beta1ObjectiveSpec" in planted(
        lambda m: spec(m)["objective"].update(objectiveMetricNames=["x"]))[0]  # fmt: skip
    assert "trialSpec: Job/?: spec.template.spec.containers.0: Additional properties are not allowed ('imagePolicy'" in planted(
        lambda m: job(m)["containers"][0].update(imagePolicy="Always"))[0]  # fmt: skip
    assert planted(lambda m: job(m)["containers"][0]["command"].append("${trialParameters.momentum}")) == [
        "trialSpec uses undeclared trialParameters.momentum"
    ]


def test_tune_config_errors(tmp_path: Path) -> None:
    from unitask.errors import ConfigError

    params = tiny_project(tmp_path)
    with pytest.raises(ConfigError, match=r"tune.space.learning_rate.*low \(0.1\) must be below high"):
        load_config(params, ["tune.space.learning_rate={low: 0.1, high: 0.01}"])
    with pytest.raises(ConfigError, match=r"budget.*\['lr'\] are not finetune keys"):
        load_config(params, ["tune.budget={lr: 1}"])
    with pytest.raises(ConfigError, match="max_steps overrides epochs"):
        load_config(params, ["tune.space.epochs={choices: [1, 2]}", "tune.budget={max_steps: 10}"])
    with pytest.raises(ConfigError, match="tune.space.momentum"):
        load_config(params, ["tune.space.momentum={low: 0.1, high: 0.9}"])
