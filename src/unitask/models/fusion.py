"""Late fusion of text and image, in the shape of TorchMultimodal's `LateFusion(encoders, fusion, head)`:
modality encoders give token features, a fusion module turns them into one vector, a head classifies it.

Every part is a separate module chosen by name (`FUSIONS`), so a text-only or image-only baseline is
the same model with one encoder and `Single` as its fusion. Optional auxiliary heads classify each
modality alone; the loss is `fused * L_fused + text * L_text + image * L_image`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

Features = tuple[torch.Tensor, torch.Tensor]  # (tokens [batch, length, width], mask [batch, length] bool)


class TextEncoder(nn.Module):
    """A Hugging Face text encoder (`AutoModel`) -> its last hidden states and attention mask.
    `frozen`: fixed weights, always in eval mode (no dropout) and run without autograd."""

    def __init__(self, model: nn.Module, frozen: bool = False) -> None:
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.frozen = frozen
        if frozen:
            model.requires_grad_(False)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, attention_mask.bool()


class ImageEncoder(nn.Module):
    """A Hugging Face image model (`AutoModel`: ViT, or a CNN whose feature map becomes patches)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.width = getattr(config, "hidden_size", None) or config.hidden_sizes[-1]

    def forward(self, pixel_values: torch.Tensor) -> Features:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        if hidden.dim() == 4:  # [batch, channels, h, w] feature map -> [batch, h*w, channels]
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is true (padding contributes nothing)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Single(nn.Module):
    """No fusion: the pooled features of one modality (the unimodal baselines)."""

    def __init__(self, modality: str, width: int) -> None:
        super().__init__()
        self.modality = modality
        self.out_width = width

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        return masked_mean(*features[self.modality])


class Concat(nn.Module):
    """[pooled text; pooled image]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_width = 2 * width

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        return torch.cat([masked_mean(*features["text"]), masked_mean(*features["image"])], dim=-1)


class Gated(nn.Module):
    """g * text + (1 - g) * image, with a gate g per example and feature computed from both."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * width, width)
        self.out_width = width

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        text, image = masked_mean(*features["text"]), masked_mean(*features["image"])
        gate = torch.sigmoid(self.gate(torch.cat([text, image], dim=-1)))
        return gate * text + (1 - gate) * image


class Weighted(nn.Module):
    """w_text * text + w_image * image with learned modality weights (a softmax over two scalars)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(2))
        self.out_width = width

    def weights(self) -> dict[str, float]:
        return dict(zip(("text", "image"), torch.softmax(self.logits, 0).tolist()))

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        w = torch.softmax(self.logits, 0)
        return w[0] * masked_mean(*features["text"]) + w[1] * masked_mean(*features["image"])


class CrossAttention(nn.Module):
    """Text tokens attend over image patches (a transformer block with text queries), then the
    attended text tokens are averaged over the real (unpadded) positions."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.dropout = nn.Dropout(dropout)
        self.out_width = width

    def forward(self, features: dict[str, Features]) -> torch.Tensor:
        (text, text_mask), (image, image_mask) = features["text"], features["image"]
        attended, _ = self.attention(text, image, image, key_padding_mask=~image_mask, need_weights=False)
        x = self.norm1(text + self.dropout(attended))
        x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return masked_mean(x, text_mask)


FUSIONS = {"concat": Concat, "gated": Gated, "weighted": Weighted, "cross_attention": CrossAttention}


def classifier(width: int, hidden: int, labels: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, labels))


@dataclass(frozen=True)
class FusionSpec:
    """Everything besides the encoders that shapes a fusion model (saved in its manifest)."""

    modalities: tuple[str, ...]  # ("text", "image"), ("text",) or ("image",)
    method: str  # a FUSIONS key (ignored with one modality)
    num_labels: int
    fusion_dim: int = 128
    attention_heads: int = 4
    dropout: float = 0.1
    loss_weights: tuple[float, float, float] = (1.0, 0.0, 0.0)  # fused, text, image

    @property
    def fused(self) -> bool:
        return len(self.modalities) == 2


@dataclass
class FusionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class LateFusion(nn.Module):
    """encoders -> per-modality projection to `fusion_dim` -> fusion module -> head (+ auxiliary heads)."""

    def __init__(self, spec: FusionSpec, encoders: dict[str, nn.Module]) -> None:
        super().__init__()
        if set(encoders) != set(spec.modalities):
            raise ValueError(f"encoders {sorted(encoders)} do not match the modalities {spec.modalities}")
        d = spec.fusion_dim
        self.spec = spec
        self.encoders = nn.ModuleDict(encoders)
        self.projections = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(enc.width, d), nn.LayerNorm(d)) for m, enc in encoders.items()}
        )
        if spec.fused:
            fusion_class = FUSIONS[spec.method]
            args = (d, spec.attention_heads, spec.dropout) if fusion_class is CrossAttention else (d,)
            self.fusion: nn.Module = fusion_class(*args)
            self.aux_heads = nn.ModuleDict({m: classifier(d, d, spec.num_labels, spec.dropout) for m in spec.modalities})
        else:
            self.fusion = Single(spec.modalities[0], d)
        self.head = classifier(self.fusion.out_width, d, spec.num_labels, spec.dropout)

    def encode(self, input_ids: Any = None, attention_mask: Any = None, pixel_values: Any = None) -> dict[str, Features]:
        features = {}
        if "text" in self.encoders:
            features["text"] = self.encoders["text"](input_ids, attention_mask)
        if "image" in self.encoders:
            features["image"] = self.encoders["image"](pixel_values)
        return {m: (self.projections[m](tokens), mask) for m, (tokens, mask) in features.items()}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> FusionOutput:
        features = self.encode(input_ids, attention_mask, pixel_values)
        logits = self.head(self.fusion(features))
        loss = None
        if labels is not None:
            fused_weight, *aux_weights = self.spec.loss_weights
            loss = (fused_weight if self.spec.fused else 1.0) * F.cross_entropy(logits, labels)
            if self.spec.fused:
                for modality, weight in zip(("text", "image"), aux_weights):
                    if weight > 0:  # a zero weight adds no term, so that head gets no gradient
                        aux_logits = self.aux_heads[modality](masked_mean(*features[modality]))
                        loss = loss + weight * F.cross_entropy(aux_logits, labels)
        return FusionOutput(loss=loss, logits=logits)


class FusionCollator:
    """A batch of {"input_ids"?, "image"? (PIL), "labels"?} -> model inputs: text padded by the
    tokenizer, images resized and normalized by the image processor (so sizes may differ)."""

    def __init__(self, tokenizer: Any, processor: Any, modalities: tuple[str, ...]) -> None:
        self.tokenizer, self.processor, self.modalities = tokenizer, processor, modalities

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch: dict[str, torch.Tensor] = {}
        if "text" in self.modalities:
            padded = self.tokenizer.pad([{"input_ids": r["input_ids"]} for r in rows], return_tensors="pt")
            batch.update(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        if "image" in self.modalities:
            batch["pixel_values"] = self.processor([r["image"] for r in rows], return_tensors="pt")["pixel_values"]
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=torch.long)
        return batch


WEIGHTS = "model.safetensors"


def save_fusion(folder: Path, model: LateFusion, tokenizer: Any, processor: Any, manifest: dict[str, Any]) -> None:
    """Weights (safetensors only), each encoder's config, the tokenizer, the image processor and the
    `unitask-model.json` manifest (with the spec) into `folder`."""
    from safetensors.torch import save_model

    from unitask.atomic import write_json
    from unitask.inference import MANIFEST

    save_model(model, str(folder / WEIGHTS))
    for modality, encoder in model.encoders.items():
        encoder.model.config.save_pretrained(folder / f"{modality}_encoder")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    write_json(folder / MANIFEST, {**manifest, "kind": "fusion", "spec": asdict(model.spec)})


def load_fusion(folder: Path) -> tuple[LateFusion, Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, image processor, manifest) of a folder written by `save_fusion`."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    from unitask.inference import read_manifest

    manifest = read_manifest(folder)
    spec = FusionSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["spec"].items()})
    wrappers = {"text": TextEncoder, "image": ImageEncoder}
    encoders = {
        m: wrappers[m](AutoModel.from_config(AutoConfig.from_pretrained(folder / f"{m}_encoder")))
        for m in spec.modalities
    }
    model = LateFusion(spec, encoders)
    load_model(model, str(folder / WEIGHTS))
    tokenizer = AutoTokenizer.from_pretrained(folder) if "text" in spec.modalities else None
    processor = AutoImageProcessor.from_pretrained(folder) if "image" in spec.modalities else None
    return model.eval(), tokenizer, processor, manifest
