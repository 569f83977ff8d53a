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
    model, processor, _ = build_model(cfg, modalities, 2)
    tokenizer = load_tokenizer(cfg)
    return cfg, model, FusionCollator(tokenizer, processor, modalities), tokenizer


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


def test_zero_auxiliary_weights_leave_the_unimodal_heads_without_gradient(tmp_path):
    cfg, model, collate, tokenizer = built(tmp_path, loss_weights={"fused": 1.0, "text": 0.0, "image": 0.0})
    rows = [{"input_ids": tokenizer(f"is it {c}?")["input_ids"], "image": Image.new("RGB", (16, 16)), "labels": i % 2}
            for i, c in enumerate(["red", "blue", "red"])]  # fmt: skip
    model(**collate(rows)).loss.backward()
    assert all(p.grad is None for p in model.aux_heads.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    cfg, model, collate, tokenizer = built(tmp_path / "aux", loss_weights={"fused": 1.0, "text": 0.5, "image": 0.5})
    assert model.spec.loss_weights == (1.0, 0.5, 0.5)
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
        features = model.encode(batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
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
    text = model.encoders["text"]
    assert not text.model.training and model.head.training
    rows = [{"input_ids": tokenizer("is it red?")["input_ids"], "image": Image.new("RGB", (16, 16)), "labels": 1}]
    model(**collate(rows)).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in text.parameters())
    assert all(p.grad is not None for p in model.projections["text"].parameters())
