"""`unitask multitask`: one shared encoder with a head per text task, trained jointly on Trainer.

One plain function, `multitask(cfg)`, called by the CLI and DVC. Each batch holds one task's
examples; `multitask.sampler` draws the task of each batch (`unitask.training.sampling`) and
`multitask.weighting` weighs its loss (`unitask.training.weighting`). Every task is scored on its
validation split at each evaluation; the checkpoint with the best mean of the tasks' main metrics
(SQuAD's percentages scaled to 0-1) is kept. The stage writes the model folder (one encoder, a head
per task: `unitask predict` answers every task from it), `reports/multitask.json` with validation
and test metrics per task, test predictions per task, and one MLflow run.

Under `torchrun --nproc_per_node=N` every process trains (DDP) and only rank 0 writes: all ranks
draw the same task for a step and each takes its shard of that task's global batch
(`multitask.batch_size` rows per process, as in `unitask finetune`).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from unitask.atomic import atomic_dir, write_json
from unitask.config import SPLITS, Config
from unitask.errors import ConfigError, DataError
from unitask.evaluation.metrics import task_metrics, unit_score
from unitask.evaluation.predictions import SCORED_SPLITS, write_predictions
from unitask.models.backbone import load_tokenizer
from unitask.models.multitask import HeadSpec, MultitaskModel, save_multitask
from unitask.tasks.text import TextTask, read_split, text_task
from unitask.tracking import flatten, log_trained_model
from unitask.training.distributed import same_on_every_rank
from unitask.training.model import build_encoder
from unitask.training.sampling import TaskBatchSampler, TaskCollator, TaskRows, steps_per_epoch, task_probabilities
from unitask.training.skeleton import Trained, TrainingRun, encoder_name, run_training
from unitask.training.trainer import MlflowMetrics, UnitaskTrainer, selection_arguments, trainer_arguments
from unitask.training.weighting import LossWeighting, make_weighting

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TARGETS = ("labels", "start_positions", "end_positions")
MEAN = "mean_score"


# ---- data ------------------------------------------------------------------------------------


def model_rows(features: Any, keep: tuple[str, ...]) -> list[dict[str, Any]]:
    """The encoded features as plain rows, with only the columns in `keep`."""
    return features.select_columns([c for c in features.column_names if c in keep]).to_list()


# ---- model and trainer -----------------------------------------------------------------------


class WeightedModel(nn.Module):
    """What Trainer trains: the multi-task model and the loss weighting (whose learned log-variances
    the optimizer updates and checkpoints save). In training, the task's loss is weighted, after
    scaling by `loss_scale` (under DDP: this rank's share of the step's loss items, see `shard_share`)."""

    def __init__(self, model: MultitaskModel, weighting: LossWeighting) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting

    def forward(
        self,
        task_id: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        loss_scale: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        out = self.model(task_id, input_ids, attention_mask, token_type_ids, labels, start_positions, end_positions)
        if self.training and "loss" in out:
            loss = out["loss"] if loss_scale is None else out["loss"] * loss_scale
            out = {**out, "raw_loss": loss.detach(), "loss": self.weighting(int(task_id.reshape(-1)[0]), loss)}
        return out


class MultitaskTrainer(UnitaskTrainer):
    """Trainer with a task-batch sampler, per-task evaluation (the mean of the tasks' main metrics is
    what selects the best checkpoint), and a learning rate of its own for the weighting's parameters.
    Evaluation keeps dataset order (`UnitaskTrainer`), which decoding relies on."""

    def __init__(self, *args: Any, tasks: dict[str, TextTask], evaluation: dict[str, Any], batch_sampler: TaskBatchSampler,
                 weighting_lr: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks = tasks
        self.evaluation = evaluation  # task -> split -> (model dataset, encoded features, frame)
        self.batch_sampler = batch_sampler
        self.weighting_lr = weighting_lr
        self._task_loss: dict[str, list[float]] = defaultdict(list)

    # training batches: one task each, drawn by the sampler
    def get_train_dataloader(self) -> DataLoader:
        """The sampler's batches as they are: under DDP it already yields this rank's shard of each
        global batch, which accelerate's own sharding (every N-th batch to each rank, short batches
        dropped) must not split again; hence `num_processes=1` here."""
        from accelerate.data_loader import prepare_data_loader

        same_on_every_rank(
            self.batch_sampler.fingerprint(),
            "multitask: the task batches (rows, sampler settings, seed)",
            hint="every process must read the same params.yaml and prepared data, or the ranks train different tasks in a step",
        )
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=self.batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0,
                                   put_on_device=self.accelerator.device_placement)

    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(model)
        weighting = list(self.model.weighting.parameters())
        if weighting and not any(g.get("unitask_weighting") for g in optimizer.param_groups):
            ids = {id(p) for p in weighting}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group(
                {"params": weighting, "weight_decay": 0.0, "lr": self.weighting_lr or self.args.learning_rate,
                 "unitask_weighting": True}
            )
        return optimizer

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        name = list(self.tasks)[int(inputs["task_id"].reshape(-1)[0])]
        if model.training and self.args.world_size > 1:
            inputs = {**inputs, "loss_scale": self.shard_share(name, inputs)}
        outputs = model(**inputs)
        if "raw_loss" in outputs:
            self._task_loss[name].append(float(outputs["raw_loss"]))
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def shard_share(self, name: str, inputs: dict[str, Any]) -> torch.Tensor:
        """This rank's loss items (labelled tokens for a token task, rows otherwise) over the mean per
        rank. A head's loss is a mean over its batch's items, and DDP averages the ranks' gradients:
        scaled by this share, that average is the gradient of the global batch's mean loss, as one
        process computes it, also where shards differ in size."""
        labels = inputs.get("labels")
        if self.tasks[name].type == "token_classification" and labels is not None:
            items = labels.ne(-100).sum()
        else:
            items = torch.tensor(len(inputs["input_ids"]))
        items = items.to(self.args.device, torch.float32)
        total = self.accelerator.reduce(items.clone(), reduction="sum")
        return items * self.args.world_size / total.clamp(min=1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs also get each task's mean loss (unweighted, over every rank) since the last
        log. Every rank logs a training loss at the same steps, and drew the same tasks."""
        if "loss" in logs and self._task_loss:
            names = [n for n in self.tasks if self._task_loss.get(n)]
            sums = torch.tensor([sum(self._task_loss[n]) for n in names], dtype=torch.float64, device=self.args.device)
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="mean")
            logs = {**logs, **{f"loss_{n}": s / len(self._task_loss[n]) for n, s in zip(names, sums.tolist())}}
            self._task_loss.clear()
        super().log(logs, start_time)

    # evaluation: every task on its validation split, and their mean
    def task_outputs(self, name: str, split: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Decoded outputs and metrics of task `name` on `split`."""
        dataset, features, frame = self.evaluation[name][split]
        task = self.tasks[name]
        predictions = self.predict(dataset, metric_key_prefix=f"{split}_{name}").predictions
        decoded = task.decode(predictions, features, frame)
        return decoded, task_metrics(task.type, task.gold(frame), decoded)

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        scores, metrics = {}, {}
        for name, task in self.tasks.items():
            _, values = self.task_outputs(name, "validation")
            metrics.update({f"{metric_key_prefix}_{name}_{k}": v for k, v in values.items()})
            scores[name] = unit_score(task.type, task.main_metric, values[task.main_metric])
        metrics[f"{metric_key_prefix}_{MEAN}"] = sum(scores.values()) / len(scores)
        metrics.update({f"weight_{n}": w for n, w in self.model.weighting.weights().items()})
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class WeightingEpochs(TrainerCallback):
    """Tells the loss weighting that an epoch ended (DWA recomputes its weights then)."""

    def __init__(self, weighting: LossWeighting) -> None:
        self.weighting = weighting

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.weighting.end_epoch()


# ---- the stage -------------------------------------------------------------------------------


@dataclass
class Joint:
    """The multi-task data, model and trainer of one run."""

    names: list[str]
    tasks: dict[str, TextTask]
    frames: dict[str, dict[str, Any]]
    features: dict[str, dict[str, Any]]
    tokenizer: Any
    sizes: dict[str, int]
    rates: dict[str, float]
    probabilities: dict[str, float]
    steps: int
    sampler: TaskBatchSampler
    model: MultitaskModel
    weighting: LossWeighting
    trainer: Any


def task_data(cfg: Config, names: list[str], tokenizer: Any) -> tuple[dict[str, TextTask], dict[str, Any], dict[str, Any]]:
    """Each task, its splits (every one must have rows) and their features."""
    tasks = {name: text_task(cfg, name) for name in names}
    frames = {name: {split: read_split(cfg, name, split) for split in SPLITS} for name in names}
    for name in names:
        for split in SPLITS:
            if frames[name][split].empty:
                raise DataError(
                    f"tasks.{name}: the {split} split has no rows; multi-task training needs rows in every split",
                    hint=f"check `unitask prepare --task {name}` (reports/prepare/{name}.json), or leave the task out of multitask.tasks",
                )
    features = {
        name: {split: tasks[name].encode(frames[name][split], tokenizer, cfg.model.max_length) for split in SPLITS}
        for name in names
    }
    return tasks, frames, features


def training_arguments(cfg: Config) -> Any:
    from transformers import TrainingArguments

    mt = cfg.multitask
    return TrainingArguments(
        output_dir=str(cfg.path(mt.checkpoints)),
        **trainer_arguments(mt, cfg.seed),
        **selection_arguments(mt, cfg.seed, MEAN),
        remove_unused_columns=False,
        label_names=[],
        # a step trains one task's head: the other heads get no gradient. DDP must find them
        # (their .grad stays None, so AdamW leaves them be, as in one process); a zero-loss term
        # on them would give zero gradients that AdamW's momentum and decay still apply
        ddp_find_unused_parameters=True,
    )


def build_joint(cfg: Config, names: list[str]) -> Joint:
    """Data, batch sampler, model, loss weighting and trainer of the multi-task run."""
    from transformers import EarlyStoppingCallback, set_seed

    mt = cfg.multitask
    tokenizer = load_tokenizer(cfg)
    tasks, frames, features = task_data(cfg, names, tokenizer)
    args = training_arguments(cfg)
    sizes = {name: len(features[name]["train"]) for name in names}
    rates = {name: cfg.tasks[name].multitask.rate for name in names}
    probabilities = task_probabilities(sizes, mt.sampler, mt.temperature, mt.size_cap, rates)
    global_batch = mt.batch_size * args.world_size
    steps = mt.steps_per_epoch or steps_per_epoch(list(sizes.values()), global_batch)
    sampler = TaskBatchSampler(
        [[len(ids) for ids in features[name]["train"]["input_ids"]] for name in names],
        global_batch, [probabilities[n] for n in names], steps, cfg.seed, round_robin=mt.sampler == "round_robin",
        rank=args.process_index, world_size=args.world_size,
    )  # fmt: skip
    encoder = build_encoder(cfg)
    set_seed(cfg.seed)
    model = MultitaskModel(encoder, {name: HeadSpec(task.type, task.num_labels()) for name, task in tasks.items()})
    weighting = make_weighting(mt.weighting, names, {n: cfg.tasks[n].multitask.weight for n in names}, mt.dwa_temperature)
    train_set = TaskRows([(i, model_rows(features[n]["train"], INPUTS + TARGETS)) for i, n in enumerate(names)])
    evaluation = {
        name: {
            split: (TaskRows([(i, model_rows(features[name][split], INPUTS))]), features[name][split], frames[name][split])
            for split in ("validation", "test")
        }
        for i, name in enumerate(names)
    }
    callbacks: list[Any] = [MlflowMetrics(), WeightingEpochs(weighting)]
    if mt.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=mt.early_stopping_patience))
    trainer = MultitaskTrainer(
        model=WeightedModel(model, weighting), args=args,
        data_collator=TaskCollator([tasks[n].collator(tokenizer) for n in names]), train_dataset=train_set,
        eval_dataset={name: evaluation[name]["validation"][0] for name in names},  # scored by `evaluate`
        processing_class=tokenizer, callbacks=callbacks, tasks=tasks, evaluation=evaluation, batch_sampler=sampler,
        weighting_lr=mt.weighting_lr,
    )  # fmt: skip
    return Joint(names, tasks, frames, features, tokenizer, sizes, rates, probabilities, steps, sampler, model, weighting, trainer)


def multitask(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Train the multi-task model on `multitask.tasks`; return the summary written to `multitask.metrics`."""
    mt = cfg.multitask
    names = cfg.multitask_tasks()
    if not names:
        raise ConfigError("multitask: no text tasks to train", hint="declare text tasks, or list them in multitask.tasks")
    joint = build_joint(cfg, names)
    args = joint.trainer.args
    params = {
        "tasks": ",".join(names),
        "encoder": encoder_name(cfg),
        "seed": cfg.seed,
        "max_length": cfg.model.max_length,
        "bf16": args.bf16,
        "steps_per_epoch": joint.steps,
        "world_size": args.world_size,
        **{f"train_features.{n}": size for n, size in joint.sizes.items()},
        **{f"sampling.{n}": round(p, 6) for n, p in joint.probabilities.items()},
        **flatten("multitask", mt.model_dump(exclude={"tasks"})),
        **{f"multitask.{field}.{n}": v for n in names for field, v in cfg.tasks[n].multitask.model_dump().items()},
    }
    run = TrainingRun("multitask", joint.trainer, cfg.path(mt.checkpoints), params, datasets=names)
    return run_training(cfg, run, resume, functools.partial(_finish, cfg, joint))


def _summary(cfg: Config, joint: Joint, trained: Trained) -> dict[str, Any]:
    mt, trainer, names, tasks = cfg.multitask, trained.trainer, joint.names, joint.tasks
    micro_batches = _micro_batches(trainer.state.global_step, joint.steps, trainer.args.gradient_accumulation_steps)
    seen = joint.sampler.examples_seen(micro_batches)
    return {
        "tasks": names,
        "types": {n: tasks[n].type for n in names},
        "main_metrics": {n: tasks[n].main_metric for n in names},
        "encoder": encoder_name(cfg),
        "sampler": {"name": mt.sampler, "temperature": mt.temperature, "size_cap": mt.size_cap,
                    "rates": joint.rates, "probabilities": joint.probabilities},
        "weighting": {"name": mt.weighting, "final_weights": joint.weighting.weights()},
        "train": {
            "loss": trained.result.training_loss,
            "steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "steps_per_epoch": joint.steps,
            "world_size": trainer.args.world_size,
            "best_step": trainer.state.best_global_step,
            "seconds": trained.seconds,
            "examples": joint.sizes,
            "examples_seen": {**{n: seen[i] for i, n in enumerate(names)}, "total": sum(seen)},
        },
        "parameters": {
            "encoder": sum(p.numel() for p in joint.model.encoder.parameters()),
            "heads": sum(p.numel() for p in joint.model.heads.parameters()),
        },
    }  # fmt: skip


def _finish(cfg: Config, joint: Joint, trained: Trained) -> dict[str, Any]:
    """Score and decode every task's validation and test rows (every process); write (the main one)."""
    summary = _summary(cfg, joint, trained)
    tasks = joint.tasks
    decoded: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for split in SCORED_SPLITS:
        summary[split] = {}
        for name in tasks:
            decoded[name, split], summary[split][name] = trained.trainer.task_outputs(name, split)
        summary[split][MEAN] = sum(
            unit_score(t.type, t.main_metric, summary[split][n][t.main_metric]) for n, t in tasks.items()
        ) / len(tasks)
    if trained.main:
        summary["mlflow_run_id"] = trained.run.info.run_id
        for (name, split), outputs in decoded.items():
            write_predictions(cfg, "multitask", name, tasks[name].gold(joint.frames[name][split]), outputs, split)
        _write_outputs(cfg, joint.model, joint.tokenizer, tasks, summary)
    return summary


def _micro_batches(global_step: int, steps: int, accumulation: int) -> int:
    """Batches consumed after `global_step` optimizer steps (an epoch's last step may take fewer)."""
    per_epoch = -(-steps // accumulation)
    epochs, rest = divmod(global_step, per_epoch)
    return epochs * steps + min(rest * accumulation, steps)


def _write_outputs(cfg: Config, model: MultitaskModel, tokenizer: Any, tasks: dict[str, TextTask], summary: dict[str, Any]) -> None:
    """Model folder (atomically), metrics JSON, and the final metrics and model in the MLflow run."""
    import mlflow

    manifest = {
        "max_length": cfg.model.max_length,
        "encoder": summary["encoder"],
        "tasks": {
            name: {
                "type": task.type,
                "labels": task.labels(),
                "main_metric": task.main_metric,
                "config": cfg.tasks[name].model_dump(mode="json"),
                **({"doc_stride": task.doc_stride, "max_answer_length": task.max_answer_length}
                   if task.type == "extractive_qa" else {}),
            }
            for name, task in tasks.items()
        },
    }
    model_dir = cfg.path(cfg.multitask.output)
    with atomic_dir(model_dir) as tmp:
        save_multitask(model, tokenizer, tmp, manifest)
    metrics_file = cfg.path(cfg.multitask.metrics)
    write_json(metrics_file, summary)
    mlflow.log_metrics(flatten("train", summary["train"]) | {f"{s}/{MEAN}": summary[s][MEAN] for s in ("validation", "test")})
    mlflow.log_metrics(flatten("weight", summary["weighting"]["final_weights"]))
    mlflow.log_artifact(str(metrics_file))
    results = {split: {n: summary[split][n] for n in tasks} for split in ("validation", "test")}
    log_trained_model("multitask", model_dir, results)
