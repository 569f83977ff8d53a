"""`fusion`: text + image models (a text encoder, an image encoder, a fusion module, a head)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from unitask.config.base import ProjectPath, Strict
from unitask.config.stages import TrainSettings

FusionMethod = Literal["concat", "gated", "weighted", "cross_attention"]

DEFAULT_VIT = {
    "model_type": "vit",
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}


class ImageAugment(Strict):
    """Random image changes for training rows only (PIL); every probability 0 means off."""

    hflip: float = Field(default=0.0, ge=0, le=1, description="probability of a horizontal flip")
    crop: float = Field(default=0.0, ge=0, le=1, description="probability of a random resized crop")
    crop_scale: float = Field(
        default=0.8, gt=0, le=1, description="a crop keeps at least this share of each side, resized back"
    )
    color_jitter: float = Field(default=0.0, ge=0, le=1, description="probability of brightness/contrast/saturation jitter")
    jitter_strength: float = Field(default=0.2, ge=0, lt=1, description="jitter factors are drawn from 1 +/- this")

    @property
    def enabled(self) -> bool:
        return self.hflip > 0 or self.crop > 0 or self.color_jitter > 0


class LossWeights(Strict):
    """L = fused * L_fused + text * L_text + image * L_image (auxiliary unimodal heads)."""

    fused: float = Field(default=1.0, gt=0, description="alpha: the fused head's cross-entropy")
    text: float = Field(default=0.0, ge=0, description="beta: an auxiliary head on the text features alone")
    image: float = Field(default=0.0, ge=0, description="gamma: an auxiliary head on the image features alone")


class Fusion(TrainSettings):
    """`unitask fusion --task NAME`: a late-fusion model per text+image task, and a text-only and an
    image-only baseline trained with the same budget."""

    tasks: list[str] | None = Field(
        default=None, description="text+image tasks to train; unset: every declared multimodal_classification task"
    )
    method: FusionMethod = Field(
        default="gated",
        description="concat | gated | weighted (learned modality weights) | cross_attention (text tokens over image patches)",
    )
    image_encoder: str | None = Field(
        default=None,
        description="hub id or folder of a pretrained image model (AutoModel + AutoImageProcessor), "
        "e.g. google/vit-base-patch16-224; unset: a ViT built from `image_config`, trained from scratch",
    )
    image_config: dict[str, Any] = Field(
        default_factory=lambda: dict(DEFAULT_VIT),
        description="transformers config of the from-scratch image encoder (model_type vit by default)",
    )
    freeze_text_encoder: bool = Field(
        default=False,
        description="keep the text encoder's weights fixed (forward only: ~3x cheaper steps); the "
        "projection, fusion module and heads still train",
    )
    fusion_dim: int = Field(default=128, gt=0, description="both modalities are projected to this width")
    attention_heads: int = Field(default=4, gt=0, description="cross_attention: heads (must divide fusion_dim)")
    dropout: float = Field(default=0.1, ge=0, lt=1, description="dropout in the fusion module and head")
    loss_weights: LossWeights = Field(default_factory=LossWeights, description="alpha, beta, gamma")
    augment: ImageAugment = Field(default_factory=ImageAugment, description="image augmentation, training rows only")
    augment_per_task: dict[str, ImageAugment] = Field(
        default_factory=dict, description="task -> augmentation that replaces `augment` for it"
    )
    baselines: bool = Field(default=True, description="also train the text-only and image-only models")
    max_eval_rows: int | None = Field(
        default=None, gt=0, description="cap the validation rows scored (seeded sample); test is always whole"
    )
    output: ProjectPath = Field(default="models/fusion", description="model folder per task: <output>/<task>")

    @model_validator(mode="after")
    def _heads_divide(self) -> Fusion:
        if self.method == "cross_attention" and self.fusion_dim % self.attention_heads:
            raise ValueError(f"attention_heads ({self.attention_heads}) must divide fusion_dim ({self.fusion_dim})")
        return self

    def augment_for(self, task: str) -> ImageAugment:
        return self.augment_per_task.get(task, self.augment)
