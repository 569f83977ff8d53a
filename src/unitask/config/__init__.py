"""The typed schema of `params.yaml`, its loader, `key=value` overrides and readable errors.

Every stage reads its own section of one `Config`. A config that does not fit the schema is refused
with a `ConfigError` (exit code 2) that names each bad key and what is allowed there.
"""

from unitask.config.augment import Augment
from unitask.config.base import Strict
from unitask.config.evaluate import Evaluate, Gate, Register
from unitask.config.fusion import Fusion, FusionMethod, ImageAugment, LossWeights
from unitask.config.llm import Fsdp, Llm, Lora, Prompt
from unitask.config.loader import apply_override, load_config, read_yaml
from unitask.config.schema import Config
from unitask.config.stages import (
    CheckName,
    Corpus,
    Finetune,
    Model,
    Multitask,
    Paths,
    Prepare,
    Pretrain,
    Severity,
    Tracking,
    TrainSettings,
    Validate,
)
from unitask.config.tasks import (
    SPLITS,
    HubSource,
    LocalSource,
    PackageSource,
    ReadSpec,
    Role,
    S3Source,
    Source,
    SplitName,
    TaskConfig,
)
from unitask.config.tune import Katib, SearchRange, Tune

__all__ = [
    "SPLITS", "CheckName", "Config", "Corpus", "Finetune", "Fusion", "FusionMethod", "ImageAugment", "LossWeights",
    "HubSource", "LocalSource",
    "Model", "Multitask", "PackageSource", "Paths", "Prepare", "Pretrain", "ReadSpec", "Role", "S3Source",
    "Severity", "Source", "SplitName", "Strict", "TaskConfig", "Tracking", "TrainSettings",
    "Validate", "apply_override", "load_config", "read_yaml",
    "Evaluate", "Gate", "Register",
    "Augment", "Fsdp", "Llm", "Lora", "Prompt", "Katib", "SearchRange", "Tune",
]  # fmt: skip
