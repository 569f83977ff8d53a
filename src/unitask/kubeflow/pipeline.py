"""The unitask pipeline for Kubeflow: a task per step of `unitask.graph`, reading the outputs of the
earlier steps its deps name, so it is the graph dvc.yaml runs (prepare@<task> -> validate@<task> ->
pretrain -> baseline, finetune@<task>, multitask, llm, fusion -> multitask_comparison, evaluate ->
register). A cluster runs the steps that do not wait on one another side by side.

Pipeline parameters: `params`, the validated config as one YAML string (what params.yaml and --set
gave; every pod loads exactly it), and `seed`, the scalar people change per run in the UI. The
`kubeflow` section shapes the pods: image, CPU/memory requests, GPUs with node selector and
tolerations, retries, caching, and the Kubernetes secrets that carry the MLflow URI and S3
credentials (by name: no secret value is ever compiled in).
"""

from typing import Any

from unitask.config import Config
from unitask.kubeflow.settings import Kubeflow, KubeflowStage, kubeflow_settings
from unitask.errors import ConfigError
from unitask.graph import Step, reads, steps
from unitask.kubeflow import components
from unitask.kubeflow.pods import pod

Plan = list[tuple[Step, list[tuple[Step, str]]]]


def plan(cfg: Config, stages: list[str] | None = None) -> Plan:
    """Each step with the (earlier step, output kind) pairs it reads; with `stages`, only their steps
    and the steps they need."""
    every = steps(cfg)
    for i, step in enumerate(every):
        for later, _ in reads(step, every[i + 1:]):
            raise ConfigError(f"stage {step.stage.name} reads an output of {later.stage.name}, declared after it",
                              hint="declare a stage after the stages it reads from (src/unitask/stages.py)")  # fmt: skip
    planned = [(step, reads(step, every[:i])) for i, step in enumerate(every)]
    if not stages:
        return planned
    unknown = sorted(set(stages) - {s.stage.name for s in every})
    if unknown:
        raise ConfigError(f"no stage {unknown[0]} in this pipeline", hint=f"stages: {', '.join(dict.fromkeys(s.stage.name for s in every))}")
    needed = {s.name for s in every if s.stage.name in stages}
    for step, read in reversed(planned):
        if step.name in needed:
            needed.update(p.name for p, _ in read)
    return [(step, read) for step, read in planned if step.name in needed]


def place(task: Any, settings: KubeflowStage, kf: Kubeflow) -> Any:
    """Resources, placement, retries, caching and secrets of one task."""
    from kfp import kubernetes

    if settings.distributed:
        # this step only launches the TrainJob/PyTorchJob (whose nodes get the resources) and waits on it;
        # the workspace volume carries inputs to the nodes and their outputs back
        task.set_cpu_request("500m").set_memory_request("2Gi")
        kubernetes.mount_pvc(task, pvc_name=kf.jobs.workspace_pvc, mount_path=kf.jobs.mount_path)
    else:
        task.set_cpu_request(settings.cpu).set_memory_request(settings.memory)
        if settings.cpu_limit:
            task.set_cpu_limit(settings.cpu_limit)
        if settings.memory_limit:
            task.set_memory_limit(settings.memory_limit)
    if settings.gpus and not settings.distributed:
        task.set_accelerator_type(kf.accelerator_type).set_accelerator_limit(settings.gpus)
        for key, value in kf.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in kf.tolerations:
            kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect,
                                      toleration_seconds=tol.toleration_seconds)  # fmt: skip
    if settings.retries:
        task.set_retry(num_retries=settings.retries, backoff_duration=kf.retry.backoff_duration,
                       backoff_factor=kf.retry.backoff_factor, backoff_max_duration=kf.retry.backoff_max_duration)  # fmt: skip
    task.set_caching_options(enable_caching=settings.caching)
    for secret in (kf.mlflow_secret, kf.s3_secret):
        if secret is not None:
            kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=dict(secret.keys), optional=secret.optional)
    return task


def build_pipeline(cfg: Config, arguments: dict[str, Any], stages: list[str] | None = None) -> Any:
    """The pipeline (a kfp GraphComponent) for `cfg`: `arguments` the default of each pipeline
    parameter (project.pipeline_arguments); `stages` as in `plan`."""
    from kfp import dsl

    kf = kubeflow_settings(cfg)
    planned = plan(cfg, stages)
    ops = components.build(planned, kf.image_ref)

    # kfp reads this function's annotations as types: no `from __future__ import annotations` here
    @dsl.pipeline(name=kf.pipeline_name, description="unitask: " + ", ".join(dict.fromkeys(s.stage.name for s, _ in planned)))
    def unitask(params: str = arguments["params"], seed: int = arguments["seed"]):
        # every stage's MLflow runs nest under one parent run per Kubeflow run (tracking.pipeline_run)
        config = {"params": params, "seed": seed, "pipeline_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        tasks: dict[str, Any] = {}
        for step, read in planned:
            inputs = {components.input_name(p, kind): tasks[p.name].outputs[kind] for p, kind in read}
            task = ops[step.name](**config, **inputs).set_display_name(step.name)
            tasks[step.name] = place(task, pod(kf, step.stage.name), kf)

    return unitask
