"""The steps of one pipeline run and what connects them, made from the stage declarations and the config.

A step is a declared stage, or one task of a per-task stage (DVC's `foreach`: `finetune@sms_spam`),
with the paths it reads and writes filled in. A step reads another's output when one of its deps is
that output, lies inside it or holds it. `dvc.yaml` (`unitask.dvcfile`) and the Kubeflow pipeline
(`unitask.kubeflow.pipeline`) are both made from these, so the two drivers run one graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from unitask.config import Config
from unitask.stages import STAGES, ModelPath, Stage

ITEM = "${item}"  # DVC's foreach placeholder, which `task` is in dvc.yaml


@dataclass(frozen=True)
class Step:
    stage: Stage
    task: str | None  # set for a per-task stage
    deps: tuple[str, ...]  # paths under the project root
    outs: tuple[str, ...]  # every path it writes: outs, plain outs, reports and metrics
    models: tuple[str, ...]  # the outs that are saved models
    metrics: tuple[str, ...]

    @property
    def data(self) -> tuple[str, ...]:
        """Everything it writes but its saved models."""
        return tuple(o for o in self.outs if o not in self.models)

    @property
    def name(self) -> str:
        """DVC's name of the step: `stage` or `stage@task`."""
        return f"{self.stage.name}@{self.task}" if self.task else self.stage.name


def fill_in(templates: tuple[str, ...], cfg: Config, task: str | None = ITEM) -> tuple[str, ...]:
    """Path templates with the config and the task filled in (`${item}` by default: DVC's foreach)."""
    return tuple(t.format(c=cfg, task=task) for t in templates)


def written(stage: Stage, cfg: Config, task: str | None = ITEM) -> tuple[str, ...]:
    return fill_in(stage.outs + stage.plain_outs + stage.reports + stage.metrics, cfg, task)


def kept(cfg: Config) -> tuple[list[Stage], set[str]]:
    """The stages this config runs, and the outputs of those it leaves out: a stage with no task to run
    (an empty task list, or no task of its types); deps on those outputs are dropped too."""
    stages, dropped = [], set()
    for stage in STAGES.values():
        tasks = stage.per_task or stage.runs
        if tasks is not None and not tasks(cfg):
            dropped.update(written(stage, cfg))
        else:
            stages.append(stage)
    return stages, dropped


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def overlaps(a: str, b: str) -> bool:
    return inside(a, b) or inside(b, a)


def steps(cfg: Config) -> list[Step]:
    """Every step of a run, in the declarations' order (which is an order the graph can run in)."""
    stages, dropped = kept(cfg)
    found = []
    for stage in stages:
        for task in stage.per_task(cfg) if stage.per_task else [None]:
            deps = [d for d in fill_in(stage.dep_templates(cfg), cfg, task) if not any(inside(d, o) for o in dropped)]
            models = fill_in(tuple(o for o in stage.outs if isinstance(o, ModelPath)), cfg, task)
            found.append(Step(stage, task, tuple(deps), written(stage, cfg, task), models,
                              fill_in(stage.reports + stage.metrics, cfg, task)))
    return found


def reads(step: Step, earlier: list[Step]) -> list[tuple[Step, str]]:
    """(producer, kind) for each output of an earlier step that `step` reads: kind "model" for its
    saved models, "data" for everything else it wrote."""
    found = []
    for producer in earlier:
        for kind, paths in (("model", producer.models), ("data", producer.data)):
            if any(overlaps(d, p) for d in step.deps for p in paths):
                found.append((producer, kind))
    return found


def sources(step: Step, earlier: list[Step]) -> list[str]:
    """The deps of `step` that no earlier step writes (the raw data, which DVC versions in data.dvc)."""
    return [d for d in step.deps if not any(overlaps(d, o) for p in earlier for o in p.outs)]


def find(cfg: Config, name: str) -> tuple[Step, list[Step]]:
    """The step called `name` and the steps before it."""
    every = steps(cfg)
    for i, step in enumerate(every):
        if step.name == name:
            return step, every[:i]
    raise KeyError(name)
