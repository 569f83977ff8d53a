"""Hyperparameter search: `unitask tune` (Optuna TPE + median pruning, MLflow child runs per trial)
and the equivalent Katib `Experiment` manifest for a Kubeflow cluster."""


def metric_line(metric: str, value: float) -> str:
    """The line `unitask finetune` prints for Katib's metrics collector: validation_<metric>=<value>."""
    return f"validation_{metric}={value:.6f}"
