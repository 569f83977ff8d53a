"""Kubeflow components: one thin lightweight component per stage.

kfp embeds each function's source in the compiled pipeline and runs it in the image
`kubeflow.image:kubeflow.tag` (components/Dockerfile), so every body imports inside and makes one
call to `unitask.kubeflow.runtime`, where the work is done and tested. Inputs are the params.yaml
config (`params`: the validated params.yaml as one YAML string, and `seed`; `pipeline_run`: the
Kubeflow run, whose MLflow parent run the stage runs nest under) and the artifacts of the
stages before it; outputs are typed artifacts. `build(image)` turns the functions into components for one image.

Training stages also output `reports`, a Dataset holding what the stage wrote under paths.reports
(test predictions, metrics files) at its path in the project, which evaluate merges. A new stage is
one more function here, registered in STAGES, and one more `run_<stage>` in the runtime.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def plan(params: str, seed: int, pipeline_run: str) -> list:
    """The tasks to fine-tune (finetune.tasks, or every text task): the ParallelFor's items."""
    from unitask.kubeflow.runtime import run_plan

    return run_plan(params, seed, pipeline_run)


def prepare(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Output[Dataset],
    metrics: Output[Metrics],
):
    """Fetch every task's source and write seeded train/validation/test splits."""
    from unitask.kubeflow.runtime import run_prepare

    run_prepare(params, seed, pipeline_run, dataset, metrics)


def validate(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    data_docs: Output[Artifact],
):
    """The data gate: great-expectations suites per task; a failed `error` check fails the run."""
    from unitask.kubeflow.runtime import run_validate

    run_validate(params, seed, pipeline_run, dataset, metrics, report, data_docs)


def pretrain(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    encoder: Output[Model],
    metrics: Output[Metrics],
):
    """Continued pretraining (masked-LM or causal-LM) of the encoder on the train splits."""
    from unitask.kubeflow.runtime import run_pretrain

    run_pretrain(params, seed, pipeline_run, dataset, encoder, metrics)


def baseline(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    reports: Output[Dataset],
    metrics: Output[Metrics],
):
    """TF-IDF + linear model per text classification/regression task: the bar the encoders must beat."""
    from unitask.kubeflow.runtime import run_baseline

    run_baseline(params, seed, pipeline_run, dataset, reports, metrics)


def finetune(
    task: str,
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    encoder: Input[Model],
    finetuned: Output[Model],
    reports: Output[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
):
    """One task's head trained on the (pre)trained encoder; validation and test metrics, test predictions
    and (classification tasks) the test confusion matrix."""
    from unitask.kubeflow.runtime import run_finetune

    run_finetune(task, params, seed, pipeline_run, dataset, encoder, finetuned, reports, metrics, confusion)


def multitask(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    encoder: Input[Model],
    multitask_model: Output[Model],
    reports: Output[Dataset],
    metrics: Output[Metrics],
):
    """One encoder with a head per text task, trained jointly; per-task metrics and test predictions."""
    from unitask.kubeflow.runtime import run_multitask

    run_multitask(params, seed, pipeline_run, dataset, encoder, multitask_model, reports, metrics)


def fusion(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    encoder: Input[Model],
    fusion_model: Output[Model],
    reports: Output[Dataset],
    metrics: Output[Metrics],
):
    """A late-fusion text+image model per task in fusion.tasks (and the text-only and image-only baselines)."""
    from unitask.kubeflow.runtime import run_fusion

    run_fusion(params, seed, pipeline_run, dataset, encoder, fusion_model, reports, metrics)


def llm(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    llm_model: Output[Model],
    reports: Output[Dataset],
    metrics: Output[Metrics],
):
    """One decoder LLM with LoRA on every text task (text to text), and its zero-shot base model."""
    from unitask.kubeflow.runtime import run_llm

    run_llm(params, seed, pipeline_run, dataset, llm_model, reports, metrics)


def evaluate(
    params: str,
    seed: int,
    pipeline_run: str,
    baseline_reports: Input[Dataset],
    finetune_reports: Input[List[Dataset]],
    multitask_reports: Input[Dataset],
    fusion_reports: Input[Dataset],
    llm_reports: Input[Dataset],
    multitask_model: Input[Model],
    fusion_model: Input[Model],
    llm_model: Input[Model],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    comparison: Output[HTML],
) -> bool:
    """Score every model's test predictions alike and compare them (and the multi-task model with the
    fine-tunes); return the gate: whether the served model would replace the registry's champion."""
    from unitask.kubeflow.runtime import run_evaluate

    reports = [baseline_reports, *finetune_reports, multitask_reports, fusion_reports, llm_reports]
    return run_evaluate(params, seed, pipeline_run, reports, multitask_model, fusion_model, llm_model, evaluation, metrics,
                        comparison)


def register(
    params: str,
    seed: int,
    pipeline_run: str,
    dataset: Input[Dataset],
    multitask_model: Input[Model],
    fusion_model: Input[Model],
    llm_model: Input[Model],
    evaluation: Input[Dataset],
    metrics: Output[Metrics],
    card: Output[Markdown],
):
    """Register one MLflow pyfunc over the multi-task, fusion and (for the tasks register.routes gives it)
    LLM models; move the aliases by the gate."""
    from unitask.kubeflow.runtime import run_register

    run_register(params, seed, pipeline_run, dataset, multitask_model, fusion_model, llm_model, evaluation, metrics, card)


STAGES = {
    "plan": plan, "prepare": prepare, "validate": validate, "pretrain": pretrain, "baseline": baseline,
    "finetune": finetune, "multitask": multitask, "fusion": fusion, "llm": llm, "evaluate": evaluate, "register": register,
}  # fmt: skip


def build(image: str) -> dict:
    """The components, running in `image` (which has unitask and kfp installed: no pip at runtime)."""
    return {
        name: dsl.component(func, base_image=image, install_kfp_package=False) for name, func in STAGES.items()
    }
