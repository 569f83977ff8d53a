"""`unitask fusion --task NAME`: a text+image model per multimodal task, plus a text-only and an
image-only baseline trained with the same budget, each with transformers' Trainer.

One plain function, `fusion(cfg, task)`, called by the CLI and DVC. It writes the fused model folder
(safetensors, tokenizer, image processor, `unitask-model.json`), test predictions of all three models
(`reports/predictions/{fusion,fusion_text,fusion_image}/<task>.jsonl`), `reports/fusion/<task>.json`
with their validation and test metrics side by side, and one MLflow run per model (tag unitask.stage=fusion).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from unitask.atomic import atomic_dir, write_json
from unitask.config import SPLITS, Config
from unitask.errors import ConfigError
from unitask.evaluation.metrics import MAIN_METRIC, task_metrics
from unitask.evaluation.predictions import write_predictions
from unitask.images import Augmenter, ImageCache
from unitask.inference import MANIFEST
from unitask.models.backbone import load_tokenizer, resolve_backbone
from unitask.models.fusion import FusionCollator, FusionSpec, ImageEncoder, LateFusion, TextEncoder, save_fusion
from unitask.tasks.sequence import label_outputs, softmax
from unitask.tasks.text import read_split
from unitask.tracking import flatten, log_datasets, log_task_metrics, log_trained_model, stage_run
from unitask.training.model import build_encoder
from unitask.training.trainer import MlflowMetrics, UnitaskTrainer, trainer_arguments

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
    (hub id or folder; AutoModel + AutoImageProcessor), else a ViT from `fusion.image_config`."""
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


def build_model(cfg: Config, modalities: tuple[str, ...], num_labels: int) -> tuple[LateFusion, Any, dict[str, str]]:
    """A fresh LateFusion for `modalities`, its image processor (None without images) and encoder sources."""
    settings = cfg.fusion
    weights = settings.loss_weights
    spec = FusionSpec(
        modalities=modalities,
        method=settings.method,
        num_labels=num_labels,
        fusion_dim=settings.fusion_dim,
        attention_heads=settings.attention_heads,
        dropout=settings.dropout,
        loss_weights=(weights.fused, weights.text, weights.image),
    )
    encoders: dict[str, torch.nn.Module] = {}
    sources: dict[str, str] = {}
    processor = None
    if "text" in modalities:
        encoders["text"] = TextEncoder(build_encoder(cfg), frozen=settings.freeze_text_encoder)
        sources["text_encoder"] = (
            f"config:{cfg.model.backbone_config.get('model_type')}"
            if cfg.model.backbone_config and not cfg.pretrain.enabled
            else (cfg.pretrain.output if cfg.pretrain.enabled else cfg.model.backbone)
        )
    if "image" in modalities:
        image_model, processor, sources["image_encoder"] = build_image_encoder(cfg)
        encoders["image"] = ImageEncoder(image_model)
    torch.manual_seed(cfg.seed)
    return LateFusion(spec, encoders), processor, sources


def fusion(cfg: Config, name: str) -> dict[str, Any]:
    """Train and evaluate the fused model (and the unimodal baselines) on task `name`; return the
    summary written to reports/fusion/<name>.json."""
    labels = multimodal_labels(cfg, name)
    settings = cfg.fusion
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
            summary["models"][model_name] = train_model(cfg, name, model_name, modalities, labels, data, tokenizer)
    write_json(cfg.path(cfg.paths.reports) / "fusion" / f"{name}.json", summary)
    return summary


def train_model(
    cfg: Config,
    name: str,
    model_name: str,
    modalities: tuple[str, ...],
    labels: list[str],
    data: FusionData,
    tokenizer: Any,
) -> dict[str, Any]:
    """One model (fused or unimodal): train, score validation and test, write its predictions (and,
    for the fused model, the model folder), all in one MLflow run."""
    import mlflow
    from transformers import TrainingArguments

    with tempfile.TemporaryDirectory(prefix="unitask-fusion-") as scratch:
        settings = cfg.fusion
        datasets, frames = data.datasets(modalities), data.frames
        model, processor, sources = build_model(cfg, modalities, len(labels))
        args = TrainingArguments(
            output_dir=str(scratch),  # nothing is saved during training (save_strategy "no")
            **{**trainer_arguments(settings, cfg.seed), "train_sampling_strategy": "random"},
            eval_strategy="no",
            save_strategy="no",
            remove_unused_columns=False,
            logging_strategy="steps",
            logging_first_step=True,
            data_seed=cfg.seed,
        )
        trainer = UnitaskTrainer(
            model=model,
            args=args,
            data_collator=FusionCollator(tokenizer, processor, modalities),
            train_dataset=datasets["train"],
            callbacks=[MlflowMetrics()],
        )
        params = {
            "task": name,
            "model": model_name,
            "modalities": ",".join(modalities),
            "seed": cfg.seed,
            "max_length": cfg.model.max_length,
            "bf16": args.bf16,
            "train_examples": len(datasets["train"]),
            "parameters": sum(p.numel() for p in model.parameters()),
            **sources,
            **{f"fusion.{k}": json.dumps(v) if isinstance(v, dict) else v
               for k, v in settings.model_dump(exclude={"tasks"}).items()},  # fmt: skip
        }
        with stage_run(cfg, "fusion", name, params=params):
            mlflow.set_tags({"mlflow.runName": f"fusion:{name}:{model_name}", "unitask.model": model_name})
            log_datasets(cfg, [name])
            started = time.perf_counter()
            result = trainer.train()
            seconds = time.perf_counter() - started
            trainer.remove_callback(MlflowMetrics)
            summary: dict[str, Any] = {
                "modalities": list(modalities),
                "parameters": params["parameters"],
                "train": {"loss": result.training_loss, "steps": trainer.state.global_step,
                          "epochs": trainer.state.epoch, "seconds": round(seconds, 1)},
            }  # fmt: skip
            outputs: dict[str, list[dict[str, Any]]] = {}
            for split in ("validation", "test"):
                logits = trainer.predict(datasets[split]).predictions
                outputs[split] = label_outputs(softmax(np.asarray(logits, dtype=float)), labels)
                gold = frames[split]["label"].astype(str).tolist()
                summary[split] = task_metrics("multimodal_classification", gold, outputs[split])
            if hasattr(model.fusion, "weights"):
                summary["modality_weights"] = model.fusion.weights()
            write_predictions(cfg, model_name, name, frames["test"]["label"].astype(str).tolist(), outputs["test"])
            mlflow.log_metrics(flatten("train", summary["train"]))
            results = {split: {name: summary[split]} for split in ("validation", "test")}
            if model_name != "fusion":  # the one-modality baselines save no model
                for split, metrics in results.items():
                    log_task_metrics(split, name, metrics[name])
            else:
                folder = cfg.path(settings.output) / name
                manifest = {
                    "tasks": {name: "multimodal_classification"},
                    "task": name,
                    "labels": labels,
                    "max_length": cfg.model.max_length,
                    **sources,
                }
                with atomic_dir(folder) as tmp:
                    save_fusion(Path(tmp), model, tokenizer, processor, manifest)
                write_index(folder.parent)
                log_trained_model(f"fusion-{name}", folder, results)
        return summary


def write_index(output: Path) -> None:
    """`<fusion.output>/unitask-model.json`: every task folder under it, so that the whole output
    folder loads as one predictor (`unitask predict` and the registry point at `fusion.output`)."""
    tasks, folders = {}, {}
    for manifest in sorted(output.glob(f"*/{MANIFEST}")):
        entry = json.loads(manifest.read_text(encoding="utf-8"))
        tasks.update(entry["tasks"])
        folders.update({task: manifest.parent.name for task in entry["tasks"]})
    write_json(output / MANIFEST, {"kind": "fusion", "tasks": tasks, "folders": folders})
