"""Kubeflow components: one thin lightweight component per stage.

kfp embeds each function's source in the compiled pipeline and runs it in the image
`kubeflow.image:kubeflow.tag` (components/Dockerfile), so every body imports inside and makes one
call to `unitask.kubeflow.runtime`, where the work is done and tested. Inputs are the params.yaml
sections the stage reads (as dicts) and the artifacts of the stages before it; outputs are typed
artifacts. `build(image)` turns the functions into components for one image.

A new stage (multitask, fusion, evaluate, register) is one more function here, registered in
STAGES, and one more `run_<stage>` in the runtime.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output


def plan(finetune: dict, tasks: dict) -> list:
    """The tasks to fine-tune (finetune.tasks, or every text task): the ParallelFor's items."""
    from unitask.kubeflow.runtime import run_plan

    return run_plan({"finetune": finetune, "tasks": tasks})


def prepare(seed: int, tracking: dict, prepare: dict, tasks: dict, dataset: Output[Dataset], metrics: Output[Metrics]):
    """Fetch every task's source and write seeded train/validation/test splits."""
    from unitask.kubeflow.runtime import run_prepare

    run_prepare({"seed": seed, "tracking": tracking, "prepare": prepare, "tasks": tasks}, dataset, metrics)


def validate(
    tracking: dict,
    model: dict,
    validate: dict,
    tasks: dict,
    dataset: Input[Dataset],
    metrics: Output[Metrics],
    report: Output[HTML],
    data_docs: Output[Artifact],
):
    """The data gate: great-expectations suites per task; a failed `error` check fails the run."""
    from unitask.kubeflow.runtime import run_validate

    sections = {"tracking": tracking, "model": model, "validate": validate, "tasks": tasks}
    run_validate(sections, dataset, metrics, report, data_docs)


def pretrain(
    seed: int,
    tracking: dict,
    model: dict,
    pretrain: dict,
    tasks: dict,
    dataset: Input[Dataset],
    encoder: Output[Model],
    metrics: Output[Metrics],
):
    """Continued pretraining (masked-LM or causal-LM) of the encoder on the train splits."""
    from unitask.kubeflow.runtime import run_pretrain

    sections = {"seed": seed, "tracking": tracking, "model": model, "pretrain": pretrain, "tasks": tasks}
    run_pretrain(sections, dataset, encoder, metrics)


def finetune(
    task: str,
    seed: int,
    tracking: dict,
    model: dict,
    pretrain: dict,
    finetune: dict,
    tasks: dict,
    dataset: Input[Dataset],
    encoder: Input[Model],
    finetuned: Output[Model],
    metrics: Output[Metrics],
):
    """One task's head trained on the (pre)trained encoder; validation and test metrics."""
    from unitask.kubeflow.runtime import run_finetune

    sections = {"seed": seed, "tracking": tracking, "model": model, "pretrain": pretrain, "finetune": finetune, "tasks": tasks}
    run_finetune(task, sections, dataset, encoder, finetuned, metrics)


STAGES = {"plan": plan, "prepare": prepare, "validate": validate, "pretrain": pretrain, "finetune": finetune}


def build(image: str) -> dict:
    """The components, running in `image` (which has unitask and kfp installed: no pip at runtime)."""
    return {
        name: dsl.component(func, base_image=image, install_kfp_package=False) for name, func in STAGES.items()
    }
