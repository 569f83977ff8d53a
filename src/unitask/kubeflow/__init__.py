"""The Kubeflow driver of the stages.

`pipeline` makes the pipeline from the steps of `unitask.graph` (the graph dvc.yaml runs), with one
component per step that `components` generates; `runtime.run_stage` is what each component runs in its
pod; `pods` gives each step's pod settings; `jobs` runs a distributed training stage as a TrainJob or
PyTorchJob; `project` compiles, runs locally and submits; `schemas` checks what the cluster will read.
"""
