"""Distributed training stages on a cluster: a Kubeflow Trainer v2 `TrainJob` (or a Training Operator v1
`PyTorchJob`) that runs `torchrun -m unitask.cli <stage> ...` on `nodes` x `procs_per_node` processes.

A pipeline step whose stage has `kubeflow.stages.<stage>.nodes * procs_per_node > 1` does not train in its
own pod: it writes the stage's params.yaml and inputs under the shared workspace volume
(`kubeflow.jobs.workspace_pvc`, ReadWriteMany, mounted at `kubeflow.jobs.mount_path` in the step and on
every node), calls `run_job`, which creates the job, waits on its conditions and fails the step when the
job fails, and then reads the stage's outputs from the same folder into its output artifacts.

- TrainJob (trainer.kubeflow.org/v1alpha1) on the `torch-distributed` ClusterTrainingRuntime: Trainer sets
  `PET_NNODES`, `PET_NPROC_PER_NODE`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`, which torchrun
  reads; placement, the volumes and the service account go in a `runtimePatches` entry (Trainer >= v2.2).
- PyTorchJob (kubeflow.org/v1): one Master and nodes-1 Workers (container `pytorch`); the operator sets
  `PET_NNODES`, `PET_NODE_RANK`, `PET_NPROC_PER_NODE` (from nprocPerNode) and `MASTER_ADDR`/`MASTER_PORT`,
  which the command hands to torchrun.

The launcher talks to the API server through the Kubernetes client's `CustomObjectsApi` (in-cluster
credentials: the pipeline's service account, given components/k8s/rbac.yaml).
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unitask.config import Config
from unitask.errors import ConfigError, UnitaskError
from unitask.kubeflow.pods import pod
from unitask.kubeflow.settings import Kubeflow, kubeflow_settings
from unitask.stages import STAGES

# kind -> (group, version, plural, Kind, the condition that means success)
KINDS = {
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Complete"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob", "Succeeded"),
}
TRAINER_NODE = "node"  # the torch-distributed runtime's replicated job and its container
PYTORCH_CONTAINER = "pytorch"  # the container the Training Operator configures
MANAGER = "unitask"  # the owner of our runtimePatches entry
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def job_name(stage: str, key: str) -> str:
    """A DNS-1035 name for the job of `stage`, unique per `key` (e.g. the pipeline run and task)."""
    return f"unitask-{stage}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def torchrun_command(kind: str, args: Sequence[str]) -> list[str]:
    """`torchrun -m unitask.cli ARGS`; the rendezvous comes from the environment the operator sets."""
    master = ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"] if kind == "pytorchjob" else []
    return ["torchrun", *master, "-m", "unitask.cli", *args]


def secret_env(kf: Kubeflow) -> list[dict[str, Any]]:
    """The Secrets of kubeflow.mlflow_secret and s3_secret as a container's env (by reference, never values)."""
    return [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key, "optional": secret.optional}}}
        for secret in (kf.mlflow_secret, kf.s3_secret) if secret is not None
        for key, variable in secret.keys.items()
    ]  # fmt: skip


def resources(kf: Kubeflow, stage: str) -> dict[str, Any]:
    """Requests and limits of one pod of `stage` (one node of its job): cpu, memory, one GPU per process."""
    settings = pod(kf, stage)
    limits = {k: v for k, v in (("cpu", settings.cpu_limit), ("memory", settings.memory_limit)) if v}
    if settings.gpus_per_node:
        limits[kf.accelerator_type] = str(settings.gpus_per_node)
    return {"requests": {"cpu": settings.cpu, "memory": settings.memory}, **({"limits": limits} if limits else {})}


def gpu_placement(kf: Kubeflow, stage: str) -> dict[str, Any]:
    """Node selector and tolerations of a GPU stage (as the pipeline places its pods); none without GPUs."""
    if not pod(kf, stage).gpus:
        return {}
    tolerations = [
        {{"toleration_seconds": "tolerationSeconds"}.get(k, k): v for k, v in t.model_dump(exclude_none=True).items()}
        for t in kf.tolerations
    ]
    return {"nodeSelector": dict(kf.node_selector), "tolerations": tolerations}


def _volumes(pvc: str, mount_path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The shared workspace and a memory-backed /dev/shm (NCCL and DataLoader workers need more than 64 MiB)."""
    volumes = [
        {"name": "workspace", "persistentVolumeClaim": {"claimName": pvc}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [{"name": "workspace", "mountPath": mount_path}, {"name": "dshm", "mountPath": "/dev/shm"}]
    return volumes, mounts


def job_manifest(
    cfg: Config,
    stage: str,
    args: Sequence[str],
    name: str,
    labels: dict[str, str] | None = None,
    workspace: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The TrainJob or PyTorchJob (`kubeflow.job_kind`) running `torchrun -m unitask.cli ARGS` for `stage`
    on kubeflow.stages.<stage>.nodes x procs_per_node processes, in kubeflow.image:tag.

    `args` is the CLI call after `unitask`, e.g. ["finetune", "--task", "x", "--params", "/workspace/<run>/params.yaml"]:
    its paths must be on the workspace volume, (PVC name, mount path) `workspace`, by default
    kubeflow.jobs.workspace_pvc at kubeflow.jobs.mount_path."""
    kf = kubeflow_settings(cfg)
    if not STAGES[stage].trains:
        training = ", ".join(name for name, s in STAGES.items() if s.trains)
        raise ConfigError(f"kubeflow: {stage} is not a training stage", hint=f"distributed stages: {training}")
    settings = pod(kf, stage)
    kind = kf.job_kind
    group, version, _, kind_name, _ = KINDS[kind]
    metadata = {"name": name, "labels": {"app.kubernetes.io/part-of": "unitask", "unitask.stage": stage, **(labels or {})}}
    volumes, mounts = _volumes(*(workspace or (kf.jobs.workspace_pvc, kf.jobs.mount_path)))
    placement = {**gpu_placement(kf, stage), **({"serviceAccountName": kf.jobs.service_account} if kf.jobs.service_account else {})}
    if kind == "trainjob":
        node = {**placement, "volumes": volumes, "containers": [{"name": TRAINER_NODE, "volumeMounts": mounts}]}
        patch = {"replicatedJobs": [{"name": TRAINER_NODE, "template": {"spec": {"template": {"spec": node}}}}]}
        spec: dict[str, Any] = {
            "runtimeRef": {"apiGroup": group, "kind": kf.jobs.runtime_kind, "name": kf.jobs.runtime},
            "trainer": {
                "image": kf.image_ref,
                "command": torchrun_command(kind, args),
                "numNodes": settings.nodes,
                "numProcPerNode": settings.procs_per_node,
                "resourcesPerNode": resources(kf, stage),
                "env": secret_env(kf),
            },
            "runtimePatches": [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": patch}}}],
        }
    else:
        container = {
            "name": PYTORCH_CONTAINER, "image": kf.image_ref, "command": torchrun_command(kind, args),
            "env": secret_env(kf), "resources": resources(kf, stage), "volumeMounts": mounts,
        }  # fmt: skip
        template = {
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {**placement, "containers": [container], "volumes": volumes},
        }
        counts = {"Master": 1, **({"Worker": settings.nodes - 1} if settings.nodes > 1 else {})}
        replicas = {role: {"replicas": n, "restartPolicy": "Never", "template": copy.deepcopy(template)} for role, n in counts.items()}
        spec = {
            "nprocPerNode": str(settings.procs_per_node),
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 0},  # the pipeline step retries, not the job
            "pytorchReplicaSpecs": replicas,
        }
    return {"apiVersion": f"{group}/{version}", "kind": kind_name, "metadata": metadata, "spec": spec}


# ---- the launcher ----------------------------------------------------------------------------


def current_namespace(default: str = "default") -> str:
    """The namespace of this pod (its service account's), else `default`."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or default
    except OSError:
        return default


def custom_objects_api() -> Any:
    """CustomObjectsApi with in-cluster credentials (a pipeline pod) or, outside a cluster, ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def _condition(obj: dict[str, Any], kind_type: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind_type and str(c.get("status")) == "True":
            return c
    return None


def _pods_hint(kind: str, namespace: str, name: str) -> str:
    label = "jobset.sigs.k8s.io/jobset-name" if kind == "trainjob" else "training.kubeflow.org/job-name"
    return f"the nodes' logs: kubectl -n {namespace} logs -l {label}={name} --all-containers --prefix --tail=200"


def _api_error(exc: Exception, what: str, kind: str) -> UnitaskError:
    status = getattr(exc, "status", None)
    hints = {
        403: "the pipeline's service account may not manage these jobs: kubectl apply -n NAMESPACE -f components/k8s/rbac.yaml",
        404: "the job's CRD is not installed: install Kubeflow Trainer (TrainJob) or set kubeflow.job_kind="
        + ("pytorchjob (Training Operator v1)" if kind == "trainjob" else "trainjob (Kubeflow Trainer v2)"),
    }  # fmt: skip
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return UnitaskError(f"kubeflow: {what}: HTTP {status} {reason}", hint=hints.get(status, "see the API server's answer above"))


def launch(
    manifest: dict[str, Any],
    namespace: str,
    api: Any,
    timeout: float,
    poll_seconds: float = 15.0,
    report: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Create the job `manifest` in `namespace` through `api` (a CustomObjectsApi), wait until its success
    condition (TrainJob Complete, PyTorchJob Succeeded) and return the finished object.

    Raises UnitaskError when the job fails (its reason and message, and how to read the nodes' logs), when
    `timeout` seconds pass (the job is deleted first: its GPUs are freed), or when the API refuses (RBAC,
    CRD missing). A job of the same name left by an earlier attempt is followed if it is running or
    done, and replaced if it failed: a retried pipeline step does not start a second copy."""
    from kubernetes.client.exceptions import ApiException

    kind = next((k for k, v in KINDS.items() if v[3] == manifest.get("kind")), None)
    if kind is None:
        raise UnitaskError(f"kubeflow: cannot launch a {manifest.get('kind')!r}", hint=f"a job of kind {', '.join(v[3] for v in KINDS.values())}")
    group, version, plural, kind_name, _ = KINDS[kind]
    name = manifest["metadata"]["name"]
    where = dict(group=group, version=version, namespace=namespace, plural=plural)
    what = f"{kind_name} {namespace}/{name}"
    try:
        _create(api, manifest, where, what, report, lambda: _wait_gone(api, where, name, clock, sleep, poll_seconds, clock() + timeout))
        return _follow(api, where, name, kind, timeout, poll_seconds, report, clock, sleep)
    except ApiException as exc:
        raise _api_error(exc, f"{what}", kind) from None


def _create(api: Any, manifest: dict[str, Any], where: dict[str, str], what: str, report: Callable[[str], None],
            wait_gone: Callable[[], None]) -> None:  # fmt: skip
    """Create the job; one left by an earlier attempt is followed (running or done) or replaced (failed)."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.create_namespaced_custom_object(body=manifest, **where)
        report(f"unitask: created {what}")
    except ApiException as exc:
        if exc.status != 409:
            raise
        existing = api.get_namespaced_custom_object(name=manifest["metadata"]["name"], **where)
        if _condition(existing, "Failed") is None:
            report(f"unitask: following {what}, created by an earlier attempt")
            return
        report(f"unitask: replacing {what}, which failed in an earlier attempt")
        api.delete_namespaced_custom_object(name=manifest["metadata"]["name"], body={"propagationPolicy": "Foreground"}, **where)
        wait_gone()
        api.create_namespaced_custom_object(body=manifest, **where)


def _follow(api: Any, where: dict[str, str], name: str, kind: str, timeout: float, poll_seconds: float,
            report: Callable[[str], None], clock: Callable[[], float], sleep: Callable[[float], None]) -> dict[str, Any]:  # fmt: skip
    """Read the job's conditions until it succeeds (its object), fails, or `timeout` passes (deleted)."""
    _, _, plural, kind_name, success = KINDS[kind]
    namespace, what = where["namespace"], f"{kind_name} {where['namespace']}/{name}"
    deadline, seen = clock() + timeout, None
    while True:
        obj = api.get_namespaced_custom_object(name=name, **where)
        if _condition(obj, success) is not None:
            report(f"unitask: {what}: {success}")
            return obj
        failed = _condition(obj, "Failed")
        if failed is not None:
            raise UnitaskError(
                f"kubeflow: {what} failed: {failed.get('reason', '')}: {failed.get('message', '')}".rstrip(": "),
                hint=_pods_hint(kind, namespace, name),
            )
        state = ", ".join(c.get("type", "?") for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True")
        if state != seen:
            report(f"unitask: {what}: {state or 'pending'}")
            seen = state
        if clock() >= deadline:
            api.delete_namespaced_custom_object(name=name, body={"propagationPolicy": "Foreground"}, **where)
            raise UnitaskError(
                f"kubeflow: {what} did not finish within {timeout:.0f} s (last: {state or 'pending'}); deleted it",
                hint="raise kubeflow.jobs.timeout, or check that the cluster has the nodes and GPUs the job asks for "
                f"(kubectl -n {namespace} describe {plural} {name})",
            )
        sleep(poll_seconds)


def _wait_gone(api: Any, where: dict[str, str], name: str, clock: Callable[[], float], sleep: Callable[[float], None],
               poll: float, deadline: float) -> None:  # fmt: skip
    from kubernetes.client.exceptions import ApiException

    while clock() < deadline:
        try:
            api.get_namespaced_custom_object(name=name, **where)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        sleep(poll)
    raise UnitaskError(f"kubeflow: {name}: the failed job of an earlier attempt was not deleted in time")


def run_job(
    cfg: Config,
    stage: str,
    args: Sequence[str],
    name: str,
    namespace: str | None = None,
    api: Any = None,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Build the job of `stage` (job_manifest), check it against its Kubeflow SDK schema, run it (launch)
    with kubeflow.jobs.timeout and poll_seconds, and return the finished job object."""
    from unitask.kubeflow.schemas import check, manifest_errors

    manifest = job_manifest(cfg, stage, args, name)
    check(manifest_errors(manifest), f"{manifest['kind']} {name}")
    jobs = kubeflow_settings(cfg).jobs
    return launch(manifest, namespace or current_namespace(), api if api is not None else custom_objects_api(),
                  timeout=jobs.timeout, poll_seconds=jobs.poll_seconds, report=report)  # fmt: skip
