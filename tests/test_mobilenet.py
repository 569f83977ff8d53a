"""torchvision's MobileNetV2 state dict -> transformers' MobileNetV2Model: the converted model computes
what torchvision's architecture computes with those weights (a reference forward written here with
torch.nn.functional), and a wrong state dict is refused."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

# torchvision's inverted-residual settings after the first block: expansion t, channels c, repeats n, stride s
SETTINGS = [(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def reference_features(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's MobileNetV2 `features` (eval mode) on x, from the state dict alone."""

    def conv_bn(x, conv, bn, stride=1, depthwise=False, act=True):
        w = state[f"{conv}.weight"]
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=x.shape[1] if depthwise else 1)
        x = F.batch_norm(x, state[f"{bn}.running_mean"], state[f"{bn}.running_var"], state[f"{bn}.weight"],
                         state[f"{bn}.bias"], training=False, eps=1e-5)  # fmt: skip
        return F.relu6(x) if act else x

    x = conv_bn(x, "features.0.0", "features.0.1", stride=2)
    x = conv_bn(x, "features.1.conv.0.0", "features.1.conv.0.1", depthwise=True)
    x = conv_bn(x, "features.1.conv.1", "features.1.conv.2", act=False)
    i = 2
    for _, _, repeats, first_stride in SETTINGS:
        for j in range(repeats):
            stride, b = (first_stride if j == 0 else 1), f"features.{i}.conv"
            h = conv_bn(x, f"{b}.0.0", f"{b}.0.1")
            h = conv_bn(h, f"{b}.1.0", f"{b}.1.1", stride=stride, depthwise=True)
            h = conv_bn(h, f"{b}.2", f"{b}.3", act=False)
            x = x + h if stride == 1 and x.shape[1] == h.shape[1] else h
            i += 1
    return conv_bn(x, "features.18.0", "features.18.1")


@pytest.fixture(scope="module")
def state():
    from unitask.models.mobilenet import packaged_weights

    return torch.load(packaged_weights(), map_location="cpu", weights_only=True)


def test_the_converted_model_computes_torchvisions_features(state):
    from unitask.models.mobilenet import convert

    model = convert(state, image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(pixel_values=x).last_hidden_state
        expected = reference_features(state, x)
    assert ours.shape == (2, 1280, 2, 2)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_a_wrong_state_dict_is_refused(state, tmp_path):
    from unitask.errors import ConfigError
    from unitask.models.mobilenet import convert, convert_file

    broken = {k: v for k, v in state.items() if k != "features.5.conv.1.0.weight"}
    with pytest.raises(ValueError, match=r"missing \['features.5.conv.1.0.weight'\]"):
        convert(broken)
    resized = {**state, "features.18.0.weight": state["features.18.0.weight"][:, :16]}
    with pytest.raises(ValueError, match="shapes differ for"):
        convert(resized)
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="is not torchvision's MobileNetV2 state dict"):
        convert_file(tmp_path / "other.pth", tmp_path / "out", 64)
    assert not (tmp_path / "out").exists()


def test_the_converted_folder_is_a_fusion_image_encoder(state, tmp_path):
    from PIL import Image

    from unitask.models.fusion import ImageEncoder
    from unitask.models.mobilenet import convert_file, packaged_weights

    folder = convert_file(packaged_weights(), tmp_path / "mobilenet", 64)
    from transformers import AutoImageProcessor, AutoModel

    encoder = ImageEncoder(AutoModel.from_pretrained(folder)).eval()
    assert encoder.width == 1280  # probed: MobileNetV2's config names no width
    pixels = AutoImageProcessor.from_pretrained(folder)(Image.new("RGB", (80, 50), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64)
    red = (1 - 0.485) / 0.229  # ImageNet normalization, as torchvision trained it
    assert pixels[0, 0].mean().item() == pytest.approx(red, rel=1e-3)
    tokens, mask = encoder(pixels)
    assert tokens.shape == (1, 4, 1280) and mask.all()


def test_fusion_image_weights_convert_the_packaged_file_at_the_start_of_the_stage(state, tmp_path):
    from test_fusion import load, vqa_project

    from unitask.errors import ConfigError
    from unitask.models.mobilenet import PACKAGE, PACKAGE_FILE
    from unitask.training.fusion import build_image_encoder

    weights = {"file": f"package:{PACKAGE}/{PACKAGE_FILE}", "image_size": 32}
    cfg = load(vqa_project(tmp_path / "p", image_weights=weights))
    model, processor, source = build_image_encoder(cfg)
    assert source == f"torchvision_mobilenet_v2:package:{PACKAGE}/{PACKAGE_FILE}"
    torch.testing.assert_close(model.state_dict()["conv_1x1.convolution.weight"], state["features.18.0.weight"])
    assert processor.size["height"] == 32

    cfg = load(vqa_project(tmp_path / "q", image_weights={"file": "nope.pth"}))
    with pytest.raises(ConfigError, match="fusion.image_weights.file: no file"):
        build_image_encoder(cfg)
    with pytest.raises(ConfigError, match="image_encoder .* or image_weights .*, not both"):
        load(vqa_project(tmp_path / "r", image_weights=weights, image_encoder="some/model"))
