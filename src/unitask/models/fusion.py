"""Late fusion of text and image in the shape of TorchMultimodal's `LateFusion(encoders, fusion_module, head)`:
the parts are built elsewhere and passed in. Encoders give token features of one modality each, a
fusion module turns the features of every modality into one vector, a head classifies it.

Fusion modules know the modality names only as arguments (the order of a concat, which modality is
the query of cross-attention), so a text-only or image-only baseline is the same model with one
encoder. `compose(spec, encoders)` is the one builder from a `FusionSpec` (saved in the manifest).
Optional auxiliary heads classify each modality alone; the loss is
`w_fused * L_fused + sum over modalities m of w_m * L_m`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

Features = tuple[torch.Tensor, torch.Tensor]  # (tokens [batch, length, width], mask [batch, length] bool)


class FeatureCache:
    """The outputs of a frozen encoder by input key, least recently used dropped beyond `size`."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def lookup(self, keys: list[Any], compute: Any) -> dict[Any, torch.Tensor]:
        """{key: output} for `keys`; `compute(missing keys)` gives the missing ones (in that order)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._items]
        found = {k: self._items[k] for k in dict.fromkeys(keys) if k in self._items}
        for k in found:
            self._items.move_to_end(k)
        if missing:
            for key, value in zip(missing, compute(missing)):
                found[key] = self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return found


class TextEncoder(nn.Module):
    """A Hugging Face text encoder (`AutoModel`) -> its last hidden states and attention mask.
    `frozen`: fixed weights, always in eval mode (no dropout) and run without autograd; then
    `cache_size` > 0 keeps the hidden states of that many distinct texts (easy-VQA has 107 questions),
    so each is encoded once: the output is the same, padding positions aside, which every fusion
    module masks."""

    inputs = ("input_ids", "attention_mask")

    def __init__(self, model: nn.Module, frozen: bool = False, cache_size: int = 0) -> None:
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size
        self.frozen = frozen
        self.cache = FeatureCache(cache_size) if frozen and cache_size else None
        if frozen:
            model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Features:
        if self.cache is not None:
            return self._cached(input_ids, attention_mask), attention_mask.bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, attention_mask.bool()

    @torch.no_grad()
    def _encode_alone(self, keys: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
        """Each text alone, without padding: its states do not depend on the batch it came in."""
        ids = [torch.tensor([key], device=device) for key in keys]
        return [self.model(input_ids=i, attention_mask=torch.ones_like(i)).last_hidden_state[0] for i in ids]

    def _cached(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        masks = attention_mask.bool()
        keys = [tuple(ids[mask].tolist()) for ids, mask in zip(input_ids, masks)]
        states = self.cache.lookup(keys, lambda missing: self._encode_alone(missing, input_ids.device))
        hidden = next(iter(states.values())).new_zeros((*input_ids.shape, self.width))
        for row, key in enumerate(keys):
            hidden[row, masks[row]] = states[key]
        return hidden


class ImageEncoder(nn.Module):
    """A Hugging Face image model (`AutoModel`: ViT, or a CNN such as ResNet or MobileNetV2 whose
    feature map [batch, channels, h, w] becomes h*w patches). `frozen`: fixed weights, always in eval
    mode (BatchNorm uses its running statistics), no autograd; then `cache_size` > 0 keeps the features
    of that many distinct images (by their pixels), so each is encoded once."""

    inputs = ("pixel_values",)

    def __init__(self, model: nn.Module, frozen: bool = False, cache_size: int = 0) -> None:
        super().__init__()
        self.model = model
        config = model.config
        # a CNN's last stage (ResNet, ConvNeXt: hidden_sizes), else a transformer's width (ViT: hidden_size)
        width = (getattr(config, "hidden_sizes", None) or [None])[-1] or getattr(config, "hidden_size", None)
        self.width = int(width or self._probe_width())
        self.frozen = frozen
        self.cache = FeatureCache(cache_size) if frozen and cache_size else None
        if frozen:
            model.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def _probe_width(self) -> int:
        """The channels of one forward pass (models whose config names no width, e.g. MobileNetV2)."""
        size = int(getattr(self.model.config, "image_size", 64))
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            tokens = self._tokens(torch.zeros(1, 3, size, size))
        self.model.train(was_training)
        return tokens.shape[-1]

    def _tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values).last_hidden_state
        if hidden.dim() == 4:  # [batch, channels, h, w] feature map -> [batch, h*w, channels]
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden

    def forward(self, pixel_values: torch.Tensor) -> Features:
        if self.cache is not None:
            keys = [hashlib.blake2b(row.cpu().numpy().tobytes(), digest_size=16).digest() for row in pixel_values]
            rows = dict(zip(keys, pixel_values))
            with torch.no_grad():
                found = self.cache.lookup(keys, lambda missing: self._tokens(torch.stack([rows[k] for k in missing])).unbind(0))
            hidden = torch.stack([found[k] for k in keys])
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
                hidden = self._tokens(pixel_values)
        return hidden, torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)


ENCODERS: dict[str, type[nn.Module]] = {"text": TextEncoder, "image": ImageEncoder}  # modality -> wrapper


class Projected(nn.Module):
    """An encoder whose tokens are projected to `width` (Linear + LayerNorm): every modality meets the
    fusion module at the same width."""

    def __init__(self, encoder: nn.Module, width: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.inputs = encoder.inputs
        self.projection = nn.Sequential(nn.Linear(encoder.width, width), nn.LayerNorm(width))
        self.width = width

    def forward(self, *inputs: torch.Tensor) -> Features:
        tokens, mask = self.encoder(*inputs)
        return self.projection(tokens), mask


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is true (padding contributes nothing)."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Concat(nn.Module):
    """[pooled m_1; ...; pooled m_n] in the order of `modalities` (one modality: its pooled features,
    the unimodal baselines)."""

    def __init__(self, modalities: tuple[str, ...], width: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.out_width = len(self.modalities) * width

    def forward(self, features: Mapping[str, Features]) -> torch.Tensor:
        return torch.cat([masked_mean(*features[m]) for m in self.modalities], dim=-1)


class Gated(nn.Module):
    """sum_m g_m * m: per example and feature, a softmax gate over the modalities computed from all of
    them (with two, g * a + (1 - g) * b)."""

    def __init__(self, modalities: tuple[str, ...], width: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.gate = nn.Linear(len(self.modalities) * width, len(self.modalities) * width)
        self.out_width = width

    def forward(self, features: Mapping[str, Features]) -> torch.Tensor:
        pooled = torch.stack([masked_mean(*features[m]) for m in self.modalities], dim=1)  # [batch, n, width]
        gate = torch.softmax(self.gate(pooled.flatten(1)).view_as(pooled), dim=1)
        return (gate * pooled).sum(1)


class Weighted(nn.Module):
    """sum_m w_m * m with learned modality weights (a softmax over one scalar per modality)."""

    def __init__(self, modalities: tuple[str, ...], width: int) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.logits = nn.Parameter(torch.zeros(len(self.modalities)))
        self.out_width = width

    def weights(self) -> dict[str, float]:
        return dict(zip(self.modalities, torch.softmax(self.logits, 0).tolist()))

    def forward(self, features: Mapping[str, Features]) -> torch.Tensor:
        pooled = torch.stack([masked_mean(*features[m]) for m in self.modalities], dim=1)
        return (torch.softmax(self.logits, 0)[:, None] * pooled).sum(1)


class CrossAttention(nn.Module):
    """The `query` modality's tokens attend over the `context` modality's (a transformer block), then
    the attended query tokens are averaged over their real (unpadded) positions."""

    def __init__(self, query: str, context: str, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.query, self.context = query, context
        self.attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.feed_forward = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.dropout = nn.Dropout(dropout)
        self.out_width = width

    def forward(self, features: Mapping[str, Features]) -> torch.Tensor:
        (query, query_mask), (context, context_mask) = features[self.query], features[self.context]
        attended, _ = self.attention(query, context, context, key_padding_mask=~context_mask, need_weights=False)
        x = self.norm1(query + self.dropout(attended))
        x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return masked_mean(x, query_mask)


METHODS = ("concat", "gated", "weighted", "cross_attention")


def classifier(width: int, hidden: int, labels: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, labels))


@dataclass
class FusionOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class LateFusion(nn.Module):
    """encoders -> fusion module -> head, with optional auxiliary heads (one per modality, on its
    pooled features). `loss_weights`: "fused" and one weight per auxiliary head's modality; a missing
    or zero weight adds no term (that head gets no gradient).

    Each encoder names the batch keys it reads (`inputs`, e.g. ("pixel_values",)) and returns
    (tokens, mask); the fusion module maps {modality: (tokens, mask)} to one vector."""

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        fusion_module: nn.Module,
        head: nn.Module,
        aux_heads: Mapping[str, nn.Module] | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.fusion_module = fusion_module
        self.head = head
        self.aux_heads = nn.ModuleDict(dict(aux_heads or {}))
        if set(self.aux_heads) - set(self.encoders):
            raise ValueError(f"auxiliary heads {sorted(self.aux_heads)} name modalities without an encoder {sorted(self.encoders)}")
        self.loss_weights = {"fused": 1.0, **(loss_weights or {})}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def encode(self, **batch: torch.Tensor) -> dict[str, Features]:
        return {m: encoder(*(batch[k] for k in encoder.inputs)) for m, encoder in self.encoders.items()}

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> FusionOutput:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        features = self.encode(**{k: v for k, v in batch.items() if v is not None})
        logits = self.head(self.fusion_module(features))
        loss = None
        if labels is not None:
            loss = self.loss_weights["fused"] * F.cross_entropy(logits, labels)
            for modality, aux_head in self.aux_heads.items():
                weight = self.loss_weights.get(modality, 0.0)
                if weight > 0:
                    loss = loss + weight * F.cross_entropy(aux_head(masked_mean(*features[modality])), labels)
        return FusionOutput(loss=loss, logits=logits)


@dataclass(frozen=True)
class FusionSpec:
    """Everything besides the encoders' own configs that shapes a fusion model (saved in its manifest)."""

    modalities: tuple[str, ...]  # e.g. ("text", "image"), ("text",) or ("image",); the first is cross-attention's query
    method: str  # one of METHODS (with one modality: concat, i.e. its pooled features)
    num_labels: int
    fusion_dim: int = 128
    attention_heads: int = 4
    dropout: float = 0.1
    loss_weights: tuple[float, ...] = (1.0, 0.0, 0.0)  # fused, then one per modality (auxiliary heads)

    @property
    def fused(self) -> bool:
        return len(self.modalities) > 1


def fusion_module(spec: FusionSpec) -> nn.Module:
    """The fusion module `spec.method` over `spec.modalities`, at width `fusion_dim`."""
    d, modalities = spec.fusion_dim, spec.modalities
    if not spec.fused or spec.method == "concat":
        return Concat(modalities, d)
    if spec.method == "gated":
        return Gated(modalities, d)
    if spec.method == "weighted":
        return Weighted(modalities, d)
    if spec.method == "cross_attention":
        if len(modalities) != 2:
            raise ValueError(f"cross_attention fuses two modalities (query, context), not {modalities}")
        return CrossAttention(modalities[0], modalities[1], d, spec.attention_heads, spec.dropout)
    raise ValueError(f"unknown fusion method '{spec.method}' (one of {', '.join(METHODS)})")


def compose(spec: FusionSpec, encoders: Mapping[str, nn.Module]) -> LateFusion:
    """The LateFusion of `spec` around raw encoders ({modality: TextEncoder/ImageEncoder...}): each is
    projected to `fusion_dim`; a fused model gets auxiliary heads for the modalities with a weight."""
    if tuple(encoders) != spec.modalities:
        raise ValueError(f"encoders {list(encoders)} do not match the modalities {list(spec.modalities)}")
    d = spec.fusion_dim
    fused_weight, *aux_weights = spec.loss_weights
    weights = dict(zip(spec.modalities, aux_weights)) if spec.fused else {}
    module = fusion_module(spec)
    return LateFusion(
        encoders={m: Projected(encoder, d) for m, encoder in encoders.items()},
        fusion_module=module,
        head=classifier(module.out_width, d, spec.num_labels, spec.dropout),
        aux_heads={m: classifier(d, d, spec.num_labels, spec.dropout) for m, w in weights.items() if w > 0},
        loss_weights={"fused": fused_weight if spec.fused else 1.0, **weights},
    )


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


def save_fusion(folder: Path, model: LateFusion, spec: FusionSpec, tokenizer: Any, processor: Any, manifest: dict[str, Any]) -> None:
    """Weights (safetensors only), each encoder's config, the tokenizer, the image processor and the
    `unitask-model.json` manifest (with the spec) into `folder`."""
    from safetensors.torch import save_model

    from unitask.atomic import write_json
    from unitask.models import MANIFEST

    save_model(model, str(folder / WEIGHTS))
    for modality, encoder in model.encoders.items():
        encoder.encoder.model.config.save_pretrained(folder / f"{modality}_encoder")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    write_json(folder / MANIFEST, {**manifest, "kind": "fusion", "spec": asdict(spec)})


def read_spec(manifest: dict[str, Any]) -> FusionSpec:
    return FusionSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in manifest["spec"].items()})


def load_fusion(folder: Path) -> tuple[LateFusion, Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, image processor, manifest) of a folder written by `save_fusion`."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    from unitask.models import read_manifest

    manifest = read_manifest(folder)
    spec = read_spec(manifest)
    encoders = {
        m: ENCODERS[m](AutoModel.from_config(AutoConfig.from_pretrained(folder / f"{m}_encoder")))
        for m in spec.modalities
    }
    model = compose(spec, encoders)
    load_model(model, str(folder / WEIGHTS))
    tokenizer = AutoTokenizer.from_pretrained(folder) if "text" in spec.modalities else None
    processor = AutoImageProcessor.from_pretrained(folder) if "image" in spec.modalities else None
    return model.eval(), tokenizer, processor, manifest
