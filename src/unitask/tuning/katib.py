"""The Katib (Kubeflow's tuner) `Experiment` for the same search as `unitask tune`: search space,
metric, trial count and budget, with each trial a batch/v1 Job running `unitask finetune`.

A trial's pod mounts `tune.katib.workspace_pvc` (a checkout of the project with its prepared data
and encoder, e.g. after `dvc pull`) as its working directory, gets the MLflow and S3 Secrets as
environment variables like the pipeline's pods, and prints `validation_<metric>=<value>`, which
Katib's StdOut metrics collector reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from unitask.atomic import atomic_file
from unitask.config import Config
from unitask.kubeflow.schemas import dump_yaml
from unitask.config.tune import SearchRange, integer_key

CONTAINER = "training-container"
TRIAL_NAME = "trialName"
# Katib's StdOut collector: the first group is the metric name, the second its value
METRICS_FORMAT = r"([\w-]+)=([+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
JOB_SUCCEEDED = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'


def camel(key: str) -> str:
    """learning_rate -> learningRate (the trial parameter's name in `${trialParameters.NAME}`)."""
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def feasible_space(key: str, space: SearchRange) -> dict[str, Any]:
    """A Katib parameter's type and feasibleSpace (Katib takes the bounds as strings)."""
    if space.choices is not None:
        cast = int if integer_key(key) else float
        return {"parameterType": "categorical", "feasibleSpace": {"list": [str(cast(c)) for c in space.choices]}}
    if integer_key(key):
        return {"parameterType": "int", "feasibleSpace": {"min": str(int(space.low)), "max": str(int(space.high))}}
    bounds = {"min": str(space.low), "max": str(space.high)}
    return {"parameterType": "double", "feasibleSpace": {**bounds, **({"distribution": "logUniform"} if space.log else {})}}


def task_overrides(name: str, values: dict[str, Any]) -> list[str]:
    """`--set` items that give task `name` these finetune values (its own, so they win over the section's)."""
    return [f"tasks.{name}.finetune.{key}={_inline(value)}" for key, value in values.items()]


def _inline(value: Any) -> str:
    import yaml

    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def _trial_args(cfg: Config, name: str) -> list[str]:
    """`finetune --task NAME --set ...`: the trial's call after `unitask`, its values Katib's placeholders."""
    values = {**cfg.tune.budget, **{key: f"${{trialParameters.{camel(key)}}}" for key in cfg.tune.space}}
    args = ["finetune", "--task", name]
    for item in [*trial_paths(), *task_overrides(name, values)]:
        args += ["--set", item]
    return args


def _container(cfg: Config, name: str) -> dict[str, Any]:
    from unitask.kubeflow.jobs import resources, secret_env

    from unitask.kubeflow.settings import kubeflow_settings

    settings, kf = cfg.tune.katib, kubeflow_settings(cfg)
    return {
        "name": CONTAINER,
        "image": kf.image_ref,
        "command": ["unitask", *_trial_args(cfg, name)],
        "workingDir": settings.mount_path,
        "env": secret_env(kf),
        "resources": resources(kf, "finetune"),
        "volumeMounts": [{"name": "workspace", "mountPath": settings.mount_path}],
    }


def trial_paths() -> list[str]:
    """Overrides that give each trial its own outputs in the shared workspace (parallel trials)."""
    trial = f"${{trialParameters.{TRIAL_NAME}}}"
    return [f"finetune.output=models/tune/{trial}", f"finetune.checkpoints=models/checkpoints/tune/{trial}",
            f"paths.reports=reports/tune/trials/{trial}"]  # fmt: skip


# A trial that is a distributed job (kubeflow.stages.finetune.nodes x procs_per_node > 1): Katib's
# defaults for these kinds (pkg/apis/controller/experiments/v1beta1/constants.go), spelled out
DISTRIBUTED_TRIALS = {
    "trainjob": {"primaryContainerName": "node", "successCondition": 'status.conditions.#(type=="Complete")#|#(status=="True")#',
                 "primaryPodLabels": {"jobset.sigs.k8s.io/replicatedjob-name": "node", "batch.kubernetes.io/job-completion-index": "0"}},
    "pytorchjob": {"primaryContainerName": "pytorch", "successCondition": 'status.conditions.#(type=="Succeeded")#|#(status=="True")#',
                   "primaryPodLabels": {"training.kubeflow.org/job-role": "master"}},
}  # fmt: skip


def _trial_template(cfg: Config, name: str) -> dict[str, Any]:
    """How Katib runs one trial: a batch/v1 Job in one pod, or, for a distributed fine-tune, the same
    TrainJob/PyTorchJob a pipeline would launch (Katib's katib-config must list the kind in trialResources)."""
    from unitask.kubeflow.jobs import gpu_placement, job_manifest
    from unitask.kubeflow.pods import pod

    from unitask.kubeflow.settings import kubeflow_settings

    kf, settings = kubeflow_settings(cfg), cfg.tune.katib
    if pod(kf, "finetune").distributed:
        args = [*_trial_args(cfg, name), "--params", f"{settings.mount_path}/params.yaml"]
        job = job_manifest(cfg, "finetune", args, name="", workspace=(settings.workspace_pvc, settings.mount_path))
        del job["metadata"]  # Katib names each trial's job
        return {**DISTRIBUTED_TRIALS[kf.job_kind], "failureCondition": JOB_FAILED, "trialSpec": job}
    pod: dict[str, Any] = {
        "containers": [_container(cfg, name)],
        "restartPolicy": "Never",
        "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": settings.workspace_pvc}}],
        **gpu_placement(kf, "finetune"),
    }
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {
        "backoffLimit": 0, "template": {"metadata": {"annotations": {"sidecar.istio.io/inject": "false"}}, "spec": pod},
    }}  # fmt: skip
    return {"primaryContainerName": CONTAINER, "successCondition": JOB_SUCCEEDED, "failureCondition": JOB_FAILED, "trialSpec": job}


def experiment(cfg: Config, name: str, metric: str) -> dict[str, Any]:
    """The Experiment (kubeflow.org/v1beta1) for tuning task `name` on validation `metric`."""
    tune = cfg.tune
    template = _trial_template(cfg, name)
    trial_spec = template.pop("trialSpec")
    objective: dict[str, Any] = {"type": "maximize", "objectiveMetricName": f"validation_{metric}"}
    if tune.katib.goal is not None:
        objective["goal"] = tune.katib.goal
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": re.sub(r"[^a-z0-9-]+", "-", f"unitask-finetune-{name}".lower()).strip("-")},
        "spec": {
            "objective": objective,
            "algorithm": {"algorithmName": "tpe", "algorithmSettings": [{"name": "random_state", "value": str(tune.seed)}]},
            "parallelTrialCount": min(tune.katib.parallel_trials, tune.trials),
            "maxTrialCount": tune.trials,
            "maxFailedTrialCount": min(tune.katib.max_failed_trials, tune.trials),
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}, "source": {"filter": {"metricsFormat": [METRICS_FORMAT]}}},
            "parameters": [{"name": key, **feasible_space(key, space)} for key, space in tune.space.items()],
            "trialTemplate": {
                **template,
                "trialParameters": [
                    *({"name": camel(key), "description": f"finetune.{key} of {name}", "reference": key} for key in tune.space),
                    {"name": TRIAL_NAME, "description": "the trial's name: its output folders", "reference": "${trialSpec.Name}"},
                ],
                "trialSpec": trial_spec,
            },
        },
    }


def write_experiment(cfg: Config, name: str, metric: str, path: Path) -> Path:
    """Write the Experiment as YAML (apply with `kubectl apply -n <namespace> -f <path>`). Katib's bounds are
    strings that look like numbers: they are quoted, since kubectl reads YAML 1.2, where `1e-05` is a number."""
    with atomic_file(path) as tmp:
        tmp.write_text(dump_yaml(experiment(cfg, name, metric)), encoding="utf-8")
    return path
