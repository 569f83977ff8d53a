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
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from unitask.atomic import atomic_dir, write_json
from unitask.config import Config
from unitask.errors import ConfigError, DataError
from unitask.evaluation.metrics import MAIN_METRIC, task_metrics, unit_score
from unitask.evaluation.predictions import write_predictions
from unitask.llm.decode import Answerer, Limits, answer_ids, prompt_ids
from unitask.llm.model import base_model_path, load_base, load_tokenizer
from unitask.llm.prompts import TaskPrompt
from unitask.tasks.text import read_split, text_task
from unitask.tracking import flatten, stage_run
from unitask.training.finetune import resume_point, sample_rows
from unitask.training.multitask import TaskCollator, TaskRows
from unitask.training.sampling import TaskBatchSampler, steps_per_epoch, task_probabilities
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


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over target tokens; logits only over the last (answer width + 1) positions.
    With left padding every target ends at the last column, so those positions hold every target."""
    labels = batch["labels"]
    answer = (labels != IGNORE).sum(-1).max()
    keep = int(answer) + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, -(keep - 1):].reshape(-1), ignore_index=IGNORE
    )


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
    """Trainer with one task per batch (the task sampler), the answer-only loss, and per-task adapters."""

    def __init__(self, *args: Any, batch_sampler: TaskBatchSampler, adapters: list[str] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler
        self.adapters = adapters  # task index -> adapter name (per_task), or None

    def get_train_dataloader(self) -> DataLoader:
        loader = DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)  # under DDP, each process takes its share of the batches

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
        task = int(inputs.pop("task_id").reshape(-1)[0])
        if self.adapters:
            activate(self.model, self.adapters[task])
        loss = answer_loss(model, inputs)
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
    probabilities = task_probabilities(sizes, lc.sampler, lc.temperature, lc.size_cap, lc.rates)
    steps = steps_per_epoch(list(sizes.values()), lc.batch_size)
    sampler = TaskBatchSampler([[len(r["input_ids"]) for r in task] for task in rows], lc.batch_size,
                               [probabilities[n] for n in names], steps, cfg.seed, round_robin=lc.sampler == "round_robin")
    settings = {
        **trainer_arguments(lc, cfg.seed), "save_strategy": "steps", "save_steps": lc.save_steps, "save_total_limit": 2,
        "logging_first_step": True, "remove_unused_columns": False, "label_names": [],
        "ddp_find_unused_parameters": lc.adapters == "per_task", **overrides,
    }
    trainer = LlmTrainer(
        model=model, args=TrainingArguments(output_dir=output_dir, **settings), train_dataset=TaskRows(list(enumerate(rows))),
        data_collator=TaskCollator([LeftPadCollator(tokenizer.pad_token_id)] * len(names)),
        processing_class=tokenizer, callbacks=[MlflowMetrics(), *(callbacks or [])], batch_sampler=sampler,
        adapters=names if lc.adapters == "per_task" else None,
    )
    return trainer, {"sizes": sizes, "probabilities": probabilities, "steps": steps}


# ---- the stage -------------------------------------------------------------------------------


def eval_rows(cfg: Config, name: str, split: str) -> Any:
    """The rows of `split` scored: a seeded sample of `llm.max_eval_rows`, or all."""
    return sample_rows(read_split(cfg, name, split), cfg.llm.max_eval_rows, cfg.seed).reset_index(drop=True)


def score_model(answerer: Answerer, prompts: dict[str, TaskPrompt], frames: dict[str, dict[str, Any]],
                shots: dict[str, list[dict[str, Any]]] | None = None, splits: tuple[str, ...] = EVAL_SPLITS) -> dict[str, Any]:
    """Outputs, metrics and unparsed counts per split and task, and the mean of the main metrics."""
    result: dict[str, Any] = {"outputs": {}, "unparsed": {}}
    for split in splits:
        result[split], result["outputs"][split], result["unparsed"][split] = {}, {}, {}
        for name, prompt in prompts.items():
            frame = frames[name][split]
            outputs, unparsed = answerer.answer(prompt, frame.to_dict("records"), (shots or {}).get(name, []))
            metrics = task_metrics(prompt.type, frames[name]["gold"][split], outputs)
            result[split][name] = {**metrics, "unparsed": unparsed, "rows": len(frame)}
            result["outputs"][split][name] = outputs
            result["unparsed"][split][name] = unparsed
        result[split][MEAN] = sum(
            unit_score(p.type, MAIN_METRIC[p.type], result[split][n][MAIN_METRIC[p.type]]) for n, p in prompts.items()
        ) / len(prompts)
    return result


def llm(cfg: Config, resume: bool = False) -> dict[str, Any]:
    """Score the base model, train LoRA on `llm` tasks, score it; return the summary in `llm.metrics`."""
    from transformers import set_seed

    stage_started = time.perf_counter()
    lc = cfg.llm
    prompts = task_prompts(cfg)
    names = list(prompts)
    frames: dict[str, dict[str, Any]] = {}
    for name in names:
        train = read_split(cfg, name, "train")
        if train.empty:
            raise DataError(f"tasks.{name}: the train split has no rows", hint=f"check `unitask prepare --task {name}`")
        frames[name] = {"train": train, **{s: eval_rows(cfg, name, s) for s in EVAL_SPLITS}}
        task = text_task(cfg, name)
        frames[name]["gold"] = {s: task.gold(frames[name][s]) for s in EVAL_SPLITS}
    base_path = base_model_path(cfg)
    tokenizer = load_tokenizer(base_path)
    set_seed(cfg.seed)
    base = load_base(base_path)
    lim = limits(cfg)
    checkpoints = cfg.path(lc.checkpoints)
    last = resume_point(checkpoints, resume)
    main = is_main_process()

    zeroshot = None
    if lc.zeroshot:
        shots = {n: frames[n]["train"].sample(n=min(lc.shots, len(frames[n]["train"])), random_state=cfg.seed).to_dict("records")
                 for n in names}
        started = time.perf_counter()
        # validation too: evaluate picks each task's best model on validation, the base model among them
        zeroshot = score_model(Answerer(base, tokenizer, lim), prompts, frames, shots, splits=EVAL_SPLITS)
        zeroshot["seconds"] = round(time.perf_counter() - started, 1)
        if main:
            for name, prompt in prompts.items():
                metric = MAIN_METRIC[prompt.type]
                print(f"unitask: llm_zeroshot {name} test {metric} {zeroshot['test'][name][metric]:.4f} "
                      f"({zeroshot['seconds']} s for every task)", flush=True)

    model = lora_model(cfg, base, names)
    trainer, plan = make_trainer(cfg, model, tokenizer, prompts, {n: frames[n]["train"] for n in names}, str(checkpoints))
    args, sizes, probabilities, steps = trainer.args, plan["sizes"], plan["probabilities"], plan["steps"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    params = {
        "tasks": ",".join(names), "model": lc.model, "base_path": base_path, "seed": cfg.seed, "bf16": args.bf16,
        "steps_per_epoch": steps, "resumed_from": last or "", "trainable_parameters": trainable,
        **{f"train_rows.{n}": s for n, s in sizes.items()},
        **{f"sampling.{n}": round(p, 6) for n, p in probabilities.items()},
        **flatten("llm", lc.model_dump(exclude={"tasks", "rates", "prompts", "lora"})),
        **{f"llm.lora.{k}": (",".join(v) if isinstance(v, list) else v) for k, v in lc.lora.model_dump().items()},
        **{f"llm.rates.{n}": v for n, v in lc.rates.items()},
    }
    with stage_run(cfg, "llm", params=params) if main else nullcontext() as run:
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - started
        trainer.remove_callback(MlflowMetrics)
        if lc.adapters == "per_task":
            activate(model, names[0])  # inference names each row's adapter
        scoring = time.perf_counter()
        tuned = score_model(Answerer(model, tokenizer, lim, lc.adapters == "per_task"), prompts, frames)
        scoring = time.perf_counter() - scoring
        summary: dict[str, Any] = {
            "tasks": names,
            "types": {n: p.type for n, p in prompts.items()},
            "main_metrics": {n: MAIN_METRIC[p.type] for n, p in prompts.items()},
            "model": lc.model,
            "adapters": lc.adapters,
            "train": {"loss": result.training_loss, "steps": trainer.state.global_step, "seconds": round(seconds, 1),
                      "examples": sizes, "trainable_parameters": trainable},
            "validation": tuned["validation"], "test": tuned["test"],
            "seconds": {"scoring": round(scoring, 1), "stage": round(time.perf_counter() - stage_started, 1)},
            "zeroshot": None if zeroshot is None else {
                "shots": lc.shots, "seconds": zeroshot["seconds"], "validation": zeroshot["validation"], "test": zeroshot["test"]},
        }
        if main:
            summary["mlflow_run_id"] = run.info.run_id
            for name in names:
                for split in EVAL_SPLITS:
                    gold = frames[name]["gold"][split]
                    write_predictions(cfg, "llm", name, gold, tuned["outputs"][split][name], split)
                    if zeroshot is not None:
                        write_predictions(cfg, "llm_zeroshot", name, gold, zeroshot["outputs"][split][name], split)
            save_llm(cfg, model, tokenizer, prompts, base_path, summary)
            shutil.rmtree(checkpoints, ignore_errors=True)
    return summary


def save_llm(cfg: Config, model: Any, tokenizer: Any, prompts: dict[str, TaskPrompt], base_path: str, summary: dict[str, Any]) -> None:
    """The adapter(s), tokenizer and manifest (atomically), the metrics JSON, and both in MLflow."""
    import mlflow

    from unitask.llm.predictor import manifest

    folder = cfg.path(cfg.llm.output)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)  # adapter weights only (safetensors); per_task: one subfolder per adapter
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "unitask-model.json", manifest(cfg, prompts, base_path))
    metrics_file = cfg.path(cfg.llm.metrics)
    write_json(metrics_file, summary)
    mlflow.log_metrics(flatten("", {k: summary[k] for k in ("train", "validation", "test")}))
    if summary["zeroshot"]:
        mlflow.log_metrics(flatten("zeroshot", {"test": summary["zeroshot"]["test"], "seconds": summary["zeroshot"]["seconds"]}))
    mlflow.log_artifact(str(metrics_file))
    mlflow.log_artifacts(str(folder), artifact_path="model")
