"""`unitask finetune`: a task head on the (pre)trained encoder, trained with transformers' Trainer.

One plain function, `finetune(cfg, task)`, called by the CLI, DVC and Kubeflow. It writes the model
folder (safetensors, tokenizer, label map), a metrics JSON with validation and test scores, and one
MLflow run with params, per-evaluation metrics, final metrics and the model. Under
`torchrun --nproc_per_node=N` every process trains (DDP) and only rank 0 writes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from unitask.atomic import atomic_dir, write_json
from unitask.augment.frame import EpochAugmented, mask_token
from unitask.config import SPLITS, Config
from unitask.evaluation.predictions import SCORED_SPLITS, write_predictions
from unitask.models.backbone import load_tokenizer
from unitask.tasks.text import TextTask, read_split, task_scores, text_task
from unitask.tracking import flatten, log_trained_model, preflight
from unitask.training.model import build_model
from unitask.training.sampling import sample_rows
from unitask.training.skeleton import Trained, TrainingRun, encoder_name, run_training
from unitask.training.small_data import budget_epochs, label_weights
from unitask.training.trainer import MlflowMetrics, UnitaskTrainer, selection_arguments, trainer_arguments

TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "epoch")
REGULARIZATION = ("weight_decay", "dropout", "head_l1", "early_stopping_patience", "max_steps", "min_steps", "label_balance")


def scorer(task: TextTask, features: Any, frame: pd.DataFrame) -> Callable[[Any], dict[str, float]]:
    """Trainer's `compute_metrics` for one split (post-processing needs that split's features)."""
    return lambda output: task_scores(task, output.predictions, features, frame)


def training_arguments(ft: Any, seed: int, task: TextTask, output_dir: Path, quiet: bool = False) -> Any:
    """Task `task`'s TrainingArguments from its settings `ft` (`Config.finetune_for`); `quiet`: no
    progress bars or printed logs (MLflow still gets them), as in tuning trials."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        disable_tqdm=quiet,
        **trainer_arguments(ft, seed),
        **selection_arguments(ft, seed, task.main_metric),
    )


@dataclass
class Fit:
    """A Trainer set up for one task, with the splits it was built from."""

    task: TextTask
    trainer: Any
    tokenizer: Any
    frames: dict[str, pd.DataFrame]
    features: dict[str, Any]


def build_trainer(
    cfg: Config, name: str, output_dir: Path, callbacks: list[Any], quiet: bool = False, settings: Any = None
) -> Fit:
    """The Trainer for task `name` with its settings (`settings`, else `cfg.finetune_for(name)`): train
    rows capped by `max_train_rows` and augmented each epoch when `augment` is on, dropout, head L1,
    at least `min_steps` optimizer steps, label weights (`label_balance`), early stopping.
    Checkpoints go to `output_dir`; nothing else is written."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    task = text_task(cfg, name)
    ft = settings or cfg.finetune_for(name)
    model = build_model(cfg, task, dropout=ft.dropout)
    tokenizer = load_tokenizer(cfg)
    frames = {split: read_split(cfg, name, split) for split in SPLITS}
    frames["train"] = sample_rows(frames["train"], ft.max_train_rows, cfg.seed)
    features = {split: task.encode(frame, tokenizer, cfg.model.max_length) for split, frame in frames.items()}
    train = features["train"]
    if ft.augment.active:
        encode = functools.partial(task.encode, tokenizer=tokenizer, max_length=cfg.model.max_length)
        train = EpochAugmented(frames["train"], encode, task.type, ft.augment, cfg.seed, mask_token(tokenizer))
    if ft.early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience=ft.early_stopping_patience)]
    args = training_arguments(ft, cfg.seed, task, output_dir, quiet)
    args.num_train_epochs = budget_epochs(ft, len(train), args)
    trainer = UnitaskTrainer(
        model=model,
        args=args,
        data_collator=task.collator(tokenizer),
        train_dataset=train,
        eval_dataset=features["validation"],
        processing_class=tokenizer,
        compute_metrics=scorer(task, features["validation"], frames["validation"]),
        callbacks=callbacks,
        head_l1=ft.head_l1,
        label_weights=label_weights(task, frames["train"], ft.label_balance),
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
    return Fit(task, trainer, tokenizer, frames, features)


def finetune(cfg: Config, name: str, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate task `name`; return the summary written to reports/finetune/<name>.json."""
    preflight(cfg)  # an unreachable tracking server fails the stage before any work
    ft = cfg.finetune_for(name)
    checkpoints = cfg.path(ft.checkpoints) / name
    fit = build_trainer(cfg, name, checkpoints, [MlflowMetrics()], settings=ft)
    args = fit.trainer.args
    params = {
        "task": name,
        "type": cfg.task(name).type,
        "encoder": encoder_name(cfg),
        "seed": cfg.seed,
        "max_length": cfg.model.max_length,
        "world_size": args.world_size,
        "bf16": args.bf16,
        "train_examples": len(fit.frames["train"]),
        "train_features": len(fit.features["train"]),
        "train_epochs": args.num_train_epochs,  # finetune.epochs, or more to reach finetune.min_steps
        **flatten("finetune", ft.model_dump(exclude={"tasks"})),
        # regularization and stopping, logged even when unset (flatten drops nulls)
        **{f"finetune.{key}": getattr(ft, key) for key in REGULARIZATION},
    }
    run = TrainingRun("finetune", fit.trainer, checkpoints, params, task=name, datasets=[name])
    return run_training(cfg, run, resume, functools.partial(_finish, cfg, fit))


def _finish(cfg: Config, fit: Fit, trained: Trained) -> dict[str, Any]:
    """Score and decode validation and test (every process), then write the outputs (the main one)."""
    task, trainer, name = fit.task, trained.trainer, fit.task.name
    summary: dict[str, Any] = {
        "task": name,
        "type": task.type,
        "encoder": encoder_name(cfg),
        "main_metric": task.main_metric,
        "train": {
            "loss": trained.result.training_loss,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "seconds": trained.seconds,
            "examples": len(fit.frames["train"]),
            "world_size": trainer.args.world_size,
        },
    }
    decoded: dict[str, list[dict[str, Any]]] = {}
    for split in SCORED_SPLITS:
        features, frame = fit.features[split], fit.frames[split]
        trainer.compute_metrics = scorer(task, features, frame)
        output = trainer.predict(features, metric_key_prefix=split)
        summary[split] = {key.removeprefix(f"{split}_"): value for key, value in output.metrics.items() if not key.endswith(TIMING_KEYS)}
        decoded[split] = task.decode(output.predictions, features, frame)
    if trained.main:
        for split in SCORED_SPLITS:
            write_predictions(cfg, "finetune", name, task.gold(fit.frames[split]), decoded[split], split)
        _write_outputs(cfg, name, task, trainer, fit.tokenizer, summary)
    return summary


def _write_outputs(cfg: Config, name: str, task: TextTask, trainer: Any, tokenizer: Any, summary: dict[str, Any]) -> None:
    """Model folder (atomically), metrics JSON, and the final metrics and model in the MLflow run."""
    import mlflow

    model_dir = cfg.path(cfg.finetune.output) / name
    with atomic_dir(model_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "labels.json", {"task": name, "type": summary["type"], "labels": task.labels()})
    write_json(cfg.path(cfg.paths.reports) / "finetune" / f"{name}.json", summary)
    mlflow.log_metrics(flatten("train", summary["train"]))
    log_trained_model(f"finetune-{name}", model_dir, {split: {name: summary[split]} for split in ("validation", "test")})
