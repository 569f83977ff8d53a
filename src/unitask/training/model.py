"""Build a task head on the encoder: from `encoder_path(cfg)` (the pretrained encoder when pretraining
is on, which also holds a model first built from `model.backbone_config`) or, for tiny models without
pretraining, straight from that config.

The checks here turn the usual loading failures into errors that say what to fix: a folder without
weights or with pickled (*.bin) weights only, a head trained for a different label set, a sequence
length beyond the model's positions. Weights load only from safetensors (`use_safetensors=True`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import ConfigError
from unitask.models.backbone import encoder_path
from unitask.tasks.text import TextTask

SAFE_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
PICKLED_WEIGHTS = ("*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# dropout settings of transformers configs (BERT/RoBERTa/ELECTRA, DistilBERT, GPT-2, T5, DeBERTa):
# `finetune.dropout` sets every one the model's config has
DROPOUT_FIELDS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout", "attention_dropout",
    "seq_classif_dropout", "qa_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout",
    "dropout_rate", "pooler_dropout",
)  # fmt: skip


def head_kwargs(task: TextTask) -> dict[str, Any]:
    """Config overrides that size the head and name its outputs."""
    labels = task.labels()
    kwargs: dict[str, Any] = {"num_labels": task.num_labels()}
    if labels is not None:
        kwargs["id2label"] = dict(enumerate(labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
    if task.auto_model == "AutoModelForSequenceClassification" and labels is None:
        kwargs["problem_type"] = "regression"
    return kwargs


def check_max_length(model_config: Any, max_length: int, source: str) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"model.max_length: {max_length} is beyond the {limit} positions of the model ({source})",
            hint=f"set model.max_length to at most {limit}",
        )


def check_head(model_config: Any, task: TextTask, source: str) -> None:
    """Refuse a checkpoint whose existing head of this kind has another number (or set) of labels."""
    suffix = task.auto_model.removeprefix("AutoModel")
    if not any(a.endswith(suffix) for a in getattr(model_config, "architectures", None) or []):
        return
    ours = task.labels()
    theirs = [str(v) for _, v in sorted(model_config.id2label.items())]
    default = theirs == [f"LABEL_{i}" for i in range(len(theirs))]
    if len(theirs) != task.num_labels() or (ours is not None and not default and theirs != ours):
        raise ConfigError(
            f"tasks.{task.name}: the {suffix} head in {source} has {len(theirs)} labels {theirs}, "
            f"the task has {task.num_labels()}" + (f" {ours}" if ours else ""),
            hint="start from an encoder without this head (the backbone or the pretrained encoder), "
            "or fix tasks.<name>.labels",
        )


def check_weights(path: str) -> None:
    """A model folder must hold safetensors weights. Pickled ones (PyTorch *.bin...) are refused, not
    read: unpickling a file can run code in it. Hub ids are not folders; `use_safetensors=True`
    makes transformers refuse their pickled weights."""
    folder = Path(path)
    if not folder.is_dir() or any(next(folder.glob(p), None) for p in SAFE_WEIGHTS):
        return
    pickled = sorted(f for p in PICKLED_WEIGHTS for f in folder.glob(p))
    if pickled:
        raise ConfigError(
            f"{pickled[0]}: weights stored as a pickle; unitask loads weights only from safetensors files, "
            "since unpickling can run code",
            hint="get the model's model.safetensors instead (hub models have one), or, if you trust the file, "
            "convert it once: `transformers.AutoModel.from_pretrained(folder).save_pretrained(folder)` "
            "writes model.safetensors",
        )
    raise ConfigError(
        f"{folder}: a model folder without weights (no *.safetensors)",
        hint="point model.backbone (or pretrain.output) at a folder saved with save_pretrained, "
        "or set model.backbone_config to train from scratch",
    )


def dropout_kwargs(model_config: Any, dropout: float | None) -> dict[str, float]:
    """Config overrides that set every dropout probability of this model to `dropout` (None: keep)."""
    if dropout is None:
        return {}
    fields = {name: dropout for name in DROPOUT_FIELDS if hasattr(model_config, name)}
    if not fields:
        raise ConfigError(
            f"finetune.dropout: the {model_config.model_type} config has none of the dropout settings {list(DROPOUT_FIELDS)}",
            hint="leave finetune.dropout unset (null) for this model",
        )
    return fields


def build_model(cfg: Config, task: TextTask, dropout: float | None = None) -> Any:
    """The encoder plus a fresh head for `task`, seeded with `cfg.seed`; `dropout` replaces the model's."""
    import transformers

    return _build(cfg, getattr(transformers, task.auto_model), head_kwargs(task), task, dropout)


def build_encoder(cfg: Config, dropout: float | None = None) -> Any:
    """The bare encoder (`AutoModel`, no head) that multi-task and fusion models put heads on."""
    from transformers import AutoModel

    return _build(cfg, AutoModel, {}, None, dropout)


def _build(cfg: Config, auto: Any, kwargs: dict[str, Any], task: TextTask | None, dropout: float | None = None) -> Any:
    """`auto` from `encoder_path(cfg)`, or from `model.backbone_config` (random init) when pretraining
    is off; seeded with `cfg.seed`."""
    import transformers
    from transformers import AutoConfig

    if cfg.model.backbone_config and not cfg.pretrain.enabled:
        try:
            model_config = AutoConfig.for_model(**cfg.model.backbone_config, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"model.backbone_config: {exc}", hint="give model_type and its config keys") from None
        check_max_length(model_config, cfg.model.max_length, "model.backbone_config")
        for name, value in dropout_kwargs(model_config, dropout).items():
            setattr(model_config, name, value)
        transformers.set_seed(cfg.seed)
        return auto.from_config(model_config, attn_implementation=cfg.model.attn_implementation)
    path = encoder_path(cfg)
    check_weights(path)
    try:
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    except OSError as exc:
        raise ConfigError(
            f"model.backbone: cannot load a model config from {path}: {exc}", hint="check that config.json is there and valid"
        ) from None
    check_max_length(model_config, cfg.model.max_length, path)
    if task is not None:
        check_head(model_config, task, path)
    kwargs = {**kwargs, **dropout_kwargs(model_config, dropout)}
    transformers.set_seed(cfg.seed)
    try:
        return auto.from_pretrained(
            path, trust_remote_code=cfg.model.trust_remote_code, use_safetensors=True,
            attn_implementation=cfg.model.attn_implementation, **kwargs,
        )
    except OSError as exc:
        raise ConfigError(
            f"model.backbone: cannot load weights from {path}: {exc}", hint="save the model again with save_pretrained"
        ) from None
