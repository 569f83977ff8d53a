"""Compile a project's pipeline (`unitask.kubeflow.pipeline`), run it locally, or submit it to Kubeflow."""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unitask import tracking
from unitask.config import Config
from unitask.errors import UnitaskError
from unitask.kubeflow.settings import kubeflow_settings

LOCAL_OUTPUTS = Path("pipelines") / "local_outputs"


def pipeline_arguments(cfg: Config, local: bool = False) -> dict[str, Any]:
    """The pipeline's parameters: `params`, the whole validated config as one YAML (JSON) string (as written in params.yaml,
    plus --set), and `seed`, the one scalar people change per run in the Kubeflow UI.

    `local`: relative paths are made absolute under the project root (local sources, a local backbone
    or corpus, a sqlite tracking store), since the components run in a workspace elsewhere, and the
    project root joins `paths.roots` so the pods may read there. On a cluster, sources must be reachable
    from the pods (package, hub, s3, or a mount listed in paths.roots)."""
    written = cfg.model_dump(mode="json", exclude_unset=True)
    written.pop("seed", None)  # the `seed` parameter
    paths = written.setdefault("paths", {})
    for key in ("raw", "prepared", "reports"):  # the workspace's layout: where the artifacts are linked
        paths.pop(key, None)
    if local:
        _absolute_paths(cfg, written)
    # JSON, YAML's one-line form: kfp copies a parameter's default into the compiled file's header comment,
    # where a multi-line string would end the comment and break the YAML
    return {"params": json.dumps(written), "seed": cfg.seed}


def _absolute_paths(cfg: Config, args: dict[str, Any]) -> None:
    from unitask.models.backbone import PACKAGE_PREFIX
    from unitask.tracking import tracking_uri

    for task in args["tasks"].values():
        if task["source"]["kind"] == "local":
            task["source"]["path"] = str(cfg.path(task["source"]["path"]))
    corpus = args.get("pretrain", {}).get("corpus")
    if corpus and corpus["source"]["kind"] == "local":
        corpus["source"]["path"] = str(cfg.path(corpus["source"]["path"]))
    backbone = cfg.model.backbone
    if not backbone.startswith(PACKAGE_PREFIX) and (backbone.startswith((".", "/")) or (cfg.root / backbone).exists()):
        args.setdefault("model", {})["backbone"] = str(cfg.path(backbone))
    args["tracking"] = {
        **args.get("tracking", {}),
        "uri": tracking_uri(cfg),
        "artifact_location": str(cfg.path(cfg.tracking.artifact_location)),
    }
    paths = args["paths"]
    paths["roots"] = [str(cfg.root.resolve()), *(str(cfg.path(r)) for r in cfg.paths.roots)]


def build(cfg: Config, local: bool = False, stages: list[str] | None = None) -> Any:
    """The pipeline (a kfp GraphComponent) for `cfg`, its components in kubeflow.image:tag; with
    `stages`, only their steps and those they need."""
    from unitask.kubeflow.pipeline import build_pipeline

    return build_pipeline(cfg, pipeline_arguments(cfg, local=local), stages)


def compile_pipeline(cfg: Config, output: Path | None = None) -> Path:
    """Write the compiled pipeline YAML (default kubeflow.package, under the project root)."""
    from kfp import compiler

    path = output or cfg.path(kubeflow_settings(cfg).package)
    pipeline = build(cfg)  # a config error stops here, before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    return path


def run_local(cfg: Config, output: Path | None = None, cache: bool = False, stages: list[str] | None = None) -> Path:
    """Run the pipeline (with `stages`, only their steps and those they need) with kfp's local
    SubprocessRunner (the current Python, no Docker), one step at a time, and return the run's folder:
    <output>/<pipeline>-<timestamp>/<task>/<artifact>. Kubernetes settings (GPUs, node selectors,
    secrets, retries) do not apply locally."""
    from kfp import local

    root = output or cfg.path(str(LOCAL_OUTPUTS))
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=cache,
        cache_root=str(root / ".kfp_cache") if cache else None,
    )
    pipeline = build(cfg, local=True, stages=stages)
    print(
        "unitask: running locally: GPUs, CPU/memory requests, node selectors, tolerations, secrets and "
        "retries apply on a cluster only",
        file=sys.stderr,
    )
    try:
        with warnings.catch_warnings():  # the same notice, once per task and setting
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner", category=UserWarning)
            # the components run in this Python environment, where unitask is installed, not in the image
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image", category=RuntimeWarning)
            with tracking.pipeline(cfg, "kubeflow-local"):  # one parent run over the components' runs
                pipeline()
    except RuntimeError as exc:
        raise UnitaskError(f"kubeflow local run: {_uncolored(str(exc))}", hint="the failing component's log is above") from None
    runs = sorted(p for p in set(root.iterdir()) - before if p.is_dir() and not p.name.startswith("."))
    if runs:
        return runs[-1]
    print("unitask: every task came from the local cache (outputs of earlier runs)", file=sys.stderr)
    earlier = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return earlier[-1] if earlier else root


def _uncolored(text: str) -> str:
    """kfp's local messages carry terminal colors."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def submit(
    cfg: Config,
    host: str,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
) -> str:
    """Compile the pipeline for `cfg` and start a run on the Kubeflow Pipelines at `host`; the run id.

    `enable_caching` None keeps each task's compiled caching option; False/True overrides them all
    for this run."""
    import tempfile

    import kfp

    with tempfile.TemporaryDirectory(prefix="unitask-kfp-") as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        try:
            with warnings.catch_warnings():  # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later"
                warnings.simplefilter("ignore", FutureWarning)
                client = kfp.Client(host=host, namespace=namespace)
            run = client.create_run_from_pipeline_package(
                str(package),
                arguments=pipeline_arguments(cfg),
                run_name=run_name or f"{kubeflow_settings(cfg).pipeline_name}-{stamp}",
                experiment_name=experiment or cfg.tracking.experiment,
                namespace=namespace,
                enable_caching=enable_caching,
            )
        except Exception as exc:  # connection refused, DNS, HTTP errors from the API server
            raise UnitaskError(
                f"kubeflow: cannot submit to {host}: {_reason(exc)}",
                hint="check --host (the Kubeflow Pipelines API, e.g. http://localhost:8080 after "
                "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`) and your credentials",
            ) from None
    return run.run_id


def _reason(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    reason = getattr(exc, "reason", None)
    if reason is not None and getattr(exc, "status", None):
        text = f"HTTP {exc.status} {reason}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {text[:300]}"
