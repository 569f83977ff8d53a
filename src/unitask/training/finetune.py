"""`unitask finetune`: a task head on the (pre)trained encoder, trained with transformers' Trainer.

One plain function, `finetune(cfg, task)`, called by the CLI, DVC and Kubeflow. It writes the model
folder (safetensors, tokenizer, label map), a metrics JSON with validation and test scores, and one
MLflow run with params, per-evaluation metrics, final metrics and the model. Under
`torchrun --nproc_per_node=N` every process trains (DDP) and only rank 0 writes.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
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
from unitask.tracking import flatten, log_datasets, log_trained_model, preflight, stage_run
from unitask.training.model import build_model
from unitask.training.trainer import (
    MlflowMetrics,
    UnitaskTrainer,
    is_main_process,
    resume_point,
    selection_arguments,
    train_from,
    trainer_arguments,
)

TIMING_KEYS = ("runtime", "samples_per_second", "steps_per_second", "epoch")
REGULARIZATION = ("weight_decay", "dropout", "head_l1", "early_stopping_patience", "max_steps")


def scorer(task: TextTask, features: Any, frame: pd.DataFrame) -> Callable[[Any], dict[str, float]]:
    """Trainer's `compute_metrics` for one split (post-processing needs that split's features)."""
    return lambda output: task_scores(task, output.predictions, features, frame)


def training_arguments(cfg: Config, task: TextTask, output_dir: Path, quiet: bool = False) -> Any:
    """`quiet`: no progress bars or printed logs (MLflow still gets them), as in tuning trials."""
    from transformers import TrainingArguments

    ft = cfg.finetune_for(task.name)
    return TrainingArguments(
        output_dir=str(output_dir),
        disable_tqdm=quiet,
        **trainer_arguments(ft, cfg.seed),
        **selection_arguments(ft, cfg.seed, task.main_metric),
    )


def sample_rows(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of `limit` rows in their original order (all rows when there are no more)."""
    return frame if limit is None or limit >= len(frame) else frame.sample(n=limit, random_state=seed).sort_index()


@dataclass
class Fit:
    """A Trainer set up for one task, with the splits it was built from."""

    task: TextTask
    trainer: Any
    tokenizer: Any
    frames: dict[str, pd.DataFrame]
    features: dict[str, Any]


def build_trainer(cfg: Config, name: str, output_dir: Path, callbacks: list[Any], quiet: bool = False) -> Fit:
    """The Trainer for task `name` with its settings (`finetune.for_task`): train rows capped by
    `max_train_rows` and augmented each epoch when `augment` is on, dropout, head L1, early stopping.
    Checkpoints go to `output_dir`; nothing else is written."""
    from transformers import EarlyStoppingCallback, PrinterCallback

    task = text_task(cfg, name)
    ft = cfg.finetune_for(name)
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
    trainer = UnitaskTrainer(
        model=model,
        args=training_arguments(cfg, task, output_dir, quiet),
        data_collator=task.collator(tokenizer),
        train_dataset=train,
        eval_dataset=features["validation"],
        processing_class=tokenizer,
        compute_metrics=scorer(task, features["validation"], frames["validation"]),
        callbacks=callbacks,
        head_l1=ft.head_l1,
    )
    if quiet:
        trainer.remove_callback(PrinterCallback)
    return Fit(task, trainer, tokenizer, frames, features)


def finetune(cfg: Config, name: str, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate task `name`; return the summary written to reports/finetune/<name>.json."""
    preflight(cfg)  # an unreachable tracking server fails the stage before any work
    ft = cfg.finetune_for(name)
    checkpoints = cfg.path(ft.checkpoints) / name
    last = resume_point(checkpoints, resume)
    fit = build_trainer(cfg, name, checkpoints, [MlflowMetrics()])
    task, trainer, tokenizer, frames, features = fit.task, fit.trainer, fit.tokenizer, fit.frames, fit.features
    args = trainer.args
    encoder = cfg.pretrain.output if cfg.pretrain.enabled else cfg.model.backbone
    if cfg.model.backbone_config:
        encoder = f"config:{cfg.model.backbone_config.get('model_type')}"
    params = {
        "task": name,
        "type": cfg.task(name).type,
        "encoder": encoder,
        "seed": cfg.seed,
        "max_length": cfg.model.max_length,
        "world_size": args.world_size,
        "bf16": args.bf16,
        "train_examples": len(frames["train"]),
        "train_features": len(features["train"]),
        "resumed_from": last or "",
        **flatten("finetune", ft.model_dump(exclude={"tasks"})),
        # regularization and stopping, logged even when unset (flatten drops nulls)
        **{f"finetune.{key}": getattr(ft, key) for key in REGULARIZATION},
    }
    main = is_main_process()
    with stage_run(cfg, "finetune", name, params=params) if main else nullcontext():
        if main:
            log_datasets(cfg, [name])
        started = time.perf_counter()
        result = train_from(trainer, last)
        seconds = time.perf_counter() - started
        trainer.remove_callback(MlflowMetrics)
        summary: dict[str, Any] = {
            "task": name,
            "type": cfg.task(name).type,
            "encoder": encoder,
            "main_metric": task.main_metric,
            "train": {
                "loss": result.training_loss,
                "steps": trainer.state.global_step,
                "epochs": trainer.state.epoch,
                "seconds": round(seconds, 1),
                "examples": len(frames["train"]),
                "world_size": args.world_size,
            },
        }
        decoded: dict[str, list[dict[str, Any]]] = {}
        for split in SCORED_SPLITS:
            trainer.compute_metrics = scorer(task, features[split], frames[split])
            output = trainer.predict(features[split], metric_key_prefix=split)
            summary[split] = {
                key.removeprefix(f"{split}_"): value
                for key, value in output.metrics.items()
                if not key.endswith(TIMING_KEYS)
            }
            decoded[split] = task.decode(output.predictions, features[split], frames[split])
        if main:
            for split in SCORED_SPLITS:
                write_predictions(cfg, "finetune", name, task.gold(frames[split]), decoded[split], split)
            _write_outputs(cfg, name, task, trainer, tokenizer, summary)
            shutil.rmtree(checkpoints, ignore_errors=True)
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
