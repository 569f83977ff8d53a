"""The unitask pipeline: prepare -> validate (the gate) -> pretrain -> finetune (a ParallelFor over the
tasks) -> multitask -> fusion -> evaluate -> register (under a dsl.If on evaluate's gate).

The DAG follows the data, as dvc.yaml does: after the gate, the TF-IDF baseline and, after pretrain,
the fine-tunes, the multi-task and the fusion models all need only the data and the encoder, so a
cluster runs them side by side; evaluate collects every model's test predictions (the fine-tuning
loop's through dsl.Collected) and returns the registry gate; register runs only when it says the
served model beats the champion.

Pipeline parameters: `params`, the validated config as one YAML string (what params.yaml and --set
gave; every pod loads exactly it), and `seed`, the scalar people change per run in the UI. The
`kubeflow` section shapes the pods: image, CPU/memory requests, GPUs with node selector and
tolerations, retries, caching, and the Kubernetes secrets that carry the MLflow URI and S3
credentials (by name: no secret value is ever compiled in).

`unitask pipeline compile | run-local | submit` call `build_pipeline` (src/unitask/kubeflow/project.py).
"""

from typing import Any

from kfp import dsl, kubernetes


def place(task: Any, stage: str, kf: Any, display_name: str) -> Any:
    """Resources, placement, retries, caching and secrets of one task, from `kubeflow`."""
    settings = getattr(kf.stages, stage)
    task.set_display_name(display_name)
    if settings.distributed:
        # this step only launches the TrainJob/PyTorchJob (whose nodes get the resources) and waits on it;
        # the workspace volume carries inputs to the nodes and their outputs back
        task.set_cpu_request("500m").set_memory_request("2Gi")
        kubernetes.mount_pvc(task, pvc_name=kf.jobs.workspace_pvc, mount_path=kf.jobs.mount_path)
    else:
        task.set_cpu_request(settings.cpu).set_memory_request(settings.memory)
    if settings.cpu_limit and not settings.distributed:
        task.set_cpu_limit(settings.cpu_limit)
    if settings.memory_limit and not settings.distributed:
        task.set_memory_limit(settings.memory_limit)
    if settings.gpus and not settings.distributed:
        task.set_accelerator_type(kf.accelerator_type).set_accelerator_limit(settings.gpus)
        for key, value in kf.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in kf.tolerations:
            kubernetes.add_toleration(
                task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect,
                toleration_seconds=tol.toleration_seconds,
            )
    if settings.retries:
        task.set_retry(
            num_retries=settings.retries,
            backoff_duration=kf.retry.backoff_duration,
            backoff_factor=kf.retry.backoff_factor,
            backoff_max_duration=kf.retry.backoff_max_duration,
        )
    task.set_caching_options(enable_caching=settings.caching)
    for secret in (kf.mlflow_secret, kf.s3_secret):
        if secret is not None:
            kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=dict(secret.keys), optional=secret.optional)
    return task


def build_pipeline(cfg: Any, ops: dict, arguments: dict, parallelism: int | None = None) -> Any:
    """The pipeline for config `cfg`: `ops` from components.build(image), `arguments` the default of
    each pipeline parameter (project.pipeline_arguments), `parallelism` of the fine-tuning loop
    (default kubeflow.finetune_parallelism)."""
    kf = cfg.kubeflow
    loop_parallelism = kf.finetune_parallelism if parallelism is None else parallelism

    @dsl.pipeline(
        name=kf.pipeline_name,
        description="unitask: prepare -> validate -> pretrain -> finetune (one task per ParallelFor iteration) "
        "-> multitask -> fusion -> evaluate -> register (when the gate passes)",
    )
    def unitask(params: str = arguments["params"], seed: int = arguments["seed"]):
        # every stage's MLflow runs nest under one parent run per Kubeflow run (tracking.pipeline_run)
        config = {"params": params, "seed": seed, "pipeline_run": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        plan = ops["plan"](**config)
        plan.set_display_name("plan").set_cpu_request("500m").set_memory_request("1Gi")
        plan.set_caching_options(enable_caching=kf.stages.prepare.caching)

        data = ops["prepare"](**config)
        place(data, "prepare", kf, "fetch + prepare")
        dataset = data.outputs["dataset"]

        gate = ops["validate"](**config, dataset=dataset)
        place(gate, "validate", kf, "validate (gate)")

        pretrained = ops["pretrain"](**config, dataset=dataset)
        place(pretrained.after(gate), "pretrain", kf, "pretrain")
        encoder = pretrained.outputs["encoder"]

        base = ops["baseline"](**config, dataset=dataset)
        place(base.after(gate), "baseline", kf, "TF-IDF baseline")

        with dsl.ParallelFor(plan.outputs["Output"], parallelism=loop_parallelism) as task:
            tuned = ops["finetune"](task=task, **config, dataset=dataset, encoder=encoder)
            place(tuned.after(gate), "finetune", kf, "finetune")

        joint = ops["multitask"](**config, dataset=dataset, encoder=encoder)
        place(joint.after(gate), "multitask", kf, "multitask")

        fused = ops["fusion"](**config, dataset=dataset, encoder=encoder)
        place(fused.after(gate), "fusion", kf, "fusion")

        lm = ops["llm"](**config, dataset=dataset)
        place(lm.after(gate), "llm", kf, "LLM (LoRA)")

        scored = ops["evaluate"](
            **config,
            baseline_reports=base.outputs["reports"],
            finetune_reports=dsl.Collected(tuned.outputs["reports"]),
            multitask_reports=joint.outputs["reports"],
            fusion_reports=fused.outputs["reports"],
            llm_reports=lm.outputs["reports"],
            multitask_model=joint.outputs["multitask_model"],
            fusion_model=fused.outputs["fusion_model"],
            llm_model=lm.outputs["llm_model"],
        )
        place(scored, "evaluate", kf, "evaluate")

        # a bool output compared with True: kfp's local runner resolves a component's single output in a
        # condition, but not a NamedTuple field
        with dsl.If(scored.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 - a pipeline condition
            registered = ops["register"](
                **config, dataset=dataset, multitask_model=joint.outputs["multitask_model"],
                fusion_model=fused.outputs["fusion_model"], llm_model=lm.outputs["llm_model"],
                evaluation=scored.outputs["evaluation"],
            )
            place(registered, "register", kf, "register")

    return unitask
