"""Every pipeline stage, declared once. The three drivers are made from this table:

- the CLI: one `unitask <stage>` subcommand per entry (`unitask.cli`), its help and options from here;
- DVC: `dvc.yaml` is generated from it (`unitask dvc`; `unitask.dvcfile`), with the config keys each
  stage reads as `params`, the files it reads and writes, and as code deps the modules its function
  really imports (`unitask.codedeps`);
- Kubeflow: the pipeline is the steps of `unitask.graph` (the graph dvc.yaml runs), each a
  generated component that runs `unitask <stage>` in its pod (`unitask.kubeflow`), on the pod the
  declaration asks for (`pod`, and `trains` for a distributed job).

Adding a stage is one module with its function (`stage(cfg[, task])`) plus one `Stage` here; what
`unitask <stage>` prints is its body in `unitask.commands.STAGE_BODIES`, or the function's result. Paths in
`deps`/`outs`/`metrics` are format strings over the config (`{c.paths.prepared}`) and, in per-task
stages, the task (`{task}`, which DVC's foreach fills in).
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unitask.config import Config

# ---- what a stage reads from the config ---------------------------------------------------------

# the keys of a task that say what its data is (read by the data stages; its training settings,
# tasks.<task>.finetune and .multitask, are not data)
TASK_DATA_KEYS = ("type", "source", "read", "columns", "labels", "label_names", "label_range", "max_rows", "group",
                  "language")


def task_keys(cfg: Config, keys: tuple[str, ...], names: list[str] | None = None) -> list[str]:
    """`tasks.<task>.<key>` for each of `keys` that params.yaml sets, for every task (or `names`):
    DVC refuses a param key that is absent, and a key left at its default cannot change."""
    written = cfg.model_dump(mode="json", exclude_unset=True)["tasks"]
    return [f"tasks.{n}.{k}" for n in names or list(cfg.tasks) for k in keys if k in written[n]]


def task_data(cfg: Config) -> list[str]:
    return task_keys(cfg, TASK_DATA_KEYS)


Params = tuple[str | Callable[[Config], list[str]], ...]


# ---- the declaration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One extra command-line option of a stage's subcommand (argparse's arguments)."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


# Kubeflow pod defaults (`kubeflow.stages.<stage>` overrides any key; see unitask.kubeflow.settings.KubeflowStage)
SMALL_POD: dict[str, Any] = {"cpu": "2", "memory": "8Gi"}
TRAINING_POD: dict[str, Any] = {"cpu": "8", "memory": "32Gi", "gpus": 1}


class ModelPath(str):
    """An out that is a saved model: Kubeflow passes it on as a Model artifact (other outs as a Dataset)."""


RESUME = Option(("--resume",), {"action": "store_true", "help": "continue from the last complete checkpoint"})


def task_filter(verb: str) -> Option:
    return Option(("--task",), {"dest": "tasks", "action": "append", "metavar": "NAME",
                                "help": f"{verb} only this task (repeatable; default: all)"})  # fmt: skip


@dataclass(frozen=True)
class Stage:
    name: str  # the DVC stage; the CLI subcommand is the same with '-' for '_'
    summary: str  # one line for `unitask --help`
    description: str  # `unitask <stage> --help`
    function: str  # "module:function" that does the work: its imports are the stage's code deps
    options: tuple[Option, ...] = ()
    per_task: Callable[[Config], list[str]] | None = None  # a DVC foreach over these tasks, `--task` required
    runs: Callable[[Config], list[str]] | None = None  # a whole stage's tasks: none means it is left out of DVC
    params: Params = ()  # config keys it reads; `{task}` in a per-task stage
    deps: Params = ()  # path templates; a callable gives those that depend on the config
    outs: tuple[str, ...] = ()
    reports: tuple[str, ...] = ()  # JSON summaries: plain outs under DVC, the Metrics artifact on Kubeflow
    metrics: tuple[str, ...] = ()  # headline numbers only: DVC's metrics (`dvc metrics show` fits a screen)
    plain_outs: tuple[str, ...] = ()  # other small outputs kept in git's view (cache: false)
    plots: tuple[tuple[str, dict[str, Any]], ...] = ()
    pod: dict[str, Any] = field(default_factory=lambda: SMALL_POD)  # Kubeflow: the step's pod
    trains: bool = False  # runs under torchrun: Kubeflow may launch it as a distributed job (nodes x procs)

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def module(self) -> str:
        return self.function.partition(":")[0]

    def load(self) -> Callable[..., Any]:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)

    def execute(self, cfg: Config, args: argparse.Namespace) -> None:
        """`unitask <stage>` for a stage without a body in `unitask.commands`: the function called with
        the config (and, per task, `--task`), its result printed as `key<TAB>value` lines."""
        named = getattr(args, "task", None) or (getattr(args, "tasks", None) or [None])[0]  # --task, one or a filter
        result = self.load()(cfg, named) if self.per_task else self.load()(cfg)
        for key, value in (result or {}).items():
            print(f"{key}\t{json.dumps(value)}")

    def param_keys(self, cfg: Config) -> list[str]:
        """The config keys this stage reads, with the task-level ones spelled out."""
        return _expand(self.params, cfg)

    def dep_templates(self, cfg: Config) -> tuple[str, ...]:
        """The path templates of what this stage reads, the config-dependent ones included."""
        return tuple(_expand(self.deps, cfg))


def _expand(items: Params, cfg: Config) -> list[str]:
    found: list[str] = []
    for item in items:
        for value in item(cfg) if callable(item) else [item]:
            if value not in found:
                found.append(value)
    return found


def _baseline_tasks(cfg: Config) -> list[str]:
    from unitask.baselines import baseline_tasks

    return baseline_tasks(cfg)


def _qa_windows(cfg: Config) -> list[str]:
    """Extractive QA cuts contexts into windows with its task's finetune settings, in every stage."""
    qa = [n for n, t in cfg.tasks.items() if t.type == "extractive_qa"]
    return ["finetune.doc_stride", "finetune.max_answer_length"] + task_keys(cfg, ("finetune",), qa) if qa else []


def _image_files(cfg: Config) -> list[str]:
    """The raw data of the tasks whose rows name files (images)."""
    return [f"{{c.paths.raw}}/{name}" for name, task in cfg.tasks.items() if task.read.image_path]


PREDICTIONS = "{c.paths.reports}/predictions"

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage(
        "prepare", "make deterministic train/validation/test splits",
        "Read data/raw/<task>, map columns to roles, drop empty and duplicate examples, and write seeded, "
        "stratified, disjoint splits to data/prepared/<task>/*.parquet with a summary in reports/prepare/<task>.json "
        "(the label distribution per split in <task>.labels.json beside it).",
        "unitask.data.prepare:prepare", options=(task_filter("prepare"),),
        per_task=lambda c: list(c.tasks),
        params=("seed", "prepare", "tasks.{task}"),
        deps=("{c.paths.raw}/{task}",),
        outs=("{c.paths.prepared}/{task}",),
        plain_outs=("{c.paths.reports}/prepare/{task}.labels.json",),  # per-label counts
        reports=("{c.paths.reports}/prepare/{task}.json",),
    ),
    Stage(
        "validate", "check the prepared splits with great-expectations: the gate before training",
        "Build a great-expectations suite from each task's declaration (roles, labels, label_range) and run it on "
        "data/prepared/<task>/{train,validation,test}: columns, empty text, label sets and ranges, tags vs tokens and "
        "BIO order, answer spans, images (exist, decode, mode, size), duplicates, train/validation/test leakage, class "
        "balance, and the share of rows longer than model.max_length. Writes reports/validate/<task>.json, Data Docs "
        "HTML in reports/data_docs/<task>/, and an MLflow run. Exits non-zero when a check of severity `error` fails, "
        "naming task, split, column, check and up to 5 rows by id; validate.severity sets checks to `warn`.",
        "unitask.validation:validate", options=(task_filter("validate"),),
        per_task=lambda c: list(c.tasks),
        params=("validate", "model.max_length", "tasks.{task}"),
        deps=("{c.paths.prepared}/{task}", "{c.paths.raw}/{task}"),  # image files are read from raw
        outs=("{c.paths.reports}/data_docs/{task}",),
        reports=("{c.paths.reports}/validate/{task}.json",),
        pod={**SMALL_POD, "retries": 0},  # a failed gate is not transient
    ),
    Stage(
        "pretrain", "continued pretraining of the encoder on unlabeled text (masked-LM or causal-LM)",
        "Train model.backbone further on unlabeled text: by default the train split of every declared task (never "
        "validation or test text), or pretrain.corpus. Masked-LM for encoders, causal-LM for decoders "
        "(pretrain.objective). Reports held-out perplexity before and after in reports/pretrain.json and MLflow, and "
        "saves the encoder (safetensors) with its tokenizer to pretrain.output, where fine-tuning starts when "
        "pretrain.enabled is true. Runs under `torchrun --nproc_per_node=N -m unitask.cli pretrain ...` as DDP.",
        "unitask.training.pretrain:pretrain", options=(RESUME,),
        params=("seed", "model", "pretrain", task_data),
        deps=("{c.paths.prepared}", "{c.paths.reports}/validate"),  # train splits only; the gate's summaries
        outs=(ModelPath("{c.pretrain.output}"),),
        reports=("{c.pretrain.metrics}",),
        pod=TRAINING_POD, trains=True,
    ),
    Stage(
        "baseline", "TF-IDF + linear model baselines for text classification and regression",
        "Fit TF-IDF (word 1-2 grams) + logistic regression or ridge on each task's train split, pick the strength on "
        "validation, and write validation and test metrics to reports/baseline/<task>.json and MLflow.",
        "unitask.baselines:baseline", options=(task_filter("score"),),
        runs=lambda c: _baseline_tasks(c),
        params=("seed", task_data),
        deps=("{c.paths.prepared}", "{c.paths.reports}/validate"),
        outs=(PREDICTIONS + "/baseline",),
        reports=("{c.paths.reports}/baseline",),
    ),
    Stage(
        "finetune", "train a task head on the (pre)trained encoder",
        "Train one text task's head on the encoder (pretrain.output when pretrain.enabled, else model.backbone) with "
        "transformers' Trainer: dynamic padding, length-grouped batches, bf16 where supported, early stopping on the "
        "validation metric. Settings: the finetune section, with the task's own tasks.<task>.finetune on top. Writes "
        "finetune.output/<task> (safetensors, tokenizer, labels.json), reports/finetune/<task>.json and an MLflow run. "
        "Runs under `torchrun --nproc_per_node=N -m unitask.cli finetune ...` as DDP.",
        "unitask.training.finetune:finetune",
        options=(Option(("--task",), {"required": True, "metavar": "NAME", "help": "the task to fine-tune"}), RESUME),
        per_task=lambda c: c.finetune_tasks(),
        params=("seed", "model", "finetune", "pretrain.enabled", "tasks.{task}"),
        deps=("{c.paths.prepared}/{task}", "{c.paths.reports}/validate/{task}.json", "{c.pretrain.output}"),
        outs=(ModelPath("{c.finetune.output}/{task}"), PREDICTIONS + "/finetune/{task}.jsonl",
              PREDICTIONS + "/finetune/validation/{task}.jsonl"),
        reports=("{c.paths.reports}/finetune/{task}.json",),
        pod=TRAINING_POD, trains=True,
    ),
    Stage(
        "multitask", "train one shared encoder with a head per text task (multi-task learning)",
        "Train one encoder with a head per text task (multitask.tasks; default: every declared text task) jointly: "
        "each batch holds one task's examples, drawn by multitask.sampler (proportional, temperature with size_cap, "
        "uniform, round_robin) and each task's tasks.<task>.multitask.rate; the task losses are weighted by "
        "multitask.weighting (equal, static, uncertainty, dwa). Every task is scored on validation at each "
        "evaluation and the checkpoint with the best mean of the task metrics is kept. Writes multitask.output (one "
        "model for every task: `unitask predict` answers from it), reports/multitask.json, test predictions in "
        "reports/predictions/multitask/ and an MLflow run. Runs under `torchrun --nproc_per_node=N -m unitask.cli "
        "multitask ...` as DDP: every process trains the step's task on its share of the batch.",
        "unitask.training.multitask:multitask", options=(RESUME,),
        runs=lambda c: c.multitask_tasks(),
        params=("seed", "model", "multitask", "pretrain.enabled", task_data,
                lambda c: task_keys(c, ("multitask",)), _qa_windows),  # fmt: skip
        deps=("{c.paths.prepared}", "{c.paths.reports}/validate", "{c.pretrain.output}"),
        outs=(ModelPath("{c.multitask.output}"), PREDICTIONS + "/multitask"),
        reports=("{c.multitask.metrics}",),
        pod=TRAINING_POD, trains=True,
    ),
    Stage(
        "multitask_comparison", "compare the multi-task model with the single-task fine-tunes (trains nothing)",
        "Compare the multi-task model with the single-task fine-tunes: test metric per task and averaged, with the "
        "training time and examples each side spent, in multitask.comparison (JSON and a Markdown table) and the "
        "multi-task MLflow run.",
        "unitask.evaluation.multitask_comparison:compare_multitask",
        runs=lambda c: c.multitask_tasks(),
        params=("multitask.comparison",),
        deps=("{c.multitask.metrics}", "{c.paths.reports}/finetune"),
        plain_outs=("{c.multitask.comparison_table}",),
        reports=("{c.multitask.comparison}",),
    ),
    Stage(
        "llm", "train one decoder LLM with LoRA on every text task at once (text to text)",
        "Turn each row of the text tasks (llm.tasks; default: every declared text task whose tasks.<task>.llm.enabled) "
        "into an instruction prompt and a target text (label word, number, `type: words; ...` entities, answer span), "
        "score the base model llm.model (hub id, folder, or package:...; a GGUF file is converted once) with llm.shots "
        "in-context examples, train LoRA (PEFT) adapters on all tasks at once (llm.adapters: shared or per_task), and "
        "score it again. Writes test predictions to reports/predictions/{llm,llm_zeroshot}/, llm.metrics, llm.output "
        "(adapters, tokenizer, unitask-model.json: `unitask predict --model` answers from it) and an MLflow run. "
        "Runs under `torchrun --nproc_per_node=N -m unitask.cli llm ...` as DDP (llm.fsdp.enabled: FSDP2 on GPUs).",
        "unitask.llm.train:llm", options=(RESUME,),
        runs=lambda c: c.llm_tasks(),
        params=("seed", "llm", task_data, lambda c: task_keys(c, ("llm",))),
        deps=("{c.paths.prepared}", "{c.paths.reports}/validate"),
        outs=(ModelPath("{c.llm.output}"), PREDICTIONS + "/llm", PREDICTIONS + "/llm_zeroshot"),
        reports=("{c.llm.metrics}",),
        pod=TRAINING_POD, trains=True,
    ),
    Stage(
        "fusion", "train text+image models (and text-only / image-only baselines) for multimodal tasks",
        "For each multimodal task (default: every declared multimodal_classification task; fusion.tasks) train a "
        "late-fusion model: the text encoder (as fine-tuning uses), an image encoder, a fusion module (fusion.method) "
        "and a classifier head, with optional auxiliary unimodal losses (fusion.loss_weights) and training-only image "
        "augmentation (fusion.augment). With fusion.baselines, a text-only and an image-only model get the same "
        "budget. Writes fusion.output/<task>, reports/fusion/<task>.json (all models side by side), test predictions "
        "in reports/predictions/{fusion,fusion_text,fusion_image}/<task>.jsonl, and one MLflow run per model.",
        "unitask.training.fusion:fusion", options=(task_filter("train"), RESUME),
        runs=lambda c: c.fusion_tasks(),
        params=("seed", "model", "fusion", "pretrain.enabled", task_data),
        deps=("{c.paths.prepared}", "{c.paths.raw}", "{c.paths.reports}/validate", "{c.pretrain.output}"),
        outs=(ModelPath("{c.fusion.output}"), PREDICTIONS + "/fusion", PREDICTIONS + "/fusion_text",
              PREDICTIONS + "/fusion_image"),
        reports=("{c.paths.reports}/fusion",),
        pod=TRAINING_POD, trains=True,
    ),
    Stage(
        "evaluate", "score and compare every model on the test splits: tables, plots, an MLflow run",
        "Score reports/predictions/<model>/<task>.jsonl of each model in evaluate.models (TF-IDF baseline, "
        "fine-tunes, multi-task, fusion and its text-only/image-only baselines) with the metrics of each task type, "
        "without loading any model. Writes evaluate.output (default reports/evaluate): metrics/<model>/<split>.json "
        "(each task's main metric: what `dvc metrics show` and `dvc exp show` read), comparison.json, comparison.md, report.json (per-class reports, confusion matrices) and plots/ for `dvc plots show` "
        "(confusion matrices, metric by model, training curves from the training stages' MLflow runs); the MLflow "
        "run `evaluate` holds them with PNG figures.",
        "unitask.evaluation.stage:evaluate",
        params=("evaluate", "fusion.baselines", task_data),
        deps=(PREDICTIONS,),
        plain_outs=("{c.evaluate.output}/comparison.md", "{c.evaluate.output}/report.json"),
        reports=("{c.evaluate.output}/comparison.json",),
        metrics=("{c.evaluate.output}/metrics",),  # the headline: each model's main metric per task and split
        pod={**SMALL_POD, "caching": False},  # its MLflow curves and the registry are outside its inputs
        plots=(
            ("{c.evaluate.output}/plots/confusion", {"template": "confusion", "x": "actual", "y": "predicted",
                                                      "title": "Confusion matrix (test)"}),
            ("{c.evaluate.output}/plots/by_model", {"template": "bar_horizontal", "x": "value", "y": "model",
                                                     "title": "Test main metric by model"}),
            ("{c.evaluate.output}/plots/loss", {"x": "step", "y": "loss", "title": "Training loss"}),
            ("{c.evaluate.output}/plots/eval_loss", {"x": "step", "y": "eval_loss", "title": "Validation loss"}),
        ),  # fmt: skip
    ),
    Stage(
        "register", "register the served model (multi-task + fusion, + the LLM where routed) in MLflow; gate the champion",
        "Log one MLflow pyfunc that answers every task (multitask.output, plus fusion.output when "
        "register.include_fusion, plus llm.output for the tasks register.routes sends to the LLM) with a signature, an "
        "input example and a model card, and register it as "
        "register.name. The new version gets the alias `challenger`; `champion` moves to it only when it beats the "
        "current champion on register.gate.primary and no task's main metric drops by more than "
        "register.gate.max_task_regression. The decision and its numbers go to register.output and the MLflow run "
        "`register`. Rerunning with unchanged models and metrics registers nothing new.",
        "unitask.registry:register",
        params=("register", "tracking", task_data),
        deps=("{c.evaluate.output}/comparison.json", "{c.multitask.output}", "{c.fusion.output}",
              lambda c: ["{c.llm.output}"] if "llm" in c.register.routes.values() else [],
              "{c.paths.prepared}", _image_files,  # the card counts rows; the input example is a test row
              "{c.paths.reports}/validate"),  # the card lists the data gate's warnings
        reports=("{c.register.output}",),
        pod={**SMALL_POD, "caching": False},  # the registry's champion is outside its inputs
    ),
)}  # fmt: skip
