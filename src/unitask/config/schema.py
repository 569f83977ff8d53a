"""`Config`: the whole of `params.yaml`, one field per section."""

from __future__ import annotations

import warnings
from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from unitask.config.base import Strict
from unitask.config.kubeflow import Kubeflow
from unitask.config.stages import Finetune, Model, Paths, Prepare, Pretrain, Tracking, Validate
from unitask.config.tasks import TASK_NAME, TaskConfig
from unitask.errors import ConfigError

# `validate` is the section's name in params.yaml; on an instance the field wins over pydantic's
# deprecated `BaseModel.validate` classmethod, so its shadowing warning is noise.
warnings.filterwarnings("ignore", message='Field name "validate" in "Config" shadows', category=UserWarning)


class Config(Strict):
    seed: int = 42
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    model: Model = Model()
    prepare: Prepare = Prepare()
    pretrain: Pretrain = Pretrain()
    validate: Validate = Validate()
    finetune: Finetune = Finetune()
    kubeflow: Kubeflow = Kubeflow()
    tasks: dict[str, TaskConfig] = Field(min_length=1)

    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _task_names(self) -> Config:
        bad = [n for n in self.tasks if not TASK_NAME.match(n)]
        if bad:
            raise ValueError(f"tasks: names {bad} must match {TASK_NAME.pattern}")
        unknown = [n for n in [*self.finetune.tasks, *self.finetune.per_task] if n not in self.tasks]
        if unknown:
            raise ValueError(f"finetune: tasks {unknown} (in tasks or per_task) are not declared under tasks")
        not_text = [n for n in self.finetune.tasks if self.tasks[n].type == "multimodal_classification"]
        if not_text:
            raise ValueError(f"finetune: tasks {not_text} are not text tasks (fusion trains those)")
        return self

    @model_validator(mode="after")
    def _pretrain_tasks(self) -> Config:
        unknown = [n for n in self.pretrain.tasks or [] if n not in self.tasks]
        if unknown:
            raise ValueError(f"pretrain.tasks: {unknown} are not declared under tasks")
        return self

    @property
    def root(self) -> Path:
        """The project root: the folder that holds the params file. Relative paths start here."""
        return self._root

    def path(self, relative: str) -> Path:
        return (self._root / relative).resolve()

    def task(self, name: str) -> TaskConfig:
        if name not in self.tasks:
            raise ConfigError(
                f"tasks.{name}: no such task; declared tasks: {', '.join(self.tasks)}",
                hint="pick one of the declared tasks or declare it in params.yaml",
            )
        return self.tasks[name]
