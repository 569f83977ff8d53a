"""Pieces every training stage shares: device and precision choice, process rank, the resume rule
(`resume_point`, `train_from`), an MLflow callback that logs into the stage's own run, and a Trainer
with reproducible length-grouped batches."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import RandomSampler, Sampler, SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from unitask.config import TrainSettings
from unitask.errors import ConfigError, UnitaskError


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


# ---- the resume rule, for every stage that checkpoints with Trainer ------------------------------


def checkpoint_step(folder: Path) -> int | None:
    """The step of a `checkpoint-<step>` folder, or None for any other name."""
    prefix, _, step = folder.name.rpartition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def is_complete_checkpoint(folder: Path) -> bool:
    """Whether Trainer finished saving `folder`. Trainer writes trainer_state.json last, so a kill
    while saving leaves a folder without it; a file cut short by a crash of the machine fails the
    other checks: trainer_state.json is JSON naming the folder's step, every safetensors file has a
    whole header and data, and every torch file (optimizer.pt, rng_state.pth...) its zip directory."""
    from safetensors import SafetensorError, safe_open

    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or state.get("global_step") != checkpoint_step(folder):
            return False
        for weights in folder.glob("*.safetensors"):
            with safe_open(str(weights), framework="pt"):
                pass
        return all(zipfile.is_zipfile(f) for f in (*folder.glob("*.pt"), *folder.glob("*.pth")))
    except (OSError, ValueError, SafetensorError):  # ValueError covers bad JSON and UTF-8
        return False


def resume_point(folder: Path, resume: bool) -> str | None:
    """The checkpoint a stage continues from: the one rule every training stage follows.

    `folder` holds the stage's Trainer checkpoints (`TrainingArguments.output_dir`). Without `resume`
    the folder is cleared (a fresh run) and None is returned. With `resume`, the newest checkpoint
    that `is_complete_checkpoint` accepts is returned; newer, half-written ones (a kill while saving)
    are deleted, so that Trainer's own rotation and the next save do not meet them. None (and a note
    on stderr) when no complete checkpoint exists: training starts from the beginning. Only the main
    process deletes. Pass the result to `train_from`.
    """
    main = is_main_process()
    if not resume:
        if main:
            shutil.rmtree(folder, ignore_errors=True)
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if checkpoint_step(p) is not None), key=checkpoint_step)
    while found and not is_complete_checkpoint(found[-1]):
        partial = found.pop()
        print(f"unitask: {partial} was not completely saved; skipping it", file=sys.stderr)
        if main:
            shutil.rmtree(partial, ignore_errors=True)
    if not found:
        print(f"unitask: no complete checkpoint in {folder}; training from the start", file=sys.stderr)
        return None
    return str(found[-1])


def train_from(trainer: Trainer, checkpoint: str | None) -> Any:
    """`trainer.train(resume_from_checkpoint=checkpoint)`, with a checkpoint that holds anything but
    tensors refused cleanly. Trainer reads optimizer.pt, scheduler.pt and rng_state.pth with
    `torch.load(weights_only=True)`, whose unpickler refuses every class outside torch's allowlist
    before building it, so a planted pickle payload never runs; this names the file in a UnitaskError."""
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except pickle.UnpicklingError as exc:
        if checkpoint is None:
            raise
        refused = ", ".join(f.name for f in unsafe_torch_files(Path(checkpoint))) or "a torch file"
        raise UnitaskError(
            f"{checkpoint}: {refused} holds pickled objects other than tensors; it was not loaded "
            f"({str(exc).splitlines()[0]})",
            hint=f"delete {checkpoint} (or run without --resume) unless you know who wrote it",
        ) from None


def unsafe_torch_files(folder: Path) -> list[Path]:
    """The torch files in `folder` that `torch.load(weights_only=True)` refuses (as Trainer loads them)."""
    from transformers.trainer_pt_utils import safe_globals

    refused = []
    for path in sorted((*folder.glob("*.pt"), *folder.glob("*.pth"))):
        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            refused.append(path)
    return refused


def trainer_arguments(settings: TrainSettings, seed: int) -> dict[str, Any]:
    """TrainingArguments every stage shares: schedule, batch sizes and the device, CPU (gloo under
    torchrun) or GPU (nccl under torchrun). Logging goes through `MlflowMetrics`, not `report_to`."""
    cuda = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return {
        "num_train_epochs": settings.epochs,
        "max_steps": settings.max_steps or -1,
        "per_device_train_batch_size": settings.batch_size,
        "per_device_eval_batch_size": settings.eval_batch_size,
        "gradient_accumulation_steps": settings.grad_accumulation,
        # the heads average their loss per batch; Trainer's token-count scaling (for models that sum
        # by `num_items_in_batch`) would multiply their loss by the number of DDP processes
        "average_tokens_across_devices": False,
        "learning_rate": settings.learning_rate,
        "warmup_steps": settings.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        "weight_decay": settings.weight_decay,
        "logging_steps": settings.logging_steps,
        "train_sampling_strategy": "group_by_length",
        "seed": seed,
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": use_bf16(settings.bf16),
        "ddp_backend": ("nccl" if cuda else "gloo") if distributed else None,
    }


def selection_arguments(settings: Any, seed: int, metric: str) -> dict[str, Any]:
    """TrainingArguments of the stages that evaluate during training (`settings.eval_strategy`,
    `eval_steps`), checkpoint at each evaluation for --resume, and keep the best model by `metric`."""
    return {
        "eval_strategy": settings.eval_strategy,
        "save_strategy": settings.eval_strategy,
        "eval_steps": settings.eval_steps,
        "save_steps": settings.eval_steps,
        "save_total_limit": 2,
        "load_best_model_at_end": True,
        "metric_for_best_model": metric,
        "greater_is_better": True,
        "restore_callback_states_from_checkpoint": True,
        "logging_strategy": "steps",
        "logging_first_step": True,
        "data_seed": seed,
    }


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
    after a mid-epoch resume (the stock sampler draws from the global RNG, which a resume changes).
    `on_epoch` is told each epoch too: a dataset that re-draws its rows per epoch (augmentation), which
    accelerate's DDP loader would not tell itself."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int, on_epoch: Callable[[int], None] | None = None) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0
        self.on_epoch = on_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __iter__(self) -> Any:
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation drawn from (seed, epoch), like `EpochSeededLengthGroupedSampler`: the same
    on every DDP rank and after a mid-epoch resume (the stock RandomSampler draws from the global RNG)."""

    def __init__(self, size: int, seed: int, on_epoch: Callable[[int], None] | None = None) -> None:
        self.size, self.seed, self.epoch, self.on_epoch = size, seed, 0, on_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.on_epoch is not None:
            self.on_epoch(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        yield from torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()


def head_parameters(model: Any) -> list[torch.nn.Parameter]:
    """The parameters outside the encoder (`model.base_model`): the task head's."""
    base = getattr(model, "base_model", model)
    inside = {id(p) for p in base.parameters()} if base is not model else None
    return [] if inside is None else [p for p in model.parameters() if id(p) not in inside]


class UnitaskTrainer(Trainer):
    """Trainer with reproducible length grouping: training batches come from an epoch-seeded sampler,
    and evaluation keeps dataset order, which post-processing that maps predictions back to examples
    (extractive QA) relies on. `head_l1` adds `head_l1 * sum|w|` over the head's parameters to the
    training loss; `label_weights` weigh each row's cross-entropy by its label (training losses only,
    so evaluation losses stay comparable)."""

    def __init__(self, *args: Any, head_l1: float = 0.0, label_weights: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_l1 = head_l1
        self.label_weights = None if label_weights is None else torch.tensor(label_weights, dtype=torch.float32)
        self.head_params = head_parameters(self.model) if head_l1 else []
        if head_l1 and not self.head_params:
            raise ConfigError(
                "finetune.head_l1: the model has no head parameters apart from its encoder",
                hint="set finetune.head_l1 to 0 for this model",
            )

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        if self.label_weights is not None and model.training:
            out = self._weighted_loss(model, inputs, num_items_in_batch)
        else:
            out = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.head_l1 and model.training:
            penalty = self.head_l1 * sum(p.abs().sum() for p in self.head_params)
            out = (out[0] + self._per_batch(penalty, num_items_in_batch), out[1])
        return out if return_outputs else out[0]

    def _weighted_loss(self, model: Any, inputs: Any, num_items_in_batch: Any) -> tuple[torch.Tensor, Any]:
        """Cross-entropy weighted by label: sum of w[label] * loss over sum of w[label] in the batch."""
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        weight = self.label_weights.to(outputs.logits.device)
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight)
        return self._per_batch(loss, num_items_in_batch), outputs

    def _per_batch(self, loss: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
        """`loss`, a mean over one batch, as Trainer adds it up: Trainer divides by the accumulation steps
        itself unless the model takes `num_items_in_batch`."""
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            return loss / self.current_gradient_accumulation_steps
        return loss

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """Epoch-seeded samplers; length groups span the global batch (all ranks, all accumulation
        steps), so that N processes see the same examples per optimizer step as one process with an
        N times larger batch."""
        sampler = super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(sampler, RandomSampler):
            return EpochSeededRandomSampler(len(dataset), seed, getattr(dataset, "set_epoch", None))
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthGroupedSampler(
                sampler.batch_size * self.args.world_size, sampler.lengths, seed, getattr(dataset, "set_epoch", None)
            )
        return sampler

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
