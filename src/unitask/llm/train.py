"""`unitask llm`: LoRA (PEFT) on one causal LM over every listed text task at once, text to text.

Each row becomes a prompt (the task's instruction and template, in the tokenizer's chat template) and
a target (label word, number, entities, answer span; `unitask.llm.prompts`). Batches hold one task's
rows, drawn by the multi-task samplers and rates (`unitask.training.sampling`), length-grouped and
left-padded, so every answer ends at the last column: the loss counts target tokens only and the
vocabulary projection runs only over the last answer-width positions (`logits_to_keep`), not the prompt.

Before training, the base model answers the test rows with `llm.shots` in-context examples
(`llm_zeroshot`); after it, the LoRA model answers validation and the same test rows (`llm`). Both write test predictions
to reports/predictions/<model>/<task>.jsonl for `unitask evaluate`. Outputs: the adapter(s)
(safetensors), tokenizer and unitask-model.json in `llm.output`, `llm.metrics`, one MLflow run.

Under `torchrun --nproc_per_node=N` every process trains (DDP; with `llm.fsdp.enabled` on GPUs, FSDP2)
on its shard of each global batch (`llm.batch_size` rows per process, all ranks on the same task),
with the loss a mean over the global batch's answer tokens, as one process with an N times larger
batch computes it. The ranks must end with the same adapter weights (checked). Only rank 0 scores
the models (the others wait) and writes outputs and the MLflow run.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from unitask.atomic import atomic_dir, write_json
from unitask.config import Config
from unitask.errors import ConfigError, DataError
from unitask.evaluation.metrics import MAIN_METRIC, task_metrics, unit_score
from unitask.evaluation.predictions import predictions_path, write_predictions
from unitask.llm.decode import Answerer, Limits, answer_ids, prompt_ids
from unitask.llm.model import base_model_path, load_base, load_tokenizer
from unitask.llm.prompts import TaskPrompt
from unitask.models import MANIFEST
from unitask.tasks.text import read_split, text_task
from unitask.tracking import flatten
from unitask.training.distributed import from_rank_zero, same_on_every_rank, weights_fingerprint
from unitask.training.sampling import TaskBatchSampler, TaskCollator, TaskRows, sample_rows, steps_per_epoch, task_probabilities
from unitask.training.skeleton import Trained, TrainingRun, run_training
from unitask.training.trainer import MlflowMetrics, is_main_process, trainer_arguments

IGNORE = -100
MEAN = "mean_score"
EVAL_SPLITS = ("validation", "test")


# ---- data ------------------------------------------------------------------------------------


def task_prompts(cfg: Config) -> dict[str, TaskPrompt]:
    names = cfg.llm_tasks()
    if not names:
        raise ConfigError("llm: no text tasks to train", hint="declare text tasks, or list them in llm.tasks")
    return {n: TaskPrompt(n, cfg.task(n), cfg.llm.prompts.get(n)) for n in names}


def limits(cfg: Config) -> Limits:
    from unitask.training.trainer import use_bf16

    return Limits(cfg.llm.max_input_tokens, cfg.llm.max_new_tokens, cfg.llm.eval_batch_size, use_bf16(cfg.llm.bf16))


def training_row(tokenizer: Any, prompt: TaskPrompt, row: dict[str, Any], lim: Limits, max_length: int) -> dict[str, list[int]]:
    """Prompt + target tokens, labels only on the target (a prompt too long loses its first tokens)."""
    target = answer_ids(tokenizer, prompt.target(row))
    ids = prompt_ids(tokenizer, prompt, row, lim)[-max(max_length - len(target), 1):]
    return {"input_ids": ids + target, "labels": [IGNORE] * len(ids) + target}


class LeftPadCollator:
    """Left-pads a batch: input ids, attention mask, position ids (from the mask) and labels."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, width - n:] = torch.tensor(r["input_ids"])
            labels[i, width - n:] = torch.tensor(r["labels"])
            mask[i, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "labels": labels}


def answer_loss(model: Any, batch: dict[str, torch.Tensor], num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """Cross-entropy over target tokens, their mean (or their sum over `num_items`); logits only over
    the last (answer width + 1) positions. With left padding every target ends at the last column, so
    those positions hold every target."""
    labels = batch["labels"]
    answer = (labels != IGNORE).sum(-1).max()
    keep = int(answer) + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    flat = (logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, -(keep - 1):].reshape(-1))
    if num_items is None:
        return torch.nn.functional.cross_entropy(*flat, ignore_index=IGNORE)
    return torch.nn.functional.cross_entropy(*flat, ignore_index=IGNORE, reduction="sum") / num_items


# ---- adapters and trainer ----------------------------------------------------------------------


def lora_model(cfg: Config, base: Any, names: list[str]) -> Any:
    """The base model with LoRA: one adapter (`default`) or, with `llm.adapters: per_task`, one per task,
    every adapter trainable (the trainer activates the batch's task's adapter)."""
    from peft import get_peft_model

    config = lora_config(cfg, base)
    adapters = names if cfg.llm.adapters == "per_task" else ["default"]
    try:
        model = get_peft_model(base, config, adapter_name=adapters[0])
    except ValueError as exc:  # target modules not in the model
        raise ConfigError(f"llm.lora.target_modules: {exc}", hint="name linear layers of the model, e.g. q_proj, v_proj") from None
    for name in adapters[1:]:
        model.add_adapter(name, config)
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    return model


def lora_config(cfg: Config, base: Any) -> Any:
    """PEFT's LoraConfig from `llm.lora` (`last_layers`: only the top decoder layers of `base`)."""
    from peft import LoraConfig

    lo = cfg.llm.lora
    layers = base.config.num_hidden_layers
    if lo.last_layers is not None and lo.last_layers > layers:
        raise ConfigError(f"llm.lora.last_layers: {lo.last_layers}, but the model has {layers} layers",
                          hint=f"use at most {layers}, or null for every layer")
    chosen = None if lo.last_layers is None else list(range(layers - lo.last_layers, layers))
    return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=list(lo.target_modules),
                      layers_to_transform=chosen, task_type="CAUSAL_LM")


def activate(model: Any, adapter: str) -> None:
    """Route the LoRA layers through `adapter` without changing which parameters are trainable
    (PEFT's set_adapter would freeze the others, and the optimizer must hold them all)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module._active_adapter = [adapter]


class LlmTrainer(Trainer):
    """Trainer with one task per batch (the task sampler, which under DDP yields this rank's shard of
    each global batch), the answer-only loss over the global batch's target tokens, and per-task adapters."""

    def __init__(self, *args: Any, batch_sampler: TaskBatchSampler, adapters: list[str] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler
        self.adapters = adapters  # task index -> adapter name (per_task), or None
        # `compute_loss` divides by `num_items_in_batch` (the target tokens of every rank and
        # accumulation step): Trainer must count them and not divide again for accumulation
        self.model_accepts_loss_kwargs = True

    def get_train_dataloader(self) -> DataLoader:
        """The sampler's batches as they are: it already yields this rank's shard of each global batch,
        which accelerate's own sharding (every N-th batch to each rank) must not split again."""
        from accelerate.data_loader import prepare_data_loader

        same_on_every_rank(
            self.batch_sampler.fingerprint(), "llm: the task batches (rows, sampler settings, seed)",
            hint="every process must read the same params.yaml and prepared data, or the ranks train different tasks in a step",
        )
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return prepare_data_loader(loader, self.args.device, num_processes=1, process_index=0,
                                   put_on_device=self.accelerator.device_placement)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        """This rank's sum of target-token losses over the global count, times the number of processes,
        which DDP's gradient mean divides again: the gradient of the global batch's mean token loss."""
        task = int(inputs.pop("task_id").reshape(-1)[0])
        if self.adapters:
            activate(self.model, self.adapters[task])
        loss = answer_loss(model, inputs, num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            loss = loss * self.accelerator.num_processes
        return (loss, {}) if return_outputs else loss


def make_trainer(cfg: Config, model: Any, tokenizer: Any, prompts: dict[str, TaskPrompt], trains: dict[str, Any],
                 output_dir: str, callbacks: list[Any] | None = None, **overrides: Any) -> tuple[LlmTrainer, dict[str, Any]]:
    """The stage's trainer for the LoRA `model` on the tasks' train frames (`overrides`: TrainingArguments),
    and its plan: train rows, sampling probabilities and steps per epoch per task."""
    from transformers import TrainingArguments

    lc, names = cfg.llm, list(prompts)
    lim = limits(cfg)
    rows = [[training_row(tokenizer, prompts[n], r, lim, lc.max_length) for r in trains[n].to_dict("records")] for n in names]
    sizes = {n: len(r) for n, r in zip(names, rows)}
    args = TrainingArguments(output_dir=output_dir, **{**training_settings(cfg), **overrides})
    probabilities = task_probabilities(sizes, lc.sampler, lc.temperature, lc.size_cap, lc.rates)
    global_batch = lc.batch_size * args.world_size
    steps = steps_per_epoch(list(sizes.values()), global_batch)
    sampler = TaskBatchSampler([[len(r["input_ids"]) for r in task] for task in rows], global_batch,
                               [probabilities[n] for n in names], steps, cfg.seed, round_robin=lc.sampler == "round_robin",
                               rank=args.process_index, world_size=args.world_size)
    trainer = LlmTrainer(
        model=model, args=args, train_dataset=TaskRows(list(enumerate(rows))),
        data_collator=TaskCollator([LeftPadCollator(tokenizer.pad_token_id)] * len(names)),
        processing_class=tokenizer, callbacks=[MlflowMetrics(), *(callbacks or [])], batch_sampler=sampler,
        adapters=names if lc.adapters == "per_task" else None,
    )
    if lc.fsdp.enabled and not trainer.is_fsdp_enabled:  # accelerate shards only across several GPU processes
        raise ConfigError(f"llm.fsdp.enabled: accelerate did not set up FSDP for {args.world_size} process(es)",
                          hint="run under torchrun with one process per GPU, or set llm.fsdp.enabled to false")
    return trainer, {"sizes": sizes, "probabilities": probabilities, "steps": steps}


def training_settings(cfg: Config) -> dict[str, Any]:
    """The stage's TrainingArguments (besides output_dir): the shared ones, checkpoints for --resume,
    the loss averaged over every rank's target tokens, and FSDP2 from `llm.fsdp` (GPUs only:
    accelerate applies FSDP on GPUs and the like, and on CPU would quietly wrap the model in DDP)."""
    lc = cfg.llm
    settings = {
        **trainer_arguments(lc, cfg.seed), "save_strategy": "steps", "save_steps": lc.save_steps, "save_total_limit": 2,
        "logging_first_step": True, "remove_unused_columns": False, "label_names": [],
        "average_tokens_across_devices": True, "ddp_find_unused_parameters": lc.adapters == "per_task",
    }
    if lc.fsdp.enabled and not torch.cuda.is_available():
        raise ConfigError("llm.fsdp.enabled: FSDP needs GPUs; on CPU accelerate ignores its FSDP plugin and wraps the model in DDP",
                          hint="set llm.fsdp.enabled to false on CPU (torchrun then trains with DDP)")
    return {**settings, **lc.fsdp.training_arguments()}


# ---- the stage -------------------------------------------------------------------------------


def eval_rows(cfg: Config, name: str, split: str) -> Any:
    """The rows of `split` scored: a seeded sample of `llm.max_eval_rows`, or all."""
    return sample_rows(read_split(cfg, name, split), cfg.llm.max_eval_rows, cfg.seed).reset_index(drop=True)


def score_model(answerer: Answerer, prompts: dict[str, TaskPrompt], frames: dict[str, dict[str, Any]],
                shots: dict[str, list[dict[str, Any]]] | None = None, splits: tuple[str, ...] = EVAL_SPLITS,
                desc: str = "llm: scoring") -> dict[str, Any]:
    """Outputs, metrics and unparsed counts per split and task, and the mean of the main metrics (with a
    progress bar over the rows)."""
    from tqdm.auto import tqdm

    result: dict[str, Any] = {"outputs": {}, "unparsed": {}}
    total = sum(len(frames[name][split]) for split in splits for name in prompts)
    with tqdm(total=total, desc=desc, unit="row") as bar:
        for split in splits:
            _score_split(answerer, prompts, frames, shots or {}, split, result, bar.update)
    return result


def _score_split(answerer: Answerer, prompts: dict[str, TaskPrompt], frames: dict[str, dict[str, Any]],
                 shots: dict[str, list[dict[str, Any]]], split: str, result: dict[str, Any], progress: Any) -> None:
    result[split], result["outputs"][split], result["unparsed"][split] = {}, {}, {}
    for name, prompt in prompts.items():
        frame = frames[name][split]
        outputs, unparsed = answerer.answer(prompt, frame.to_dict("records"), shots.get(name, []), progress)
        metrics = task_metrics(prompt.type, frames[name]["gold"][split], outputs)
        result[split][name] = {**metrics, "unparsed": unparsed, "rows": len(frame)}
        result["outputs"][split][name] = outputs
        result["unparsed"][split][name] = unparsed
    result[split][MEAN] = sum(
        unit_score(p.type, MAIN_METRIC[p.type], result[split][n][MAIN_METRIC[p.type]]) for n, p in prompts.items()
    ) / len(prompts)


def llm_frames(cfg: Config, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each task's train rows, its validation and test rows (`eval_rows`) and their gold values."""
    frames: dict[str, dict[str, Any]] = {}
    for name in names:
        train = read_split(cfg, name, "train")
        if train.empty:
            raise DataError(f"tasks.{name}: the train split has no rows", hint=f"check `unitask prepare --task {name}`")
        frames[name] = {"train": train, **{s: eval_rows(cfg, name, s) for s in EVAL_SPLITS}}
        task = text_task(cfg, name)
        frames[name]["gold"] = {s: task.gold(frames[name][s]) for s in EVAL_SPLITS}
    return frames


def llm(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Score the base model, train LoRA on `llm` tasks, score it; return the summary in `llm.metrics`."""
    from transformers import set_seed

    stage_started = time.perf_counter()
    lc = cfg.llm
    prompts = task_prompts(cfg)
    names = list(prompts)
    frames = llm_frames(cfg, names)
    base_path = base_model_path(cfg)
    tokenizer = load_tokenizer(base_path)
    set_seed(cfg.seed)
    base = load_base(base_path)
    model = lora_model(cfg, base, names)
    trainer, plan = make_trainer(cfg, model, tokenizer, prompts, {n: frames[n]["train"] for n in names}, str(cfg.path(lc.checkpoints)))
    zeroshot = None
    if lc.zeroshot:  # rank 0 scores the base model (the adapters off), the other ranks wait
        if is_main_process():
            zeroshot = score_zeroshot(cfg, model, tokenizer, prompts, frames)
        trainer.accelerator.wait_for_everyone()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args, sizes, probabilities = trainer.args, plan["sizes"], plan["probabilities"]
    params = {
        "tasks": ",".join(names), "model": lc.model, "base_path": base_path, "seed": cfg.seed, "bf16": args.bf16,
        "steps_per_epoch": plan["steps"], "world_size": args.world_size, "fsdp": trainer.is_fsdp_enabled,
        "trainable_parameters": trainable,
        **{f"train_rows.{n}": s for n, s in sizes.items()},
        **{f"sampling.{n}": round(p, 6) for n, p in probabilities.items()},
        **flatten("llm", lc.model_dump(exclude={"tasks", "rates", "prompts", "lora"})),
        **{f"llm.lora.{k}": (",".join(v) if isinstance(v, list) else v) for k, v in lc.lora.model_dump().items()},
        **{f"llm.rates.{n}": v for n, v in lc.rates.items()},
    }  # fmt: skip

    def finish(trained: Trained) -> dict[str, Any]:
        """Merge or gather the trained adapters (every process); score and write them (rank 0)."""
        tuned = trained_model(cfg, trained.trainer, model, base_path, names)
        summary = None
        if trained.main:
            train = {"loss": trained.result.training_loss, "steps": trained.trainer.state.global_step,
                     "seconds": trained.seconds, "examples": sizes, "trainable_parameters": trainable,
                     "world_size": args.world_size, "fsdp": trainer.is_fsdp_enabled}  # fmt: skip
            summary = score_and_save(cfg, tuned, tokenizer, prompts, frames, base_path, zeroshot,
                                     {"train": train, "mlflow_run_id": trained.run.info.run_id}, stage_started)  # fmt: skip
        return from_rank_zero(summary)

    return run_training(cfg, TrainingRun("llm", trainer, cfg.path(lc.checkpoints), params), resume, finish)


def score_zeroshot(cfg: Config, model: Any, tokenizer: Any, prompts: dict[str, TaskPrompt], frames: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base model's answers (`model` with its adapters off), with `llm.shots` in-context examples
    from train, on validation (evaluate picks each task's best model there, the base model among them) and test."""
    shots = {n: frames[n]["train"].sample(n=min(cfg.llm.shots, len(frames[n]["train"])), random_state=cfg.seed).to_dict("records")
             for n in prompts}
    started = time.perf_counter()
    with model.disable_adapter():
        zeroshot = score_model(Answerer(model, tokenizer, limits(cfg)), prompts, frames, shots, splits=EVAL_SPLITS,
                               desc="llm: scoring the base model (llm_zeroshot)")
    zeroshot["seconds"] = round(time.perf_counter() - started, 1)
    for name, prompt in prompts.items():
        metric = MAIN_METRIC[prompt.type]
        print(f"unitask: llm_zeroshot {name} test {metric} {zeroshot['test'][name][metric]:.4f} "
              f"({zeroshot['seconds']} s for every task)", flush=True)
    return zeroshot


def trained_model(cfg: Config, trainer: LlmTrainer, model: Any, base_path: str, names: list[str]) -> Any:
    """The trained LoRA model whole on rank 0 (None on the others). Under DDP every rank holds it, and
    every rank must hold the same adapter weights, or a process trained alone (a model DDP never
    wrapped). Under FSDP the shards are gathered (every rank takes part) into a fresh copy on rank 0."""
    if trainer.is_fsdp_enabled:
        state = trainer.accelerator.get_state_dict(trainer.model)  # the full state dict, on rank 0
        if not is_main_process():
            return None
        model = lora_model(cfg, load_base(base_path), names)
        model.load_state_dict(state)
        return model
    same_on_every_rank(
        weights_fingerprint(model), "llm: the trained adapter weights",
        hint="the processes trained apart: the model was not wrapped in DistributedDataParallel (a bug); run one process meanwhile",
    )
    return model if is_main_process() else None


def score_and_save(cfg: Config, model: Any, tokenizer: Any, prompts: dict[str, TaskPrompt], frames: dict[str, dict[str, Any]],
                   base_path: str, zeroshot: dict[str, Any] | None, head: dict[str, Any], stage_started: float) -> dict[str, Any]:
    """Rank 0: score the trained model on validation and test, write both models' predictions, the
    adapter, the metrics and the MLflow run's metrics; return the summary (with `head`'s keys)."""
    lc, names = cfg.llm, list(prompts)
    if lc.adapters == "per_task":
        activate(model, names[0])  # inference names each row's adapter
    scoring = time.perf_counter()
    tuned = score_model(Answerer(model, tokenizer, limits(cfg), lc.adapters == "per_task"), prompts, frames,
                        desc="llm: scoring the LoRA model")
    scoring = time.perf_counter() - scoring
    summary: dict[str, Any] = {
        "tasks": names,
        "types": {n: p.type for n, p in prompts.items()},
        "main_metrics": {n: MAIN_METRIC[p.type] for n, p in prompts.items()},
        "model": lc.model,
        "adapters": lc.adapters,
        **head,
        "validation": tuned["validation"], "test": tuned["test"],
        "seconds": {"scoring": round(scoring, 1), "stage": round(time.perf_counter() - stage_started, 1)},
        "zeroshot": None if zeroshot is None else {
            "shots": lc.shots, "seconds": zeroshot["seconds"], "validation": zeroshot["validation"], "test": zeroshot["test"]},
    }
    for name in names:
        for split in EVAL_SPLITS:
            gold = frames[name]["gold"][split]
            write_predictions(cfg, "llm", name, gold, tuned["outputs"][split][name], split)
            if zeroshot is not None:
                write_predictions(cfg, "llm_zeroshot", name, gold, zeroshot["outputs"][split][name], split)
    if zeroshot is None:  # still a declared output of the stage (dvc.yaml): there, and empty
        predictions_path(cfg, "llm_zeroshot", names[0]).parent.mkdir(parents=True, exist_ok=True)
    save_llm(cfg, model, tokenizer, prompts, base_path, summary)
    return summary


def save_llm(cfg: Config, model: Any, tokenizer: Any, prompts: dict[str, TaskPrompt], base_path: str, summary: dict[str, Any]) -> None:
    """The adapter(s), tokenizer and manifest (atomically), the metrics JSON, and both in MLflow."""
    import mlflow

    from unitask.llm.predictor import manifest

    folder = cfg.path(cfg.llm.output)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)  # adapter weights only (safetensors); per_task: one subfolder per adapter
        tokenizer.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest(cfg, prompts, base_path))
    metrics_file = cfg.path(cfg.llm.metrics)
    write_json(metrics_file, summary)
    mlflow.log_metrics(flatten("", {k: summary[k] for k in ("train", "validation", "test")}))
    if summary["zeroshot"]:
        mlflow.log_metrics(flatten("zeroshot", {"test": summary["zeroshot"]["test"], "seconds": summary["zeroshot"]["seconds"]}))
    mlflow.log_artifact(str(metrics_file))
    mlflow.log_artifacts(str(folder), artifact_path="model")
