"""Fusion model parts: masks, batching of images of different sizes, auxiliary losses, training-only
augmentation, and the pretrained image encoder path (a tiny ViT saved to a folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from test_fusion import load, vqa_project

METHODS = ["concat", "gated", "weighted", "cross_attention"]


def built(tmp_path, method="concat", modalities=("text", "image"), **fusion):
    from unitask.models.backbone import load_tokenizer
    from unitask.models.fusion import FusionCollator
    from unitask.training.fusion import build_model

    cfg = load(vqa_project(tmp_path, method=method, **fusion))
    built = build_model(cfg, modalities, 2)
    tokenizer = load_tokenizer(cfg)
    return cfg, built.model, FusionCollator(tokenizer, built.processor, modalities), tokenizer


@pytest.mark.parametrize("method", METHODS)
def test_padding_tokens_do_not_change_the_output(tmp_path, method):
    cfg, model, collate, tokenizer = built(tmp_path, method)
    model.eval()
    image = Image.new("RGB", (20, 20), (200, 10, 10))
    short = {"input_ids": tokenizer("is it red?")["input_ids"], "image": image}
    long = {"input_ids": tokenizer("is the shape in this picture red or is it not red at all?")["input_ids"], "image": image}
    with torch.no_grad():
        alone = model(**collate([short])).logits[0]
        padded_batch = collate([short, long])
        assert (padded_batch["attention_mask"][0] == 0).any()  # the short row really is padded
        together = model(**padded_batch).logits[0]
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-4)


def test_images_of_different_sizes_batch_through_the_processor(tmp_path):
    cfg, model, collate, tokenizer = built(tmp_path, "cross_attention")
    rows = [
        {"input_ids": tokenizer("is it red?")["input_ids"], "image": Image.new("RGB", size), "labels": 1}
        for size in [(10, 10), (64, 23), (17, 90)]
    ]
    batch = collate(rows)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    out = model(**batch)
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)


def test_auxiliary_heads_exist_and_learn_only_with_a_weight(tmp_path):
    cfg, model, collate, tokenizer = built(tmp_path, loss_weights={"fused": 1.0, "text": 0.0, "image": 0.5})
    rows = [{"input_ids": tokenizer(f"is it {c}?")["input_ids"], "image": Image.new("RGB", (16, 16)), "labels": i % 2}
            for i, c in enumerate(["red", "blue", "red"])]  # fmt: skip
    assert set(model.aux_heads) == {"image"}
    model(**collate(rows)).loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())

    cfg, model, collate, tokenizer = built(tmp_path / "aux", loss_weights={"fused": 1.0, "text": 0.5, "image": 0.5})
    assert model.loss_weights == {"fused": 1.0, "text": 0.5, "image": 0.5}
    model(**collate(rows)).loss.backward()
    for head in model.aux_heads.values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_auxiliary_losses_add_to_the_fused_loss(tmp_path):
    from torch.nn import functional as F

    from unitask.models.fusion import masked_mean

    cfg, model, collate, tokenizer = built(tmp_path, loss_weights={"fused": 0.5, "text": 0.3, "image": 0.2})
    model.eval()
    rows = [{"input_ids": tokenizer("is it red?")["input_ids"], "image": Image.new("RGB", (16, 16)), "labels": 1}]
    batch = collate(rows)
    with torch.no_grad():
        out = model(**batch)
        features = model.encode(**batch)
        labels = batch["labels"]
        expected = 0.5 * F.cross_entropy(out.logits, labels)
        for m, w in (("text", 0.3), ("image", 0.2)):
            expected += w * F.cross_entropy(model.aux_heads[m](masked_mean(*features[m])), labels)
    torch.testing.assert_close(out.loss, expected)


def test_augmentation_changes_training_images_only(tmp_path):
    from unitask.models.backbone import load_tokenizer
    from unitask.training.fusion import FusionData

    augment = {"hflip": 1.0, "crop": 1.0, "color_jitter": 1.0}
    cfg = load(vqa_project(tmp_path, augment=augment))
    data = FusionData(cfg, "vqa", load_tokenizer(cfg), ["blue", "left", "red", "right"])
    datasets = data.datasets(("text", "image"))

    def original(split, i):
        with Image.open(tmp_path / data.frames[split]["image"].iloc[i]) as image:
            return np.asarray(image.convert("RGB"))

    changed = [not np.array_equal(np.asarray(datasets["train"][i]["image"]), original("train", i)) for i in range(20)]
    assert all(changed)
    for split in ("validation", "test"):
        for i in range(len(datasets[split])):
            assert np.array_equal(np.asarray(datasets[split][i]["image"]), original(split, i)), (split, i)
    # off by default, and a per-task setting replaces the section's
    assert load(vqa_project(tmp_path / "plain")).fusion.augment_for("vqa").enabled is False
    cfg = load(vqa_project(tmp_path / "per_task", augment=augment, augment_per_task={"vqa": {"hflip": 0.5}}))
    assert cfg.fusion.augment_for("vqa").model_dump()["crop"] == 0.0


def test_horizontal_flip_mirrors_the_image():
    from unitask.config import ImageAugment
    from unitask.images import Augmenter

    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[:, 0] = 255
    flipped = np.asarray(Augmenter(ImageAugment(hflip=1.0), seed=0)(Image.fromarray(pixels)))
    assert np.array_equal(flipped, pixels[:, ::-1])


def test_a_pretrained_image_encoder_loads_from_a_folder(tmp_path):
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from unitask.errors import ConfigError
    from unitask.training.fusion import build_image_encoder

    folder = tmp_path / "tiny-vit"
    saved = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32))  # fmt: skip
    saved.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    cfg = load(vqa_project(tmp_path / "p", image_encoder=str(folder)))
    model, processor, source = build_image_encoder(cfg)
    assert source == str(folder)
    for (name, a), b in zip(saved.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert processor(Image.new("RGB", (50, 20)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)

    cfg = load(vqa_project(tmp_path / "q", image_encoder=str(tmp_path / "p")))  # a folder without a model
    with pytest.raises(ConfigError, match="fusion.image_encoder: cannot load an image model"):
        build_image_encoder(cfg)


def test_a_frozen_text_encoder_gets_no_gradient_and_no_dropout(tmp_path):
    cfg, model, collate, tokenizer = built(tmp_path, freeze_text_encoder=True)
    model.train()
    text = model.encoders["text"].encoder
    assert not text.model.training and model.head.training
    rows = [{"input_ids": tokenizer("is it red?")["input_ids"], "image": Image.new("RGB", (16, 16)), "labels": 1}]
    model(**collate(rows)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in text.parameters())
    assert all(p.grad is not None for p in model.encoders["text"].projection.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_fusion_modules_take_their_modality_names_as_arguments(method):
    """The same module weights fuse {"text", "image"} and {"words", "pixels"} features alike."""
    from unitask.models.fusion import FusionSpec, fusion_module

    torch.manual_seed(0)
    features = {"a": (torch.randn(3, 5, 8), torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] + [0] * 4]).bool()),
                "b": (torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool))}  # fmt: skip
    spec = FusionSpec(modalities=("text", "image"), method=method, num_labels=2, fusion_dim=8, attention_heads=2)
    named = fusion_module(spec).eval()
    renamed = fusion_module(FusionSpec(**{**spec.__dict__, "modalities": ("words", "pixels")})).eval()
    renamed.load_state_dict(named.state_dict())
    with torch.no_grad():
        expected = named({"text": features["a"], "image": features["b"]})
        torch.testing.assert_close(renamed({"words": features["a"], "pixels": features["b"]}), expected)
        if method in ("concat", "gated"):  # the names, not the dict order, say which features are which
            swapped = named({"text": features["b"], "image": features["a"]})
            assert not torch.allclose(swapped, expected)


def test_late_fusion_is_composed_from_the_parts_passed_in():
    from torch import nn

    from unitask.models.fusion import Concat, LateFusion

    class Pixels(nn.Module):  # any module naming its batch inputs and returning (tokens, mask)
        inputs = ("pixel_values",)

        def forward(self, pixel_values):
            tokens = pixel_values.flatten(2).transpose(1, 2)  # [batch, h*w, 3]
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool)

    head = nn.Linear(6, 2)
    model = LateFusion({"left": Pixels(), "right": Pixels()}, Concat(("left", "right"), 3), head)
    assert model.modalities == ("left", "right") and model.head is head
    pixels = torch.rand(2, 3, 4, 4)
    out = model(pixel_values=pixels, labels=torch.tensor([0, 1]))
    mean = pixels.mean((2, 3))
    torch.testing.assert_close(out.logits, head(torch.cat([mean, mean], -1)))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="auxiliary heads"):
        LateFusion({"left": Pixels()}, Concat(("left",), 3), head, aux_heads={"right": nn.Linear(3, 2)})


def test_a_cached_frozen_text_encoder_encodes_each_text_once_and_answers_as_uncached(tmp_path):
    from unitask.models.fusion import TextEncoder
    from unitask.training.model import build_encoder

    cfg, _, _, tokenizer = built(tmp_path)
    encoder = build_encoder(cfg)
    plain, cached = TextEncoder(encoder, frozen=True), TextEncoder(encoder, frozen=True, cache_size=2)
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(1))
    texts = ["is it red?", "is there a blue circle in the image?", "is it red?"]
    batch = tokenizer.pad([{"input_ids": tokenizer(t)["input_ids"]} for t in texts], return_tensors="pt")
    mask = batch["attention_mask"].bool()
    expected, _ = plain(batch["input_ids"], batch["attention_mask"])
    calls.clear()
    for _ in range(2):
        hidden, out_mask = cached(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(hidden[mask], expected[mask], atol=1e-5, rtol=1e-4)
        assert torch.equal(out_mask, mask) and (hidden[~mask] == 0).all()
    assert len(calls) == 2  # two distinct texts, encoded once each
    other = tokenizer(["what shape is it?"], return_tensors="pt")
    cached(other["input_ids"], other["attention_mask"])
    assert len(cached.cache) == 2 and len(calls) == 3  # the least recently used text made room
    assert TextEncoder(encoder, frozen=False, cache_size=8).cache is None  # a trained encoder is never cached


def test_a_cached_frozen_image_encoder_encodes_each_image_once_in_eval_mode():
    from transformers import AutoConfig, AutoModel

    from unitask.models.fusion import ImageEncoder

    # hidden_size as a ViT config has it: a merged-over config (tests/smoke.yaml over params.yaml) keeps it
    config = AutoConfig.for_model(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                  layer_type="basic", hidden_size=64)  # fmt: skip
    model = AutoModel.from_config(config)
    plain, cached = ImageEncoder(model, frozen=True), ImageEncoder(model, frozen=True, cache_size=8)
    cached.train()
    assert not model.training  # BatchNorm keeps its running statistics
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(args))
    images = torch.rand(3, 3, 32, 32)
    batch = torch.stack([images[0], images[1], images[0], images[2]])
    expected, _ = plain(batch)
    calls.clear()
    got, mask = cached(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    again, _ = cached(batch[[3, 1]])
    torch.testing.assert_close(again, expected[[3, 1]], atol=1e-5, rtol=1e-4)
    assert len(calls) == 1 and len(cached.cache) == 3  # three distinct images, one forward pass
    assert got.shape == (4, 16, 16) and mask.all() and cached.width == 16  # a 4 x 4 map of 16 channels and not got.requires_grad
    assert all(not p.requires_grad for p in cached.parameters())
