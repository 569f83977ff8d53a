"""`Config`: the whole of `params.yaml`, one field per section."""

from __future__ import annotations

import warnings
from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from unitask.config.base import Strict, project_paths
from unitask.config.evaluate import Evaluate, Register
from unitask.config.fusion import Fusion
from unitask.config.kubeflow import Kubeflow
from unitask.config.llm import Llm
from unitask.config.stages import Finetune, Model, Multitask, Paths, Prepare, Pretrain, Tracking, Validate
from unitask.config.tasks import TASK_NAME, TaskConfig
from unitask.config.tune import Tune
from unitask.errors import ConfigError

# `validate` is the section's name in params.yaml; on an instance the field wins over pydantic's
# deprecated `BaseModel.validate` classmethod, so its shadowing warning is noise.
warnings.filterwarnings("ignore", message='Field name "validate" in "Config" shadows', category=UserWarning)
# likewise `register` (ABCMeta.register, on the class only; instances see the field)
warnings.filterwarnings("ignore", message='Field name "register" in "Config" shadows', category=UserWarning)


class Config(Strict):
    seed: int = 42
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    model: Model = Model()
    prepare: Prepare = Prepare()
    pretrain: Pretrain = Pretrain()
    validate: Validate = Validate()
    finetune: Finetune = Finetune()
    multitask: Multitask = Multitask()
    fusion: Fusion = Fusion()
    llm: Llm = Llm()
    evaluate: Evaluate = Evaluate()
    register: Register = Register()
    kubeflow: Kubeflow = Kubeflow()
    tune: Tune = Tune()
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
    def _fusion_tasks(self) -> Config:
        names = [*self.fusion.tasks, *self.fusion.augment_per_task]
        unknown = [n for n in names if n not in self.tasks]
        if unknown:
            raise ValueError(f"fusion: tasks {unknown} (in tasks or augment_per_task) are not declared under tasks")
        not_multimodal = [n for n in self.fusion.tasks if self.tasks[n].type != "multimodal_classification"]
        if not_multimodal:
            raise ValueError(f"fusion: tasks {not_multimodal} are not multimodal_classification tasks")
        return self

    @model_validator(mode="after")
    def _pretrain_tasks(self) -> Config:
        unknown = [n for n in self.pretrain.tasks or [] if n not in self.tasks]
        if unknown:
            raise ValueError(f"pretrain.tasks: {unknown} are not declared under tasks")
        return self

    @model_validator(mode="after")
    def _multitask_tasks(self) -> Config:
        mt = self.multitask
        unknown = [n for n in [*(mt.tasks or []), *mt.weights, *mt.rates] if n not in self.tasks]
        if unknown:
            raise ValueError(f"multitask: tasks {unknown} (in tasks, weights or rates) are not declared under tasks")
        not_text = [n for n in mt.tasks or [] if self.tasks[n].type == "multimodal_classification"]
        if not_text:
            raise ValueError(f"multitask.tasks: {not_text} are not text tasks (fusion trains those)")
        if mt.tasks is not None and len(set(mt.tasks)) != len(mt.tasks):
            raise ValueError("multitask.tasks: the list has duplicates")
        return self

    @model_validator(mode="after")
    def _llm_tasks(self) -> Config:
        names = [*(self.llm.tasks or []), *self.llm.rates, *self.llm.prompts]
        unknown = sorted({n for n in names if n not in self.tasks})
        if unknown:
            raise ValueError(f"llm: tasks {unknown} (in tasks, rates or prompts) are not declared under tasks")
        not_text = [n for n in self.llm.tasks or [] if self.tasks[n].type == "multimodal_classification"]
        if not_text:
            raise ValueError(f"llm.tasks: {not_text} are text+image tasks; this LLM is text-only (fusion trains those)")
        return self

    def llm_tasks(self) -> list[str]:
        """The tasks `unitask llm` trains: `llm.tasks`, or every declared text task."""
        if self.llm.tasks is not None:
            return list(self.llm.tasks)
        return [n for n, t in self.tasks.items() if t.type != "multimodal_classification"]

    def multitask_tasks(self) -> list[str]:
        """The tasks `unitask multitask` trains: `multitask.tasks`, or every declared text task."""
        if self.multitask.tasks is not None:
            return list(self.multitask.tasks)
        return [n for n, t in self.tasks.items() if t.type != "multimodal_classification"]

    @property
    def root(self) -> Path:
        """The project root: the folder that holds the params file. Relative paths start here."""
        return self._root

    def path(self, relative: str, key: str = "a path") -> Path:
        """`relative` resolved against the project root; ConfigError when it leaves the project and
        every folder in `paths.roots` (a config must not write or read outside what it declares)."""
        resolved = (self._root / relative).resolve()
        allowed = [self._root.resolve(), *((self._root / r).resolve() for r in self.paths.roots)]
        if not any(resolved.is_relative_to(root) for root in allowed):
            raise ConfigError(
                f"{key}: {relative} is outside the project ({self._root.resolve()})",
                hint="use a path inside the project, or declare its folder in paths.roots",
            )
        return resolved

    def check_paths(self) -> None:
        """Resolve every `ProjectPath` in the config, so a path outside the project fails at load."""
        for key, value in project_paths(self).items():
            self.path(value, key)

    def task(self, name: str) -> TaskConfig:
        if name not in self.tasks:
            raise ConfigError(
                f"tasks.{name}: no such task; declared tasks: {', '.join(self.tasks)}",
                hint="pick one of the declared tasks or declare it in params.yaml",
            )
        return self.tasks[name]
