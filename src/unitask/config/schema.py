"""`Config`: the whole of `params.yaml`, one field per section."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from unitask.config.base import Strict, project_paths
from unitask.config.evaluate import Evaluate, Register
from unitask.config.fusion import Fusion
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
    # read by the Kubeflow driver only, which validates it (unitask.kubeflow.settings): kept as given here,
    # so that its schema is no code dep of any stage
    kubeflow: dict[str, Any] = Field(default_factory=dict)
    tune: Tune = Tune()
    tasks: dict[str, TaskConfig] = Field(min_length=1)

    _root: Path = PrivateAttr(default=Path("."))

    @model_validator(mode="after")
    def _task_names(self) -> Config:
        bad = [n for n in self.tasks if not TASK_NAME.match(n)]
        if bad:
            raise ValueError(f"tasks: names {bad} must match {TASK_NAME.pattern}")
        return self

    @model_validator(mode="after")
    def _stage_task_lists(self) -> Config:
        """Every stage's task list names declared tasks of a type the stage trains: all problems at once."""
        problems = []
        for key, listed, eligible, kind in (
            ("finetune.tasks", self.finetune.tasks, _is_text, "text"),
            ("multitask.tasks", self.multitask.tasks, _is_text, "text"),
            ("fusion.tasks", self.fusion.tasks, _is_multimodal, "multimodal_classification"),
            ("pretrain.tasks", self.pretrain.tasks, lambda t: True, "any"),
            ("fusion.augment_per_task", list(self.fusion.augment_per_task), _is_multimodal, "multimodal_classification"),
        ):
            names = list(listed or [])
            unknown = [n for n in names if n not in self.tasks]
            wrong = [n for n in names if n in self.tasks and not eligible(self.tasks[n])]
            if unknown:
                problems.append(f"{key}: {unknown} are not declared under tasks")
            if wrong:
                problems.append(f"{key}: {wrong} are not {kind} tasks")
            if len(set(names)) != len(names):
                problems.append(f"{key}: the list has duplicates")
        for name, task in self.tasks.items():
            try:
                self.finetune.for_task(task.finetune)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                problems.append(f"tasks.{name}.finetune: {_first_error(exc)}")
        if self.multitask.sampler == "round_robin":
            rated = [n for n, t in self.tasks.items() if t.multitask.rate != 1.0]
            if rated:
                problems.append(f"tasks {rated}: multitask.rate: round_robin takes the tasks in turn, so rates cannot change it")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def stage_tasks(self, listed: list[str] | None, eligible: Callable[[TaskConfig], bool]) -> list[str]:
        """The one rule every stage follows for which tasks it runs: its list when set (empty: none),
        else every declared task of a type it trains, in declaration order."""
        if listed is not None:
            return list(listed)
        return [n for n, t in self.tasks.items() if eligible(t)]

    def finetune_tasks(self) -> list[str]:
        """The tasks `unitask finetune` trains, one model each."""
        return self.stage_tasks(self.finetune.tasks, _is_text)

    @model_validator(mode="after")
    def _llm_tasks(self) -> Config:
        names = [*(self.llm.tasks or []), *self.llm.rates, *self.llm.prompts]
        unknown = sorted({n for n in names if n not in self.tasks})
        if unknown:
            raise ValueError(f"llm: tasks {unknown} (in tasks, rates or prompts) are not declared under tasks")
        not_text = [n for n in self.llm.tasks or [] if not self.tasks[n].is_text]
        if not_text:
            raise ValueError(f"llm.tasks: {not_text} are text+image tasks; this LLM is text-only (fusion trains those)")
        return self

    @model_validator(mode="after")
    def _register_routes(self) -> Config:
        """Each route names a declared task and a model that trains it (all problems at once)."""
        trains = self.servable_tasks()
        problems = []
        for task, model in self.register.routes.items():
            if task not in self.tasks:
                problems.append(f"'{task}' is not declared under tasks (declared: {', '.join(self.tasks)})")
            elif task not in trains[model]:
                kind = self.tasks[task].type
                if (model == "fusion") == self.tasks[task].is_text:
                    why = f"{model} trains {'text+image' if model == 'fusion' else 'text'} tasks, not {kind}"
                else:
                    why = "set it in " + {"multitask": "multitask.tasks", "llm": "llm.tasks or tasks.<task>.llm.enabled",
                                          "fusion": "fusion.tasks, with register.include_fusion"}[model]  # fmt: skip
                problems.append(f"'{task}' -> {model}, but {model} does not train '{task}' ({why}; or route '{task}' to "
                                f"one of: {', '.join(m for m, t in trains.items() if task in t) or 'none'})")
        if problems:
            raise ValueError("register.routes: " + "; ".join(problems))
        return self

    def servable_tasks(self) -> dict[str, list[str]]:
        """{served model: the tasks it trains, which register may route to it}: the multi-task model, the
        fusion model (with register.include_fusion) and the LLM, in routing priority."""
        return {"multitask": self.multitask_tasks(), "fusion": self.fusion_tasks() if self.register.include_fusion else [],
                "llm": self.llm_tasks()}  # fmt: skip

    def llm_tasks(self) -> list[str]:
        """The tasks `unitask llm` trains, all with one model: `llm.tasks`, else every text task whose
        `tasks.<task>.llm.enabled` is true."""
        return self.stage_tasks(self.llm.tasks, lambda t: t.is_text and t.llm.enabled)

    def multitask_tasks(self) -> list[str]:
        """The tasks `unitask multitask` trains together."""
        return self.stage_tasks(self.multitask.tasks, _is_text)

    def fusion_tasks(self) -> list[str]:
        """The text+image tasks `unitask fusion` trains."""
        return self.stage_tasks(self.fusion.tasks, _is_multimodal)

    def finetune_for(self, name: str) -> Finetune:
        """The finetune section with task `name`'s own changes (`tasks.<name>.finetune`) applied."""
        return self.finetune.for_task(self.task(name).finetune)

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


def _is_text(task: TaskConfig) -> bool:
    return task.is_text


def _is_multimodal(task: TaskConfig) -> bool:
    return not task.is_text


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    err = errors()[0]
    where = ".".join(map(str, err["loc"]))
    return f"{where}: {err['msg']}" if where else err["msg"]
