"""`unitask fusion --task NAME`: a text+image model per multimodal task, plus a text-only and an
image-only baseline trained with the same budget, each with transformers' Trainer.

One plain function, `fusion(cfg, task, resume=False)`, called by the CLI, DVC and Kubeflow. It writes the fused model folder
(safetensors, tokenizer, image processor, `unitask-model.json`), test predictions of all three models
(`reports/predictions/{fusion,fusion_text,fusion_image}/<task>.jsonl`), `reports/fusion/<task>.json`
with their validation and test metrics side by side, and one MLflow run per model (tag unitask.stage=fusion).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from unitask.atomic import atomic_dir, write_json
from unitask.config import SPLITS, Config
from unitask.errors import ConfigError
from unitask.evaluation.metrics import MAIN_METRIC, group_accuracy, task_metrics
from unitask.evaluation.predictions import write_predictions
from unitask.images import Augmenter, ImageCache
from unitask.models import MANIFEST
from unitask.models.backbone import load_tokenizer, resolve_backbone
from unitask.models.fusion import FusionCollator, FusionSpec, ImageEncoder, LateFusion, TextEncoder, compose, save_fusion
from unitask.tasks.sequence import label_outputs, softmax
from unitask.tasks.text import read_split
from unitask.tracking import flatten, log_task_metrics, log_trained_model, preflight
from unitask.training.model import build_encoder
from unitask.training.skeleton import Trained, TrainingRun, encoder_name, run_training
from unitask.training.trainer import (
    MlflowMetrics,
    UnitaskTrainer,
    is_main_process,
    trainer_arguments,
)

# model name (in reports/predictions/<model>/) -> the modalities it sees
MODELS: dict[str, tuple[str, ...]] = {"fusion": ("text", "image"), "fusion_text": ("text",), "fusion_image": ("image",)}


class FusionRows(torch.utils.data.Dataset):
    """Encoded rows: token ids, the decoded image (augmented when an `augmenter` is given: training
    rows only) and the label index."""

    def __init__(self, frame: pd.DataFrame, token_ids: list[list[int]], labels: list[int], images: ImageCache,
                 modalities: tuple[str, ...], augmenter: Augmenter | None = None) -> None:  # fmt: skip
        self.paths = frame["image"].tolist()
        self.token_ids, self.labels, self.images = token_ids, labels, images
        self.modalities, self.augmenter = modalities, augmenter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row: dict[str, Any] = {"labels": self.labels[i]}
        if "text" in self.modalities:
            row["input_ids"] = self.token_ids[i]
        if "image" in self.modalities:
            image = self.images(self.paths[i])
            row["image"] = self.augmenter(image) if self.augmenter else image
        return row


class FusionData:
    """A task's splits, tokenized once, with each image decoded once (shared by the three models)."""

    def __init__(self, cfg: Config, name: str, tokenizer: Any, labels: list[str]) -> None:
        self.frames = {split: read_split(cfg, name, split) for split in SPLITS}
        cap = cfg.fusion.max_eval_rows
        if cap and len(self.frames["validation"]) > cap:
            self.frames["validation"] = self.frames["validation"].sample(n=cap, random_state=cfg.seed)
        self.token_ids = {
            split: tokenizer(frame["text"].astype(str).tolist(), truncation=True, max_length=cfg.model.max_length)["input_ids"]
            for split, frame in self.frames.items()
        }
        index = {label: i for i, label in enumerate(labels)}
        self.targets = {split: [index[v] for v in frame["label"].astype(str)] for split, frame in self.frames.items()}
        self.images = ImageCache(cfg.root)
        augment = cfg.fusion.augment_for(name)
        self.augment = augment if augment.enabled else None
        self.seed = cfg.seed

    def datasets(self, modalities: tuple[str, ...]) -> dict[str, FusionRows]:
        """One dataset per split; only the training split is augmented."""
        return {
            split: FusionRows(
                self.frames[split], self.token_ids[split], self.targets[split], self.images, modalities,
                Augmenter(self.augment, self.seed) if self.augment and split == "train" else None,
            )
            for split in SPLITS
        }  # fmt: skip


def multimodal_labels(cfg: Config, name: str) -> list[str]:
    task = cfg.task(name)
    if task.is_text:
        raise ConfigError(
            f"tasks.{name}: type '{task.type}' is not multimodal_classification",
            hint="fusion trains text+image tasks; fine-tune text tasks with `unitask finetune`",
        )
    return list(task.labels or [])


def build_image_encoder(cfg: Config) -> tuple[torch.nn.Module, Any, str]:
    """(image model, image processor, where it came from): a pretrained one from `fusion.image_encoder`
    (hub id or folder; AutoModel + AutoImageProcessor), or converted from `fusion.image_weights`, else
    one built from `fusion.image_config` and trained from scratch."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, set_seed

    settings = cfg.fusion
    set_seed(cfg.seed)
    if settings.image_encoder:
        source = resolve_backbone(settings.image_encoder, cfg.root)
        try:
            return AutoModel.from_pretrained(source), AutoImageProcessor.from_pretrained(source), source
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"fusion.image_encoder: cannot load an image model and processor from {source}: {exc}",
                hint="give a hub id or a folder saved with save_pretrained (model and image processor), "
                "or unset it to train the ViT of fusion.image_config",
            ) from None
    if settings.image_weights:  # e.g. torchvision's ImageNet MobileNetV2, converted here
        from unitask.models.mobilenet import load_converted, weights_file

        weights = settings.image_weights
        path = weights_file(weights.file, cfg.root)
        model, processor = load_converted(path, weights.image_size)
        return model, processor, f"{weights.format}:{weights.file}"
    try:
        config = AutoConfig.for_model(**settings.image_config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"fusion.image_config: {exc}", hint="give model_type and its config keys") from None
    size = int(getattr(config, "image_size", 224))
    return AutoModel.from_config(config), default_processor(size), f"config:{config.model_type}"


def default_processor(size: int) -> Any:
    """Resize to size x size, scale to [0, 1], normalize to [-1, 1] (PIL backend: no torchvision)."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


@dataclass
class Built:
    """A fresh model with what saving and logging it need."""

    model: LateFusion
    spec: FusionSpec
    processor: Any  # the image processor; None without images
    sources: dict[str, str]  # where each encoder came from


def build_model(cfg: Config, modalities: tuple[str, ...], num_labels: int) -> Built:
    """The LateFusion for `modalities` from config: each encoder (the text encoder as fine-tuning
    uses it, the image encoder of `build_image_encoder`) composed by `compose` with the fusion
    module and heads of `fusion.method`."""
    settings = cfg.fusion
    weights = settings.loss_weights
    spec = FusionSpec(
        modalities=modalities,
        method=settings.method,
        num_labels=num_labels,
        fusion_dim=settings.fusion_dim,
        attention_heads=settings.attention_heads,
        dropout=settings.dropout,
        loss_weights=(weights.fused, *(getattr(weights, m) for m in modalities)),
    )
    encoders: dict[str, torch.nn.Module] = {}
    sources: dict[str, str] = {}
    processor = None
    if "text" in modalities:
        frozen = settings.freeze_text_encoder
        encoders["text"] = TextEncoder(build_encoder(cfg), frozen=frozen, cache_size=settings.text_cache)
        sources["text_encoder"] = encoder_name(cfg)
    if "image" in modalities:
        image_model, processor, sources["image_encoder"] = build_image_encoder(cfg)
        encoders["image"] = ImageEncoder(image_model, frozen=settings.freeze_image_encoder, cache_size=settings.image_cache)
    torch.manual_seed(cfg.seed)
    return Built(compose(spec, encoders), spec, processor, sources)


def fusion(cfg: Config, name: str, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate the fused model (and the unimodal baselines) on task `name`; return the
    summary written to reports/fusion/<name>.json. Each model checkpoints every `fusion.save_steps`
    under `<fusion.checkpoints>/<name>/<model>`; with `resume`, finished models are not trained again
    and the interrupted one continues from its last complete checkpoint. Under torchrun every process
    trains (DDP) and only rank 0 writes."""
    preflight(cfg)  # an unreachable tracking server fails the stage before any work
    labels = multimodal_labels(cfg, name)
    settings = cfg.fusion
    checkpoints = cfg.path(settings.checkpoints) / name
    if not resume and is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)
    tokenizer = load_tokenizer(cfg)
    data = FusionData(cfg, name, tokenizer, labels)
    summary: dict[str, Any] = {
        "task": name,
        "type": "multimodal_classification",
        "main_metric": MAIN_METRIC["multimodal_classification"],
        "method": settings.method,
        "models": {},
    }
    for model_name, modalities in MODELS.items():
        if model_name == "fusion" or settings.baselines:
            folder = checkpoints / model_name
            done = folder / DONE
            if resume and done.is_file():  # trained, scored and written before the interruption
                summary["models"][model_name] = json.loads(done.read_text(encoding="utf-8"))
                continue
            result = train_model(cfg, name, model_name, modalities, labels, data, tokenizer, folder, resume)
            if is_main_process():
                write_json(done, result)
                for checkpoint in folder.glob("checkpoint-*"):  # not needed to resume any more
                    shutil.rmtree(checkpoint)
            summary["models"][model_name] = result
    if is_main_process():
        write_json(cfg.path(cfg.paths.reports) / "fusion" / f"{name}.json", summary)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return summary


DONE = "done.json"  # in a model's checkpoint folder: its summary, once its outputs are written


def training_arguments(cfg: Config, checkpoints: Path) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(checkpoints),
        **{**trainer_arguments(cfg.fusion, cfg.seed), "train_sampling_strategy": "random"},
        eval_strategy="no",
        save_strategy="steps",
        save_steps=cfg.fusion.save_steps,
        save_total_limit=1,
        save_only_model=False,  # optimizer, scheduler and RNG states too, for --resume
        remove_unused_columns=False,
        logging_strategy="steps",
        logging_first_step=True,
        data_seed=cfg.seed,
    )


def train_model(
    cfg: Config,
    name: str,
    model_name: str,
    modalities: tuple[str, ...],
    labels: list[str],
    data: FusionData,
    tokenizer: Any,
    checkpoints: Path,
    resume: bool = False,
) -> dict[str, Any]:
    """One model (fused or unimodal): train (from the last checkpoint in `checkpoints` with `resume`),
    score validation and test, write its predictions (and, for the fused model, the model folder),
    all in one MLflow run."""
    datasets = data.datasets(modalities)
    built = build_model(cfg, modalities, len(labels))
    trainer = UnitaskTrainer(
        model=built.model,
        args=training_arguments(cfg, checkpoints),
        data_collator=FusionCollator(tokenizer, built.processor, modalities),
        train_dataset=datasets["train"],
        callbacks=[MlflowMetrics()],
    )
    params = {
        "task": name,
        "model": model_name,
        "modalities": ",".join(modalities),
        "seed": cfg.seed,
        "max_length": cfg.model.max_length,
        "world_size": trainer.args.world_size,
        "bf16": trainer.args.bf16,
        "train_examples": len(datasets["train"]),
        "parameters": sum(p.numel() for p in built.model.parameters()),
        **built.sources,
        **{f"fusion.{k}": json.dumps(v) if isinstance(v, dict) else v
           for k, v in cfg.fusion.model_dump(exclude={"tasks"}).items()},  # fmt: skip
    }
    run = TrainingRun("fusion", trainer, checkpoints, params, task=name, datasets=[name], keep_checkpoints=True,
                      tags={"mlflow.runName": f"fusion:{name}:{model_name}", "unitask.model": model_name})  # fmt: skip
    finish = functools.partial(_finish, cfg, name, model_name, labels, (datasets, data.frames), built, tokenizer)
    return run_training(cfg, run, resume, finish)


def _scores(trainer: Any, dataset: Any, frame: Any, labels: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One split's metrics and outputs (with accuracy and outputs per group when the task has groups:
    tasks.<name>.group, e.g. easy_vqa's question kinds)."""
    outputs = label_outputs(softmax(np.asarray(trainer.predict(dataset).predictions, dtype=float)), labels)
    gold = frame["label"].astype(str).tolist()
    metrics = task_metrics("multimodal_classification", gold, outputs)
    if "group" in frame:
        groups = frame["group"].astype(str).tolist()
        metrics["by_group"] = group_accuracy(gold, [o["label"] for o in outputs], groups)
        outputs = [{**o, "group": g} for o, g in zip(outputs, groups)]
    return metrics, outputs


def _finish(cfg: Config, name: str, model_name: str, labels: list[str], data: tuple[dict[str, Any], dict[str, Any]],
            built: Built, tokenizer: Any, trained: Trained) -> dict[str, Any]:  # fmt: skip
    """Score validation and test (every process); write predictions, the fused model and MLflow metrics
    (the main one). `data`: the model's datasets and the task's frames, per split."""
    import mlflow

    trainer, modalities = trained.trainer, built.spec.modalities
    datasets, frames = data
    summary: dict[str, Any] = {
        "modalities": list(modalities),
        "parameters": sum(p.numel() for p in built.model.parameters()),
        "train": {"loss": trained.result.training_loss, "steps": trainer.state.global_step,
                  "epochs": trainer.state.epoch, "seconds": trained.seconds, "world_size": trainer.args.world_size},
    }  # fmt: skip
    outputs = {}
    for split in ("validation", "test"):
        summary[split], outputs[split] = _scores(trainer, datasets[split], frames[split], labels)
    if hasattr(built.model.fusion_module, "weights"):
        summary["modality_weights"] = built.model.fusion_module.weights()
    if not trained.main:
        return summary
    for split, decoded in outputs.items():
        write_predictions(cfg, model_name, name, frames[split]["label"].astype(str).tolist(), decoded, split)
    mlflow.log_metrics(flatten("train", summary["train"]))
    results = {split: {name: summary[split]} for split in ("validation", "test")}
    for split in results:  # accuracy per group (question kind), beside the task's metrics
        mlflow.log_metrics(flatten(f"{split}/{name}/by_group", summary[split].get("by_group", {})))
    if model_name == "fusion":
        log_trained_model(f"fusion-{name}", write_model(cfg, name, built, tokenizer, labels), results)
    else:  # the one-modality baselines save no model
        for split, metrics in results.items():
            log_task_metrics(split, name, metrics[name])
    return summary


def write_model(cfg: Config, name: str, built: Built, tokenizer: Any, labels: list[str]) -> Path:
    """The fused model's folder `<fusion.output>/<name>` (atomically) and the output's index; the folder."""
    folder = cfg.path(cfg.fusion.output) / name
    manifest = {
        "tasks": {name: "multimodal_classification"},
        "task": name,
        "labels": labels,
        "max_length": cfg.model.max_length,
        **built.sources,
    }
    with atomic_dir(folder) as tmp:
        save_fusion(Path(tmp), built.model, built.spec, tokenizer, built.processor, manifest)
    write_index(folder.parent)
    return folder


def write_index(output: Path) -> None:
    """`<fusion.output>/unitask-model.json`: every task folder under it, so that the whole output
    folder loads as one predictor (`unitask predict` and the registry point at `fusion.output`)."""
    tasks, folders = {}, {}
    for manifest in sorted(output.glob(f"*/{MANIFEST}")):
        entry = json.loads(manifest.read_text(encoding="utf-8"))
        tasks.update(entry["tasks"])
        folders.update({task: manifest.parent.name for task in entry["tasks"]})
    write_json(output / MANIFEST, {"kind": "fusion", "tasks": tasks, "folders": folders})
