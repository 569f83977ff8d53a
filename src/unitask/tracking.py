"""MLflow: where runs go, one run per stage invocation, and what a run names (code, data, models).

How the runs of one pipeline invocation hang together:
- The experiment carries MLflow's experiment kind `custom_model_development` (tag `mlflow.experimentKind`)
  and a description (`mlflow.note.content`). MLflow 3.17's UI keeps its GenAI / Model training switch in
  the browser, not in the experiment: open the experiment with `?workflowType=machine_learning`
  (`experiment_url`, printed by `make mlflow-ui` and `unitask summary`) to land on the training runs.
- A pipeline invocation has one parent run, tagged `unitask.pipeline_run=<id>`. A driver names the
  invocation in the environment variable UNITASK_PIPELINE_RUN (`unitask repro` wraps `dvc repro` in
  `pipeline`; a Kubeflow component calls `pipeline_run(<kfp's pipeline job id>, driver="kubeflow")`,
  which `unitask pipeline run-local` gets from kfp's local runner too). Each stage run then finds the
  parent by that tag, or creates it (two stages creating it at once: the older one wins, the other is
  deleted), and nests under it (`mlflow.parentRunId`). Without the variable a stage run is top-level.
- The parent and every stage run carry the git commit and dirty flag of the project (or
  UNITASK_GIT_COMMIT / UNITASK_GIT_DIRTY where there is no git checkout, as in a pipeline image) and
  the parent the sha256 of the config and of the params file.
- `log_datasets` logs a stage's input splits as dataset inputs (digest: DVC's md5 from dvc.lock);
  `log_task_metrics` names every model's metrics `<split>/<task>/<metric>`; `log_trained_model` logs a
  model folder as an MLflow 3 LoggedModel linked to the run, its datasets and metrics.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import ConfigError

PID_TAG, HOST_TAG = "unitask.pid", "unitask.host"  # who runs it: lets a later run end it if it was killed
FALLBACK_TAG = "unitask.tracking_fallback"  # on runs logged to tracking.fallback_uri: the server they missed
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # MLflow's "Model training" experiments
NOTE_TAG = "mlflow.note.content"  # the description the UI shows (experiment, run)
PIPELINE_ENV, DRIVER_ENV = "UNITASK_PIPELINE_RUN", "UNITASK_PIPELINE_DRIVER"  # set by a pipeline's driver
PIPELINE_TAG, DRIVER_TAG = "unitask.pipeline_run", "unitask.pipeline_driver"  # on the parent run
COMMIT_TAG, DIRTY_TAG = "mlflow.source.git.commit", "unitask.git.dirty"
PARAMS_TAG, PARAMS_FILE_TAG = "unitask.config.sha256", "unitask.params_file.sha256"
MODEL_DIGEST_TAG = "unitask.model.sha256"  # on a LoggedModel: its folder's sha256 (data.hashing.sha256_path)
SPLIT_CONTEXT = {"train": "training", "validation": "validation", "test": "test"}
DESCRIPTION = (  # Markdown in the UI
    "unitask: one parent run per pipeline invocation (`pipeline:<driver>:<id>`, tag `unitask.pipeline_run`) "
    "with a nested run per stage and task (prepare, validate, pretrain, baseline, finetune, multitask, fusion, "
    "evaluate, register). Every model logs `validation/<task>/<metric>` and `test/<task>/<metric>`: select the "
    "runs of one task's models and Compare. Trained models are LoggedModels (Models); the Dataset column gives "
    "the DVC md5 of the data each run read, the tag `mlflow.source.git.commit` the code."
)
_checked: dict[tuple[str, str, str | None], str] = {}  # (project root, uri, fallback_uri) -> the store in use


def _resolve(cfg: Config, uri: str) -> str:
    """A relative `sqlite:///` path is made absolute under the project root."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = cfg.path(uri.removeprefix(prefix))
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def tracking_uri(cfg: Config) -> str:
    """The configured URI; a relative `sqlite:///` path is made absolute under the project root."""
    return _resolve(cfg, cfg.tracking.uri)


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health(uri: str, timeout: float) -> str | None:
    """None when the server answers GET /health, else why not."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:  # refused, DNS, timeout
        reason = getattr(exc, "reason", exc)
        return f"cannot reach {url} ({reason})"
    if status in (200, 401, 403):  # 401/403: a server with authentication (credentials go in MLFLOW_TRACKING_*)
        return None
    return f"{url} answered HTTP {status}: is this an MLflow tracking server?"


def preflight(cfg: Config) -> str:
    """The store this process logs to: `tracking.uri`, after checking that an http(s) server answers.

    Stages call it before any work. An unreachable server raises ConfigError, unless
    `tracking.fallback_uri` is set: then a warning says so and runs go there. Once per process and config."""
    t = cfg.tracking
    key = (str(cfg.root), t.uri, t.fallback_uri)
    if key in _checked:
        return _checked[key]
    problem = _health(t.uri, t.timeout) if _is_server(t.uri) else None
    if problem is None:
        _checked[key] = tracking_uri(cfg)
        return _checked[key]
    if t.fallback_uri is None:
        raise ConfigError(
            f"tracking.uri: the MLflow server {t.uri} is unreachable: {problem}; no stage starts without it",
            hint="start the server (`make team-up` for the local team setup) or fix tracking.uri "
            "(--set tracking.uri=...); to log locally instead, set tracking.fallback_uri explicitly",
        )
    fallback = _checked[key] = _resolve(cfg, t.fallback_uri)
    print(
        f"unitask: WARNING: the MLflow server {t.uri} is unreachable ({problem}); runs of this process are logged to "
        f"{fallback} instead (tracking.fallback_uri), not to the server",
        file=sys.stderr,
        flush=True,
    )
    return fallback


def configure(cfg: Config) -> str:
    """Point MLflow at the configured store (after `preflight`) and experiment; return the experiment id."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = preflight(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if experiment is not None:
        describe_experiment(experiment)
        return mlflow.set_experiment(experiment_id=experiment.experiment_id).experiment_id
    # a local store keeps artifacts under the project; a server uses its own artifact root
    local = not uri.startswith(("http://", "https://", "databricks"))
    location = Path(cfg.path(cfg.tracking.artifact_location)).as_uri() if local else None
    try:
        mlflow.create_experiment(
            cfg.tracking.experiment, artifact_location=location, tags={KIND_TAG: KIND, NOTE_TAG: DESCRIPTION}
        )
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent stage
        pass
    return mlflow.set_experiment(cfg.tracking.experiment).experiment_id


def describe_experiment(experiment: Any) -> None:
    """Give an existing experiment the kind and description it lacks; a kind or description someone
    set (in the UI or by hand) is left as it is."""
    import mlflow

    missing = {k: v for k, v in {KIND_TAG: KIND, NOTE_TAG: DESCRIPTION}.items() if k not in experiment.tags}
    for key, value in missing.items():
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


def experiment_url(server: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI at `server`, on the Model training view (MLflow 3.17's UI
    opens on the GenAI view unless the URL or the browser's last choice says otherwise)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@contextmanager
def stage_run(cfg: Config, stage: str, task: str | None = None, params: dict[str, Any] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage (and task): FINISHED, FAILED if the body raises, KILLED when
    interrupted or terminated. Runs of the same stage and task left RUNNING by a killed process end
    as KILLED first. Tagged with the git state; nested under the pipeline run's parent when
    UNITASK_PIPELINE_RUN is set (see the module's docstring)."""
    import mlflow

    experiment = configure(cfg)
    name = f"{stage}:{task}" if task else stage
    tags = {"unitask.stage": stage, **({"unitask.task": task} if task else {})}
    end_orphans(experiment, tags)
    tags.update({PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(), **git_state(cfg.root)})
    if preflight(cfg) != tracking_uri(cfg):
        tags[FALLBACK_TAG] = cfg.tracking.uri
    parent, owned = pipeline_parent(cfg, experiment) if os.environ.get(PIPELINE_ENV) else (None, False)
    run = mlflow.start_run(run_name=name, tags=tags, parent_run_id=parent)
    status = "FINISHED"
    try:
        if params:
            mlflow.log_params(params)
        yield run
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (the CLI turns it into SystemExit)
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        mlflow.end_run(status)
        if parent and not owned:  # no driver ends this parent: it ends with its latest stage
            _end_parent(parent, status)


def git_state(root: Path) -> dict[str, str]:
    """{commit tag: HEAD, dirty tag: "true"/"false"} of the checkout holding `root` (changes to dvc.lock,
    which DVC rewrites during `dvc repro`, do not count); UNITASK_GIT_COMMIT / UNITASK_GIT_DIRTY where
    there is no checkout (a pipeline image); {} when neither says."""
    if "UNITASK_GIT_COMMIT" in os.environ:
        return {COMMIT_TAG: os.environ["UNITASK_GIT_COMMIT"], DIRTY_TAG: os.environ.get("UNITASK_GIT_DIRTY", "unknown")}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock")
    if commit is None or changes is None:
        return {}
    return {COMMIT_TAG: commit.strip(), DIRTY_TAG: str(bool(changes.strip())).lower()}


def config_hashes(cfg: Config) -> dict[str, str]:
    """sha256 of the effective config (params file and --set overrides) and of the project's params.yaml."""
    hashes = {PARAMS_TAG: hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()}
    params_file = cfg.root / "params.yaml"
    if params_file.is_file():
        hashes[PARAMS_FILE_TAG] = hashlib.sha256(params_file.read_bytes()).hexdigest()
    return hashes


def pipeline_run(run_id: str, driver: str) -> None:
    """Nest this process's stage runs under pipeline run `run_id` of `driver` (kubeflow, dvc, ...): what a
    Kubeflow component calls first, with kfp's `dsl.PIPELINE_JOB_ID_PLACEHOLDER` as `run_id`. A pipeline
    run already set in the environment (a driver around it: `unitask pipeline run-local`) is kept."""
    if not os.environ.get(PIPELINE_ENV):
        os.environ[PIPELINE_ENV], os.environ[DRIVER_ENV] = run_id, driver


def _parent_tags(cfg: Config, run_id: str, driver: str) -> dict[str, str]:
    tags = {PIPELINE_TAG: run_id, DRIVER_TAG: driver, "unitask.stage": "pipeline", **git_state(cfg.root), **config_hashes(cfg)}
    if driver == "kubeflow":
        tags["unitask.kubeflow.run_id"] = run_id
    return tags


PARENT_SETTLE_SECONDS = 1.0  # paid once per pipeline run, by the stages that create its parent


def pipeline_parent(cfg: Config, experiment_id: str, owner: bool = False) -> tuple[str, bool]:
    """(run id, whether a driver owns it) of the parent run of pipeline run $UNITASK_PIPELINE_RUN:
    found by its tag, else created. When two processes create it at once, both keep the oldest
    (start time, then run id) and the loser deletes its own. `owner`: the caller (a driver) ends it."""
    import mlflow

    client = mlflow.MlflowClient()
    pipeline_id = os.environ[PIPELINE_ENV]
    driver = os.environ.get(DRIVER_ENV, "unknown")

    def existing() -> list[Any]:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_id}'")
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    found = existing()
    if not found:
        tags = _parent_tags(cfg, pipeline_id, driver) | ({"unitask.pipeline_owner": "driver"} if owner else {})
        mine = client.create_run(experiment_id, run_name=f"pipeline:{driver}:{pipeline_id}", tags=tags)
        # a run's start time is taken before its insert: a rival that started earlier may land after this
        # process's search; waiting out the inserts in flight lets every creator see the same runs
        time.sleep(PARENT_SETTLE_SECONDS)
        found = existing()
        if found[0].info.run_id != mine.info.run_id:
            client.delete_run(mine.info.run_id)
    return found[0].info.run_id, found[0].data.tags.get("unitask.pipeline_owner") == "driver"


def _end_parent(parent: str, status: str) -> None:
    """A stage-owned parent takes the latest stage's end; once FAILED or KILLED it stays so."""
    import mlflow

    client = mlflow.MlflowClient()
    if client.get_run(parent).info.status in ("FAILED", "KILLED"):
        status = client.get_run(parent).info.status
    client.set_terminated(parent, status=status)


@contextmanager
def pipeline(cfg: Config, driver: str, run_id: str | None = None) -> Iterator[str]:
    """A pipeline invocation by `driver` (`unitask repro` around `dvc repro`, `unitask pipeline run-local`):
    sets UNITASK_PIPELINE_RUN (and the git state) for the stages it starts, creates their parent run up
    front, ends it FINISHED, or FAILED / KILLED with the body. Yields the parent's run id."""
    import mlflow

    pipeline_id = run_id or f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    previous = {k: os.environ.get(k) for k in (PIPELINE_ENV, DRIVER_ENV, "UNITASK_GIT_COMMIT", "UNITASK_GIT_DIRTY")}
    os.environ[PIPELINE_ENV], os.environ[DRIVER_ENV] = pipeline_id, driver
    git = git_state(cfg.root)  # for stages that run outside the checkout (kfp's local workspaces)
    if COMMIT_TAG in git:
        os.environ["UNITASK_GIT_COMMIT"], os.environ["UNITASK_GIT_DIRTY"] = git[COMMIT_TAG], git[DIRTY_TAG]
    status = "FAILED"
    try:
        parent, _ = pipeline_parent(cfg, configure(cfg), owner=True)
        try:
            yield parent
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            raise
        finally:
            mlflow.MlflowClient().set_terminated(parent, status=status)
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def end_orphans(experiment_id: str, tags: dict[str, str]) -> list[str]:
    """End as KILLED the runs with these stage/task tags that are still RUNNING although the process
    on this host that started them is gone (SIGKILL, OOM, power loss leave no chance to end them);
    return their ids. Runs from other hosts (e.g. Kubernetes pods) cannot be checked and are left."""
    import mlflow

    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    stale = mlflow.search_runs(
        experiment_ids=[experiment_id], filter_string=f"{where} and attributes.status = 'RUNNING'", output_format="list"
    )
    ended = []
    for run in stale:
        pid, host = run.data.tags.get(PID_TAG), run.data.tags.get(HOST_TAG)
        if host == socket.gethostname() and pid and not _alive(int(pid)):
            mlflow.MlflowClient().set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """Nested dicts of numbers -> {'a.b.c': number}, the shape `mlflow.log_metrics` takes."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def dvc_md5(cfg: Config, folder: Path) -> str | None:
    """DVC's md5 of `folder` as dvc.lock (an out of any stage) or a `.dvc` file at the project root
    records it, when the folder still holds the file count and bytes recorded there; None without an
    entry or when the folder changed since."""
    if not folder.is_dir():
        return None
    relative = os.path.relpath(folder.resolve(), cfg.root.resolve())
    records = [cfg.root / "dvc.lock", *sorted(cfg.root.glob("*.dvc"))]
    versions = [(record, record.stat().st_mtime_ns, record.stat().st_size) for record in records if record.is_file()]
    outs = [out for version in versions for out in _recorded_outs(*version)]
    for out in outs:
        if out.get("path") == relative and out.get("md5"):
            files = [p for p in folder.rglob("*") if p.is_file()]
            if out.get("nfiles") == len(files) and out.get("size") == sum(p.stat().st_size for p in files):
                return str(out["md5"]).removesuffix(".dir")
    return None


@functools.cache
def _recorded_outs(record: Path, mtime_ns: int, size: int) -> list[dict[str, Any]]:
    """The outs that a dvc.lock or .dvc file records, read once per version of the file (a stage logs
    several folders; the default dvc.lock takes 0.15 s to parse in pure Python, 0.03 s with libyaml)."""
    import yaml

    data = yaml.load(record.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        return []
    stages = (data.get("stages") or {}).values()
    return [*(data.get("outs") or []), *(o for stage in stages for o in stage.get("outs") or [])]


def log_source(cfg: Config, task: str, rows: int) -> None:
    """Log task `task`'s raw data (paths.raw/<task>, `rows` rows read) as a dataset input `<task>/raw`
    of the active run (context `source`): digest DVC's md5 of paths.raw (data.dvc) while it matches,
    else the sha256 of the task's raw folder."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    from unitask.data.hashing import sha256_path

    folder = cfg.path(cfg.paths.raw) / task
    version = dvc_md5(cfg, cfg.path(cfg.paths.raw))
    digest = version or sha256_path(folder)[:32]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dataset = MetaDataset(source=mlflow.data.dataset_source_registry.resolve_dataset_source(str(folder)),
                              name=f"{task}/raw", digest=digest)  # fmt: skip
        mlflow.log_input(dataset, context="source", tags={"unitask.rows": str(rows),
                         "unitask.digest": f"dvc md5 of {cfg.paths.raw}" if version else "sha256 of the folder"})  # fmt: skip


_datasets: dict[str, dict[tuple[str, str], Any]] = {}  # run id -> {(task, split): the dataset it logged}


def log_datasets(cfg: Config, tasks: Iterable[str], splits: Iterable[str] = ("train", "validation", "test")) -> None:
    """Log the prepared splits of `tasks` as dataset inputs of the active run: name `<task>/<split>`,
    digest DVC's md5 of the task's prepared folder (dvc.lock; else the split file's sha256, cut to 32
    hex digits), source the file, the row count in the profile, context training/validation/test.
    `log_task_metrics` ties a model's metrics of the same run to them."""
    import mlflow
    import pandas as pd

    from unitask.data.hashing import sha256_file

    logged = _datasets.setdefault(mlflow.active_run().info.run_id, {})
    datasets, contexts, tags = [], [], []
    with warnings.catch_warnings():  # which local source class, integer columns in the schema: nothing to act on
        warnings.simplefilter("ignore", UserWarning)
        for task in tasks:
            folder = cfg.path(cfg.paths.prepared) / task
            version = dvc_md5(cfg, folder)
            for split in (s for s in splits if (folder / f"{s}.parquet").is_file()):
                path = folder / f"{split}.parquet"
                digest = version or sha256_file(path)[:32]
                frame = pd.read_parquet(path)
                logged[(task, split)] = mlflow.data.from_pandas(frame, source=str(path), name=f"{task}/{split}", digest=digest)
                datasets.append(logged[(task, split)])
                contexts.append(SPLIT_CONTEXT[split])
                tags.append({"unitask.digest": "dvc.lock md5" if version else "sha256 of the file"})
        if datasets:
            mlflow.log_inputs(datasets, contexts=contexts, tags_list=tags)


def task_metric_keys(split: str, task: str, metrics: dict[str, Any]) -> dict[str, float]:
    """{'<split>/<task>/<metric>': value} for the numbers in `metrics` (nested detail is left out)."""
    return {
        f"{split}/{task}/{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def log_task_metrics(split: str, task: str, metrics: dict[str, Any], model_id: str | None = None) -> None:
    """Log one model's metrics on `split` of `task` to the active run as `<split>/<task>/<metric>`, the
    names every model uses (so the compare view lines models up per task); with `model_id` also to
    that LoggedModel, tied to the dataset `log_datasets` logged for the task and split."""
    import mlflow

    run = mlflow.active_run()
    dataset = _datasets.get(run.info.run_id, {}).get((task, split)) if run else None
    mlflow.log_metrics(task_metric_keys(split, task, metrics), model_id=model_id, dataset=dataset if model_id else None)


def log_trained_model(
    name: str,
    folder: Path | None,
    results: dict[str, dict[str, dict[str, Any]]],
    tags: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
) -> str:
    """Log a trained model as an MLflow 3 LoggedModel of the active run: `folder`'s files as its
    artifacts, tagged with their sha256 (what `unitask register` finds it by), and `results`
    ({split: {task: metrics}}) logged to the run and the model under `<split>/<task>/<metric>`.
    Returns the model id."""
    import mlflow

    from unitask.data.hashing import sha256_path

    run = mlflow.active_run()
    stage_tags = {k: v for k, v in run.data.tags.items() if k in ("unitask.stage", COMMIT_TAG)}
    model_tags = {**stage_tags, **(tags or {}), "unitask.tasks": ",".join(sorted({t for s in results.values() for t in s}))}
    if folder is not None:
        model_tags[MODEL_DIGEST_TAG] = sha256_path(folder)
    model = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run.info.run_id,
        tags=model_tags,
        params={k: str(v) for k, v in (params or {}).items()},
        model_type=run.data.tags.get("unitask.stage"),
    )
    try:
        if folder is not None:
            mlflow.MlflowClient().log_model_artifacts(model.model_id, str(folder))
        for split, tasks in results.items():
            for task, metrics in tasks.items():
                log_task_metrics(split, task, metrics, model_id=model.model_id)
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    return model.model_id


def logged_models_of(folder: Path) -> list[str]:
    """Ids of the READY LoggedModels holding exactly the files of `folder` or of one of its subfolders
    (a fusion output holds a model per task), newest first per folder."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from unitask.data.hashing import sha256_path

    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())] if folder.is_dir() else [folder]
    experiments = [e.experiment_id for e in mlflow.search_experiments()]
    ids: list[str] = []
    for candidate in candidates:
        found = mlflow.search_logged_models(
            experiment_ids=experiments,
            filter_string=f"tags.`{MODEL_DIGEST_TAG}` = '{sha256_path(candidate)}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
            output_format="list",
        )
        ids.extend([m.model_id for m in found if m.status == LoggedModelStatus.READY][:1])
    return ids
