"""`unitask tune --stage finetune --task NAME`: search the fine-tuning settings of one task.

Optuna's TPE sampler proposes values from `tune.space`; each trial fine-tunes with them (and with
`tune.budget`, e.g. a cap on train rows) in a temporary folder and reports the validation metric at
every evaluation to a median pruner, which stops trials that trail the others. Trials are scored on
validation only (never test) and are child MLflow runs of one `tune` run. The best values go to
`<tune.output>/<task>.yaml` (`tasks: {<task>: {finetune: ...}}`, mergeable into params.yaml) and
the same search as a Katib Experiment to `<tune.output>/<task>-katib.yaml`. The fine-tune stage's
own outputs (model folder, metrics JSON, predictions) are never written.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from unitask.atomic import atomic_file
from unitask.config import Config
from unitask.config.tune import SearchRange, integer_key
from unitask.errors import ConfigError
from unitask.tasks.text import text_task
from unitask.tracking import stage_run
from unitask.tuning.katib import task_overrides, write_experiment

STAGES = ("finetune",)


def with_task_settings(cfg: Config, name: str, values: dict[str, Any]) -> Config:
    """`cfg` with `values` merged into `tasks.<name>.finetune` (validated)."""
    task = cfg.task(name)
    changes = {**task.finetune, **values}
    cfg.finetune.for_task(changes)
    tasks = {**cfg.tasks, name: task.model_copy(update={"finetune": changes})}
    return cfg.model_copy(update={"tasks": tasks})


def suggest(trial: Any, key: str, space: SearchRange) -> Any:
    """Optuna's proposal for finetune key `key` (an int for integer keys such as batch_size)."""
    cast = int if integer_key(key) else float
    if space.choices is not None:
        return trial.suggest_categorical(key, [cast(c) for c in space.choices])
    if cast is int:
        return trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(key, space.low, space.high, log=space.log)


def pruning_callback(trial: Any, metric: str) -> Any:
    """A TrainerCallback that reports `eval_<metric>` to the trial at each evaluation (step = the
    evaluation's number, comparable across batch sizes) and stops training when the pruner says so."""
    from transformers import TrainerCallback

    class OptunaPruning(TrainerCallback):
        def __init__(self) -> None:
            self.evaluations = 0
            self.pruned = False

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any) -> None:
            self.evaluations += 1
            trial.report(float((metrics or {})[f"eval_{metric}"]), self.evaluations)
            if trial.should_prune():
                self.pruned = True
                control.should_training_stop = True

    return OptunaPruning()


@contextmanager
def child_run(name: str, tags: dict[str, str], params: dict[str, Any]) -> Iterator[Any]:
    """A nested MLflow run: FINISHED, KILLED (pruned) or FAILED."""
    import mlflow
    import optuna

    run = mlflow.start_run(run_name=name, nested=True, tags=tags)
    mlflow.log_params(params)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except optuna.TrialPruned:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)


def tune(cfg: Config, stage: str, name: str, report: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the search for task `name`; write the best values and the Katib manifest; return a summary."""
    import optuna

    if stage not in STAGES:
        raise ConfigError(f"tune --stage {stage}: not a tunable stage", hint=f"use one of: {', '.join(STAGES)}")
    settings = cfg.tune
    metric = text_task(cfg, name).main_metric
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=f"{stage}:{name}",
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=settings.pruner_startup_trials, n_warmup_steps=settings.pruner_warmup
        ),
    )
    params = {"stage": stage, "task": name, "metric": metric, "trials": settings.trials, "sampler": "tpe",
              "sampler_seed": settings.seed, "pruner": "median", "pruner_startup_trials": settings.pruner_startup_trials,
              "pruner_warmup": settings.pruner_warmup,
              **{f"budget.{k}": v for k, v in settings.budget.items()},
              **{f"space.{k}": v.model_dump_json(exclude_none=True) for k, v in settings.space.items()}}  # fmt: skip
    with stage_run(cfg, "tune", name, params=params):
        started = time.perf_counter()
        study.optimize(objective(cfg, name, metric), n_trials=settings.trials, timeout=settings.timeout,
                       callbacks=[progress(settings.trials, metric, report)])  # fmt: skip
        return _finish(cfg, study, stage, name, metric, time.perf_counter() - started)


def objective(cfg: Config, name: str, metric: str) -> Callable[[Any], float]:
    """Optuna's objective: one trial fine-tunes `name` with its values in a child MLflow run; its best
    validation `metric`, or TrialPruned."""
    import mlflow
    import optuna

    from unitask.training.finetune import build_trainer
    from unitask.training.trainer import MlflowMetrics

    settings = cfg.tune

    def run(trial: optuna.Trial) -> float:
        values = {key: suggest(trial, key, space) for key, space in settings.space.items()}
        trial_cfg = with_task_settings(cfg, name, {**settings.budget, **values})
        pruning = pruning_callback(trial, metric)
        tags = {"unitask.stage": "tune", "unitask.task": name, "optuna.trial": str(trial.number)}
        with child_run(f"trial-{trial.number + 1}", tags, {**settings.budget, **values}):  # counted from 1, as printed
            with tempfile.TemporaryDirectory(prefix=f"unitask-tune-{name}-") as tmp:
                trainer = build_trainer(trial_cfg, name, Path(tmp), [MlflowMetrics(), pruning], quiet=True).trainer
                trainer.train()
            best = trainer.state.best_metric
            if best is None:
                raise ConfigError(
                    f"tune: trial {trial.number + 1} of {name} ended before its first evaluation",
                    hint="evaluate each epoch (finetune.eval_strategy: epoch) or lower finetune.eval_steps",
                )
            mlflow.log_metric(f"best_{metric}", best)
            if pruning.pruned:
                mlflow.set_tag("optuna.state", "pruned")
                raise optuna.TrialPruned(f"pruned after evaluation {pruning.evaluations}")
        return float(best)

    return run


def progress(trials: int, metric: str, report: Callable[[str], None]) -> Callable[[Any, Any], None]:
    """An Optuna callback that reports one line per finished trial."""
    import optuna

    def line(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        shown = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in frozen.params.items())
        steps = frozen.intermediate_values
        value = frozen.value if frozen.value is not None else (steps[max(steps)] if steps else float("nan"))
        seconds = frozen.duration.total_seconds() if frozen.duration else 0.0
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = f"\tbest {study.best_value:.4f}" if done else ""
        report(f"trial {frozen.number + 1}/{trials}\t{frozen.state.name.lower():8}\t{metric} {value:.4f}"
               f"\t{shown}\t{seconds:.0f} s{best}")  # fmt: skip

    return line


def _finish(cfg: Config, study: Any, stage: str, name: str, metric: str, seconds: float) -> dict[str, Any]:
    """The search's summary; the best values and the Katib Experiment written and logged."""
    import mlflow

    settings = cfg.tune
    states = [t.state.name.lower() for t in study.trials]
    if "complete" not in states:
        raise ConfigError(
            f"tune: no trial of {name} finished ({', '.join(sorted(set(states))) or 'none ran'})",
            hint="raise tune.trials or tune.pruner_startup_trials (trials that always finish)",
        )
    best = study.best_trial
    summary = {
        "stage": stage, "task": name, "metric": metric, "best_value": best.value, "best_params": best.params,
        "best_trial": best.number + 1, "trials": len(states), "complete": states.count("complete"),
        "pruned": states.count("pruned"), "seconds": round(seconds, 1), "budget": settings.budget,
    }  # fmt: skip
    folder = cfg.path(settings.output, "tune.output")
    summary["params_file"] = str(write_best(folder / f"{name}.yaml", summary))
    summary["katib_file"] = str(write_experiment(cfg, name, metric, folder / f"{name}-katib.yaml"))
    mlflow.log_metrics({"best_value": best.value, "trials_complete": summary["complete"],
                        "trials_pruned": summary["pruned"], "seconds": seconds})  # fmt: skip
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    mlflow.log_artifact(summary["params_file"])
    mlflow.log_artifact(summary["katib_file"])
    return summary


def write_best(path: Path, summary: dict[str, Any]) -> Path:
    """The best values as `tasks: {<task>: {finetune: ...}}`, with a header saying how to use them."""
    name = summary["task"]
    sets = " ".join(f"--set {item}" for item in task_overrides(name, summary["best_params"]))
    header = (
        f"# unitask tune --stage {summary['stage']} --task {name}: trial {summary['best_trial']}, the best of "
        f"{summary['trials']} ({summary['complete']} complete, {summary['pruned']} pruned), validation "
        f"{summary['metric']} {summary['best_value']:.4f} with the budget {summary['budget']}.\n"
        f"# Merge the block below into params.yaml (the task's own finetune settings), or try it for one run:\n"
        f"#   unitask finetune --task {name} {sets}\n"
    )
    body = yaml.safe_dump({"tasks": {name: {"finetune": summary["best_params"]}}}, sort_keys=False)
    with atomic_file(path) as tmp:
        tmp.write_text(header + body, encoding="utf-8")
    return path
