"""The pod of each pipeline step: its stage's declared pod (`pod=` in unitask.stages) with the keys
`kubeflow.stages.<stage>` sets on top."""

from __future__ import annotations

from unitask.kubeflow.settings import Kubeflow, KubeflowStage
from unitask.errors import ConfigError
from unitask.stages import STAGES


def pod(kf: Kubeflow, stage: str) -> KubeflowStage:
    """Resources, retries, caching and (training stages) nodes x processes of `stage`'s pods."""
    unknown = sorted(set(kf.stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"kubeflow.stages.{unknown[0]}: no such stage", hint=f"stages: {', '.join(STAGES)}")
    given = kf.stages[stage].model_dump(exclude_unset=True) if stage in kf.stages else {}
    settings = KubeflowStage(**{**STAGES[stage].pod, **given})
    if settings.distributed and not STAGES[stage].trains:
        training = ", ".join(name for name, s in STAGES.items() if s.trains)
        raise ConfigError(f"kubeflow.stages.{stage}: nodes and procs_per_node apply to {training} only")
    return settings
