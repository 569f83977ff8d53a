"""The one run skeleton of every training stage (pretrain, finetune, multitask, fusion, llm).

A stage builds its Trainer and its MLflow params, then hands them to `run_training`, which: finds the
checkpoint to resume from (`resume_point`), opens the stage's MLflow run on the main process, records
the data it trains on, trains, times it, stops logging curves, calls the stage's `finish` (scoring and
predicting on every process, writing on the main one), and removes the checkpoints. A stage file holds
only what is its own: its data, model, loss and summary.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unitask.config import SPLITS, Config
from unitask.tracking import log_datasets, stage_run
from unitask.training.trainer import MlflowMetrics, is_main_process, resume_point, train_from


@dataclass
class Trained:
    """What `finish` gets: the trainer after training, its result, the seconds it took, the MLflow run
    (None off the main process) and whether this is the main process."""

    trainer: Any
    result: Any
    seconds: float
    run: Any
    main: bool


@dataclass
class TrainingRun:
    stage: str
    trainer: Any
    checkpoints: Path  # the Trainer's output_dir
    params: dict[str, Any]  # MLflow params; `resumed_from` is added
    task: str | None = None
    datasets: list[str] = field(default_factory=list)  # tasks whose prepared splits the run records as inputs
    splits: tuple[str, ...] = SPLITS
    tags: dict[str, str] = field(default_factory=dict)
    keep_checkpoints: bool = False  # the stage removes them itself (fusion: after recording a model as done)


def run_training(cfg: Config, run: TrainingRun, resume: bool, finish: Callable[[Trained], dict[str, Any]]) -> dict[str, Any]:
    """Train `run.trainer` (from the last complete checkpoint with `resume`) in the stage's MLflow run;
    return what `finish` returns."""
    import mlflow

    last = resume_point(run.checkpoints, resume)
    main = is_main_process()
    with stage_run(cfg, run.stage, run.task, params={**run.params, "resumed_from": last or ""}) if main else nullcontext() as active:
        if main:
            if run.tags:
                mlflow.set_tags(run.tags)
            if run.datasets:
                log_datasets(cfg, run.datasets, run.splits)
        started = time.perf_counter()
        result = train_from(run.trainer, last)
        seconds = round(time.perf_counter() - started, 1)
        run.trainer.remove_callback(MlflowMetrics)
        summary = finish(Trained(run.trainer, result, seconds, active, main))
        if main and not run.keep_checkpoints:
            shutil.rmtree(run.checkpoints, ignore_errors=True)
    return summary


def encoder_name(cfg: Config) -> str:
    """The encoder the text stages start from, as their summaries and MLflow params name it: the
    pretrained encoder when pretraining is on, else the backbone (`config:<type>` when built from a config)."""
    if cfg.pretrain.enabled:
        return cfg.pretrain.output
    if cfg.model.backbone_config:
        return f"config:{cfg.model.backbone_config.get('model_type')}"
    return cfg.model.backbone
