"""`kubeflow:` of params.yaml: how the pipeline's pods are built and placed.

No stage reads this section, so the config's schema (`unitask.config.Config`) keeps it as given and
the Kubeflow driver validates it here (`kubeflow_settings`): editing this schema reruns no stage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from unitask.config import Config
from unitask.config.base import ProjectPath, Strict
from unitask.config.loader import describe_error
from unitask.errors import ConfigError



class Toleration(Strict):
    key: str | None = Field(default=None, description="taint key; unset with operator Exists: every taint")
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = Field(default=None, description="with operator Equal: the taint's value")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, description="with effect NoExecute")


class KubeflowStage(Strict):
    """Resources, retries and caching of one stage's pod. Under `kubeflow.stages.<stage>`, the keys set
    override those of the stage's declared pod (`pod=` in src/unitask/stages.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    cpu: str = Field(default="2", description="CPU request, e.g. '8' or '500m'")
    memory: str = Field(default="8Gi", description="memory request, e.g. '32Gi'")
    cpu_limit: str | None = None
    memory_limit: str | None = None
    gpus: int = Field(
        default=0, ge=0,
        description="accelerators (kubeflow.accelerator_type); > 0 also adds the GPU node selector and tolerations",
    )
    retries: int = Field(default=2, ge=0, description="retries after a failure (pod eviction, spot preemption, network)")
    caching: bool = Field(default=True, description="reuse a previous run's outputs when the inputs are the same")
    nodes: int = Field(
        default=1, ge=1,
        description="training stages: nodes of the distributed job (kubeflow.job_kind); each gets cpu, memory and gpus",
    )
    procs_per_node: int = Field(
        default=1, ge=1,
        description="training stages: torchrun processes per node; with gpus > 0 each process has its own GPU "
        "(a node gets max(gpus, procs_per_node))",
    )

    @property
    def distributed(self) -> bool:
        """Runs as a TrainJob/PyTorchJob of nodes x procs_per_node processes instead of in the step's pod."""
        return self.nodes * self.procs_per_node > 1

    @property
    def gpus_per_node(self) -> int:
        """The accelerators of one pod (one node of a job): one per process, at least `gpus`."""
        return max(self.gpus, self.procs_per_node) if self.gpus else 0


class DistributedJobs(Strict):
    """How a training stage with nodes x procs_per_node > 1 runs: a job of `kubeflow.job_kind` that the
    pipeline step creates, waits for, and whose outputs it reads from the shared workspace volume."""

    runtime: str = Field(default="torch-distributed", description="TrainJob: the (Cluster)TrainingRuntime's name")
    runtime_kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"
    workspace_pvc: str = Field(
        default="unitask-workspace",
        description="a ReadWriteMany PersistentVolumeClaim mounted by the step and every node: the job's params.yaml, "
        "inputs and outputs (components/k8s/workspace-pvc.yaml)",
    )
    mount_path: str = Field(default="/workspace", description="where the workspace volume is mounted")
    service_account: str | None = Field(default=None, description="the job pods' service account; null: the namespace's default")
    timeout: float = Field(default=48 * 3600.0, gt=0, description="seconds the step waits for the job before deleting it")
    poll_seconds: float = Field(default=15.0, gt=0, description="seconds between two reads of the job's conditions")


class SecretEnv(Strict):
    """A Kubernetes Secret exposed to every pod as environment variables (never written in the YAML)."""

    name: str = Field(description="the Secret's name in the pipeline's namespace")
    keys: dict[str, str] = Field(min_length=1, description="secret key -> environment variable")
    optional: bool = Field(default=False, description="start the pod even when the Secret is missing")


class Retry(Strict):
    backoff_duration: str = Field(default="30s", description="wait before the first retry")
    backoff_factor: float = Field(default=2.0, ge=1)
    backoff_max_duration: str = Field(default="3600s", description="longest wait between retries")


SECRET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlflow_secret": {"name": "unitask-mlflow", "keys": {"tracking_uri": "MLFLOW_TRACKING_URI"}},
    "s3_secret": {
        "name": "unitask-s3",
        "keys": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    },
}


class Kubeflow(Strict):
    """`unitask pipeline compile|run-local|submit`: the image, pod resources and placement, secrets."""

    image: str = Field(default="ghcr.io/unitask/unitask", description="the components' image (components/Dockerfile)")
    tag: str = Field(default="0.1.0", description="the image tag")
    pipeline_name: str = Field(default="unitask", pattern=r"^[a-z0-9][a-z0-9-]*$")
    package: ProjectPath = Field(default="pipelines/unitask.yaml", description="where `unitask pipeline compile` writes")
    accelerator_type: str = Field(default="nvidia.com/gpu", description="resource name of the accelerator")
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"},
        description="node labels required by stages with gpus > 0",
    )
    tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
        description="taints tolerated by stages with gpus > 0",
    )
    stages: dict[str, KubeflowStage] = Field(
        default_factory=dict, description="per stage, the pod keys that differ from its declared pod (unitask.stages)"
    )
    job_kind: Literal["trainjob", "pytorchjob"] = Field(
        default="trainjob",
        description="distributed stages run as a Kubeflow Trainer v2 TrainJob, or (Training Operator v1 only) a PyTorchJob",
    )
    jobs: DistributedJobs = DistributedJobs()
    retry: Retry = Retry()
    mlflow_secret: SecretEnv | None = Field(
        default_factory=lambda: SecretEnv(**SECRET_DEFAULTS["mlflow_secret"]),
        description="sets MLFLOW_TRACKING_URI, which replaces tracking.uri inside the pods; null: none",
    )
    s3_secret: SecretEnv | None = Field(
        default_factory=lambda: SecretEnv(**SECRET_DEFAULTS["s3_secret"]),
        description="S3 credentials for s3:// sources and MLflow artifacts; null: none",
    )

    @model_validator(mode="before")
    @classmethod
    def _secrets_over_defaults(cls, data: Any) -> Any:
        """`--set kubeflow.s3_secret.name=x` keeps the default keys (and the reverse)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, defaults in SECRET_DEFAULTS.items():
            if isinstance(data.get(name), dict):
                merged[name] = {**defaults, **data[name]}
        return merged

    @property
    def image_ref(self) -> str:
        return f"{self.image}:{self.tag}"

    @model_validator(mode="after")
    def _mlflow_env(self) -> Kubeflow:
        if self.mlflow_secret is not None and "MLFLOW_TRACKING_URI" not in self.mlflow_secret.keys.values():
            raise ValueError("mlflow_secret: keys must map one secret key to MLFLOW_TRACKING_URI")
        return self


def kubeflow_settings(cfg: Config) -> Kubeflow:
    """The `kubeflow` section of `cfg`, validated; a ConfigError names each bad key as the loader does."""
    from pydantic import ValidationError

    try:
        return Kubeflow.model_validate(cfg.kubeflow)
    except ValidationError as exc:
        lines = [describe_error(err, Kubeflow, ("kubeflow",)) for err in exc.errors()]
        raise ConfigError(
            f"{cfg.root / 'params.yaml'}: invalid configuration\n  " + "\n  ".join(lines),
            hint="fix the keys above (see README.md, 'Kubeflow Pipelines')",
        ) from None
