"""Pieces every training stage shares: device and precision choice, process rank, an MLflow callback
that logs into the stage's own run, and a Trainer with reproducible length-grouped batches."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler


def is_main_process() -> bool:
    """True in a single process and in rank 0 of a torchrun job (the one that writes outputs)."""
    return int(os.environ.get("RANK", "0")) == 0


def use_bf16(setting: bool | str) -> bool:
    """`auto`: bf16 autocast where the device computes in bf16 (Ampere+ GPU, or a CPU with AVX512-BF16/AMX)."""
    if setting != "auto":
        return bool(setting)
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def device_arguments(bf16: bool | str) -> dict[str, Any]:
    """TrainingArguments for the device: CPU (gloo under torchrun) or GPU (nccl under torchrun)."""
    cuda = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend = ("nccl" if cuda else "gloo") if distributed else None
    return {"use_cpu": not cuda, "bf16": use_bf16(bf16), "ddp_backend": backend}


class MlflowMetrics(TrainerCallback):
    """Log Trainer's logs (train loss every `logging_steps`, eval metrics at each evaluation) into the
    active MLflow run, from the main process only. Use with `report_to="none"`: one run per stage."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None or not logs:
            return
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            mlflow.log_metrics(numbers, step=state.global_step)


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches in an order drawn from (seed, epoch): the same on every DDP rank and
    after a mid-epoch resume (the stock sampler draws from the global RNG, which a resume changes)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class UnitaskTrainer(Trainer):
    """Trainer with reproducible length grouping: training batches come from an epoch-seeded sampler,
    and evaluation keeps dataset order, which post-processing that maps predictions back to examples
    (extractive QA) relies on."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Groups by the global batch (all ranks, all accumulation steps), so that N processes see
        the same examples per optimizer step as one process with an N times larger batch."""
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size * self.args.world_size, sampler.lengths, seed)
        return sampler

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
