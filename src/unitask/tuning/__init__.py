"""Hyperparameter search: `unitask tune` (Optuna TPE + median pruning, MLflow child runs per trial)
and the equivalent Katib `Experiment` manifest for a Kubeflow cluster."""
