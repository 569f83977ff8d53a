"""The Kubeflow driver of the stages.

`runtime` is what the components (components/stages.py) call inside their pods: it builds a
workspace (a params.yaml from the pipeline's section parameters, input artifacts linked where the
stage expects its files), calls the stage function, and copies the stage's outputs into the output
artifacts. `project` builds, compiles, runs locally and submits the pipeline (pipelines/).
"""
