"""What a cluster reads, checked as the cluster reads it: every Kubernetes object we ship (kubernetes-validate,
strict), the compiled pipeline (kfp's protobufs), the distributed training jobs (the Kubeflow SDKs' models),
the secrets' names; and the job launcher against an in-process API server double (no cluster runs here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, classification_task, write_project
from kubernetes.client.exceptions import ApiException

from unitask.cli import main
from unitask.config import load_config
from unitask.kubeflow.settings import kubeflow_settings
from unitask.errors import ConfigError, UnitaskError
from unitask.kubeflow import jobs, schemas

MANIFEST_DIRS = [REPO / "mlflow" / "k8s", REPO / "components" / "k8s"]
ARGS = ["finetune", "--task", "sms_spam", "--params", "/workspace/run-1/sms_spam/params.yaml"]
DISTRIBUTED = ["kubeflow.stages.finetune.nodes=2", "kubeflow.stages.finetune.procs_per_node=4"]


# ---- shipped Kubernetes objects --------------------------------------------------------------


@pytest.mark.parametrize("path", [p for d in MANIFEST_DIRS for p in sorted(d.glob("*.yaml"))], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_manifests_pass_the_kubernetes_schemas(path: Path) -> None:
    docs = schemas.load_kubectl(path.read_text())
    assert docs and schemas.file_errors(path.read_text()) == []
    if path.name == "kustomization.yaml":  # lists every manifest of its folder but the secret template
        listed = set(docs[0]["resources"])
        assert listed == {p.name for p in path.parent.glob("*.yaml")} - {"kustomization.yaml", "secret.template.yaml"}


def test_kubernetes_validator_catches_planted_errors() -> None:
    (deployment,) = schemas.load_kubectl((REPO / "mlflow/k8s/deployment.yaml").read_text())
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["envfrom"] = bad["spec"]["template"]["spec"]["containers"][0].pop("envFrom")
    assert "Additional properties are not allowed ('envfrom' was unexpected)" in schemas.manifest_errors(bad)[0]
    role = schemas.load_kubectl((REPO / "components/k8s/rbac.yaml").read_text())[0]
    role["rules"][0]["verbs"] = "create"
    assert schemas.manifest_errors(role) == ["Role/unitask-training-jobs: rules.0.verbs: 'create' is not of type 'array'"]
    # YAML 1.2 as kubectl reads it: an unquoted port number in a ConfigMap is a number, which data refuses
    (config,) = schemas.load_kubectl((REPO / "mlflow/k8s/configmap.yaml").read_text().replace('PGPORT: "5432"', "PGPORT: 5432"))
    assert schemas.manifest_errors(config) == ["ConfigMap/unitask-mlflow-config: data.PGPORT: 5432 is not of type 'string', 'null'"]


def test_the_secret_names_and_keys_agree() -> None:
    """The pods' Secrets (kubeflow.mlflow_secret, s3_secret: config defaults = params.yaml) are the ones
    mlflow/k8s/secret.template.yaml creates, with the same keys; so are the MLflow server's."""
    from unitask.kubeflow.settings import SECRET_DEFAULTS

    created = {d["metadata"]["name"]: set(d["stringData"]) for d in schemas.load_kubectl((REPO / "mlflow/k8s/secret.template.yaml").read_text())}
    params = yaml.safe_load((REPO / "params.yaml").read_text())["kubeflow"]
    kf = kubeflow_settings(load_config(REPO / "params.yaml"))
    for field, default in SECRET_DEFAULTS.items():
        assert params[field] == default  # params.yaml spells out the defaults, unchanged
        secret = getattr(kf, field)
        assert set(secret.keys) == created[secret.name], field
    (deployment,) = schemas.load_kubectl((REPO / "mlflow/k8s/deployment.yaml").read_text())
    refs = [e["valueFrom"]["secretKeyRef"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e]
    assert refs and all(r["key"] in created[r["name"]] for r in refs)
    assert {r["name"] for r in refs} & {kf.s3_secret.name}  # the server and the pods share the S3 keys


# ---- the compiled pipeline -------------------------------------------------------------------


def compile_default(tmp_path: Path, *overrides: str) -> str:
    out = tmp_path / "unitask.yaml"
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["pipeline", "compile", "--params", str(REPO / "params.yaml"), "--output", str(out), *args]) == 0
    return out.read_text()


def test_the_compiled_pipeline_parses_into_kfp_protobufs(tmp_path: Path) -> None:
    text = compile_default(tmp_path, *DISTRIBUTED)
    assert schemas.pipeline_errors(text) == []
    spec, platform = schemas.load_kubectl(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # the distributed fine-tune's step only launches the job: the workspace volume, no GPU placement
    assert executors["exec-finetune-sms-spam"]["secretAsEnv"] and executors["exec-finetune-sms-spam"]["pvcMount"]
    assert "tolerations" not in executors["exec-finetune-sms-spam"] and executors["exec-multitask"]["tolerations"]

    def planted(edit: Any) -> list[str]:
        docs = schemas.load_kubectl(text)
        edit(*docs)
        return schemas.pipeline_errors(schemas.dump_yaml(*docs))

    errors = planted(lambda s, p: s["root"]["dag"]["tasks"]["prepare-sms-spam"].update(retryPolicyy={}))
    assert len(errors) == 1 and errors[0].startswith("PipelineSpec: ") and 'no field named "retryPolicyy"' in errors[0]
    errors = planted(lambda s, p: p["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-finetune-sms-spam"].update(nodeSelectr={}))
    assert len(errors) == 1 and errors[0].startswith("kubernetes executor exec-finetune-sms-spam: ") and "nodeSelectr" in errors[0]
    errors = planted(lambda s, p: p["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-multitask"]["tolerations"][0].update(effect=3))
    assert len(errors) == 1 and "exec-multitask" in errors[0] and "effect" in errors[0]
    errors = planted(lambda s, p: s.update(schemaVersion=2.1))
    assert len(errors) == 1 and "schemaVersion" in errors[0]


# ---- distributed training jobs ---------------------------------------------------------------


def job_config(kind: str, *more: str) -> Any:
    return load_config(REPO / "params.yaml", [*DISTRIBUTED, f"kubeflow.job_kind={kind}", *more])


def test_trainjob_manifest(tmp_path: Path) -> None:
    cfg = job_config("trainjob", "kubeflow.jobs.service_account=trainer-sa", "kubeflow.stages.finetune.memory_limit=40Gi")
    name = jobs.job_name("finetune", "run-1/sms_spam")
    manifest = jobs.job_manifest(cfg, "finetune", ARGS, name)
    (read,) = schemas.load_kubectl(schemas.dump_yaml(manifest))  # as kubectl would send it
    assert read == manifest and schemas.manifest_errors(read) == []
    assert name == jobs.job_name("finetune", "run-1/sms_spam") != jobs.job_name("finetune", "run-1/trec") and len(name) < 40
    spec = manifest["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "unitask.cli", *ARGS]  # Trainer sets the PET_* rendezvous
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == (2, 4, kubeflow_settings(cfg).image_ref)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "32Gi"},
                                           "limits": {"memory": "40Gi", "nvidia.com/gpu": "4"}}  # one GPU per process
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in trainer["env"]}
    assert refs == {"MLFLOW_TRACKING_URI": "unitask-mlflow", "AWS_ACCESS_KEY_ID": "unitask-s3", "AWS_SECRET_ACCESS_KEY": "unitask-s3"}
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"][0]["name"] == "node"  # the torch-distributed runtime's
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["serviceAccountName"] == "trainer-sa"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "unitask-workspace"}} in pod["volumes"]
    assert {"name": "workspace", "mountPath": "/workspace"} in pod["containers"][0]["volumeMounts"]
    # the volumes and mounts are valid core objects too
    pod_check = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                 "spec": {**pod, "containers": [{**pod["containers"][0], "image": "x"}]}}  # fmt: skip
    assert schemas.kubernetes_errors(pod_check) == []


def test_pytorchjob_manifest() -> None:
    cfg = job_config("pytorchjob")
    manifest = jobs.job_manifest(cfg, "finetune", ARGS, "unitask-finetune-x")
    (read,) = schemas.load_kubectl(schemas.dump_yaml(manifest))
    assert read == manifest and schemas.manifest_errors(read) == []
    spec = manifest["spec"]
    assert spec["nprocPerNode"] == "4" and spec["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 0}
    replicas = spec["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)  # 2 nodes
    (container,) = replicas["Master"]["template"]["spec"]["containers"]
    assert container["name"] == "pytorch" and container["command"][:3] == ["torchrun", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    assert container["command"][3:] == ["-m", "unitask.cli", *ARGS]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    for replica in replicas.values():  # each pod template is a valid core PodTemplate
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": replica["template"]}
        assert schemas.kubernetes_errors(template) == []
    one_node = jobs.job_manifest(load_config(REPO / "params.yaml", ["kubeflow.job_kind=pytorchjob", "kubeflow.stages.pretrain.procs_per_node=1"]),
                                 "pretrain", ["pretrain"], "p")  # fmt: skip
    assert set(one_node["spec"]["pytorchReplicaSpecs"]) == {"Master"}


def test_job_validators_catch_planted_errors() -> None:
    def planted(kind: str, edit: Any) -> list[str]:
        manifest = jobs.job_manifest(job_config(kind), "finetune", ARGS, "j")
        edit(manifest["spec"])
        return schemas.manifest_errors(manifest)

    assert planted("trainjob", lambda s: s["trainer"].update(numNodes="2")) == ["TrainJob/j: TrainerV1alpha1Trainer.numNodes: Input should be a valid integer"]
    assert planted("trainjob", lambda s: s["trainer"].update(workingDir="/w")) == ["TrainJob/j: spec.trainer.workingDir: unknown field of TrainerV1alpha1Trainer"]
    assert planted("trainjob", lambda s: s["runtimeRef"].pop("name")) == ["TrainJob/j: TrainerV1alpha1RuntimeRef.name: Input should be a valid string"]  # required: None is not a string
    errors = planted("trainjob", lambda s: s["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
                     ["template"]["spec"]["template"]["spec"].update(containers=[{"name": "node", "image": "x"}]))  # fmt: skip
    assert errors == ["TrainJob/j: spec.runtimePatches.0.trainingRuntimeSpec.template.spec.replicatedJobs.0.template.spec.template.spec"
                      ".containers.0.image: unknown field of TrainerV1alpha1ContainerPatch"]  # a patch cannot change the image
    assert planted("pytorchjob", lambda s: s["pytorchReplicaSpecs"]["Worker"].update(replicas="1")) == [
        "PyTorchJob/j: spec.pytorchReplicaSpecs.Worker.replicas: '1' is not of type int"]  # fmt: skip
    assert planted("pytorchjob", lambda s: s["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].update(cmd=[])) == [
        "PyTorchJob/j: spec.pytorchReplicaSpecs.Master.template.spec.containers[0].cmd: unknown field of V1Container"]  # fmt: skip
    assert planted("pytorchjob", lambda s: s.update(nprocPerNode=4)) == ["PyTorchJob/j: spec.nprocPerNode: 4 is not of type str"]
    assert "Invalid value for `name`, must not be `None`" in planted(
        "pytorchjob", lambda s: s["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].pop("name"))[0]  # fmt: skip


def test_distributed_config(tmp_path: Path) -> None:
    from unitask.kubeflow.pods import pod

    kf = kubeflow_settings(load_config(REPO / "params.yaml"))
    assert kf.job_kind == "trainjob" and not any(pod(kf, s).distributed for s in ("pretrain", "finetune", "multitask", "fusion"))
    kf = kubeflow_settings(job_config("trainjob"))
    assert pod(kf, "finetune").distributed and pod(kf, "finetune").gpus_per_node == 4 and not pod(kf, "multitask").distributed
    params = write_project(tmp_path, {"t": classification_task("x.csv")})
    planted = kubeflow_settings(load_config(params, ["kubeflow.stages.evaluate.nodes=2"]))
    with pytest.raises(ConfigError, match=r"kubeflow.stages.evaluate: nodes and procs_per_node apply to pretrain, finetune, multitask, llm, fusion only"):
        pod(planted, "evaluate")
    with pytest.raises(ConfigError, match=r"kubeflow.job_kind: Input should be 'trainjob' or 'pytorchjob'"):
        kubeflow_settings(load_config(params, ["kubeflow.job_kind=mpijob"]))  # the driver validates its section
    with pytest.raises(ConfigError, match="not a training stage"):
        jobs.job_manifest(load_config(params), "evaluate", ["evaluate"], "e")


# ---- the launcher, against an in-process API server double ------------------------------------


class FakeApi:
    """CustomObjectsApi's three calls the launcher makes, over one namespace's objects; `states` are the
    status conditions each successive read returns (the controller's progress), after `hold` reads that
    return an object as it was stored."""

    def __init__(self, states: list[list[dict[str, str]]], existing: dict[str, Any] | None = None,
                 refuse: int | None = None, hold: int = 0) -> None:  # fmt: skip
        self.states, self.objects, self.calls, self.refuse, self.hold = list(states), dict(existing or {}), [], refuse, hold

    def _record(self, verb: str, group: str, plural: str) -> None:
        self.calls.append((verb, group, plural))
        if self.refuse:
            raise ApiException(status=self.refuse, reason={403: "Forbidden", 404: "Not Found"}[self.refuse])

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        self._record("create", group, plural)
        name = body["metadata"]["name"]
        if name in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[name] = copy.deepcopy(body)
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any]:
        self._record("get", group, plural)
        if name not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        obj = self.objects[name]
        if self.hold:
            self.hold -= 1
        elif self.states:
            obj["status"] = {"conditions": self.states.pop(0)}
        return copy.deepcopy(obj)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str, body: Any = None) -> Any:
        self._record("delete", group, plural)
        self.objects.pop(name)



def cond(kind: str, status: str = "True", **more: str) -> dict[str, str]:
    return {"type": kind, "status": status, **more}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def launch(api: FakeApi, manifest: dict[str, Any], timeout: float = 100.0) -> tuple[dict[str, Any], list[str], Clock]:
    lines: list[str] = []
    clock = Clock()
    done = jobs.launch(manifest, "team", api, timeout=timeout, poll_seconds=10, report=lines.append, clock=clock, sleep=clock.sleep)
    return done, lines, clock


def rbac_allows() -> set[tuple[str, str, str]]:
    role = schemas.load_kubectl((REPO / "components/k8s/rbac.yaml").read_text())[0]
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


@pytest.mark.parametrize("kind", ["trainjob", "pytorchjob"])
def test_launch_waits_for_success(kind: str) -> None:
    manifest = jobs.job_manifest(job_config(kind), "finetune", ARGS, "unitask-finetune-a")
    success = {"trainjob": "Complete", "pytorchjob": "Succeeded"}[kind]
    api = FakeApi([[], [cond("Created")], [cond("Created", "False"), cond("Running")], [cond("Running", "False"), cond(success)]])
    done, lines, clock = launch(api, manifest)
    assert _true(done) == [success] and api.objects["unitask-finetune-a"]["spec"] == manifest["spec"]
    plural = jobs.KINDS[kind][2]
    assert lines == [f"unitask: created {manifest['kind']} team/unitask-finetune-a", f"unitask: {manifest['kind']} team/unitask-finetune-a: pending",
                     f"unitask: {manifest['kind']} team/unitask-finetune-a: Created", f"unitask: {manifest['kind']} team/unitask-finetune-a: Running",
                     f"unitask: {manifest['kind']} team/unitask-finetune-a: {success}"]  # fmt: skip
    assert clock.now == 30  # three polls of 10 s
    assert {(v, g, p) for v, g, p in api.calls} <= {(v, g, p) for g, p, v in rbac_allows()} and (("create", jobs.KINDS[kind][0], plural) in api.calls)


def _true(obj: dict[str, Any]) -> list[str]:
    return [c["type"] for c in obj["status"]["conditions"] if c["status"] == "True"]


def test_launch_fails_the_step_when_the_job_fails() -> None:
    manifest = jobs.job_manifest(job_config("trainjob"), "finetune", ARGS, "unitask-finetune-b")
    api = FakeApi([[cond("Created")], [cond("Failed", reason="FailedJobs", message="jobset failed: node-0 exit code 1")]])
    with pytest.raises(UnitaskError) as err:
        launch(api, manifest)
    assert str(err.value) == (
        "kubeflow: TrainJob team/unitask-finetune-b failed: FailedJobs: jobset failed: node-0 exit code 1\n"
        "  fix: the nodes' logs: kubectl -n team logs -l jobset.sigs.k8s.io/jobset-name=unitask-finetune-b --all-containers --prefix --tail=200"
    )


def test_launch_times_out_and_deletes_the_job() -> None:
    manifest = jobs.job_manifest(job_config("pytorchjob"), "finetune", ARGS, "unitask-finetune-c")
    api = FakeApi([[cond("Created")]] * 20)
    with pytest.raises(UnitaskError, match=r"PyTorchJob team/unitask-finetune-c did not finish within 50 s \(last: Created\); deleted it"):
        launch(api, manifest, timeout=50)
    assert api.objects == {} and api.calls[-1] == ("delete", "kubeflow.org", "pytorchjobs")


def test_launch_follows_or_replaces_the_job_of_an_earlier_attempt() -> None:
    manifest = jobs.job_manifest(job_config("trainjob"), "finetune", ARGS, "unitask-finetune-d")
    running = {**copy.deepcopy(manifest), "status": {"conditions": [cond("Created")]}}
    api = FakeApi([[cond("Complete")]], existing={"unitask-finetune-d": running}, hold=1)
    done, lines, _ = launch(api, manifest)
    assert lines[0] == "unitask: following TrainJob team/unitask-finetune-d, created by an earlier attempt" and _true(done) == ["Complete"]
    assert [c[0] for c in api.calls].count("create") == 1

    failed = {**copy.deepcopy(manifest), "status": {"conditions": [cond("Failed", reason="x")]}}
    api = FakeApi([[cond("Complete")]], existing={"unitask-finetune-d": failed}, hold=1)
    done, lines, _ = launch(api, manifest)
    assert lines[0] == "unitask: replacing TrainJob team/unitask-finetune-d, which failed in an earlier attempt"
    assert [c[0] for c in api.calls] == ["create", "get", "delete", "get", "create", "get"] and _true(done) == ["Complete"]


@pytest.mark.parametrize(("status", "hint"), [(403, "components/k8s/rbac.yaml"), (404, "set kubeflow.job_kind=pytorchjob")])
def test_launch_explains_refusals(status: int, hint: str) -> None:
    manifest = jobs.job_manifest(job_config("trainjob"), "finetune", ARGS, "unitask-finetune-e")
    with pytest.raises(UnitaskError, match=f"TrainJob team/unitask-finetune-e: HTTP {status}") as err:
        launch(FakeApi([], refuse=status), manifest)
    assert hint in str(err.value)


def test_run_job_checks_the_manifest_before_creating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = job_config("trainjob", "kubeflow.jobs.timeout=30", "kubeflow.jobs.poll_seconds=1", "kubeflow.jobs.runtime_kind=TrainingRuntime")
    api = FakeApi([[cond("Complete")]])
    done = jobs.run_job(cfg, "finetune", ARGS, "unitask-finetune-f", namespace="team", api=api, report=lambda _: None)
    assert _true(done) == ["Complete"] and api.calls[0] == ("create", "trainer.kubeflow.org", "trainjobs")
    assert api.objects["unitask-finetune-f"]["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"

    build = jobs.job_manifest

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        manifest = build(*args, **kwargs)
        manifest["spec"]["trainer"]["numProcPerNode"] = "4"
        return manifest

    monkeypatch.setattr(jobs, "job_manifest", broken)
    api = FakeApi([[cond("Complete")]])
    with pytest.raises(UnitaskError, match=r"TrainJob unitask-finetune-f does not match its schema:\n  .*numProcPerNode: Input should be a valid integer"):
        jobs.run_job(cfg, "finetune", ARGS, "unitask-finetune-f", namespace="team", api=api)
    assert api.calls == []  # nothing reached the API server


# ---- the pipeline runs a distributed stage as a job ---------------------------------------------


class Artifact:
    """What kfp hands a component: a path, metadata, and (for Metrics) log_metric."""

    def __init__(self, path: Path) -> None:
        self.path, self.metadata = str(path), {}

    def log_metric(self, key: str, value: float) -> None:
        self.metadata[key] = value


class TrainerDouble(FakeApi):
    """A cluster whose Trainer runs the job's `torchrun -m unitask.cli ARGS` as one process, here, then
    marks it Complete: what the nodes would do, on the workspace the job mounts."""

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        created = super().create_namespaced_custom_object(group, version, namespace, plural, body)
        command = body["spec"]["trainer"]["command"]
        assert command[:3] == ["torchrun", "-m", "unitask.cli"] and body["spec"]["trainer"]["numNodes"] == 2
        assert main(command[3:]) == 0
        self.states.append([cond("Complete")])
        return created


def compiles_to_a_launcher(params: Path, step: str, volume: Path) -> None:
    """`params` compiles to a pipeline that kfp's protobufs accept, in which the distributed `step` (kfp's name: finetune-t) is a
    launching step on the workspace volume that asks for no GPU and no node of its own (the job's nodes do)."""
    out = params.parent / "compiled.yaml"
    assert main(["pipeline", "compile", "--params", str(params), "--output", str(out)]) == 0
    compiled = out.read_text()
    assert schemas.pipeline_errors(compiled) == []
    spec, platform = yaml.safe_load_all(compiled)
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][f"exec-{step}"]
    assert executor["pvcMount"][0]["mountPath"] == str(volume) and "nodeSelector" not in executor
    assert "accelerator" not in spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["resources"]


def test_a_distributed_finetune_runs_as_a_trainjob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`kubeflow.stages.finetune.nodes=2 x procs_per_node=4` compiles to a launching step on the
    workspace volume (no GPU of its own) and the component runs the fine-tune as a TrainJob there, waits
    for it, and exports what the job wrote: the same outputs as a fine-tune in the step itself."""
    import pandas as pd

    from unitask.kubeflow import runtime
    from unitask.kubeflow.project import pipeline_arguments

    rows = [{"text": f"example {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    (tmp_path / "data").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "data" / "t.csv", index=False)
    volume = tmp_path / "volume"
    volume.mkdir()
    params = write_project(
        tmp_path, {"t": classification_task("data/t.csv")},
        model={"backbone_config": {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                   "intermediate_size": 32, "max_position_embeddings": 64}, "max_length": 32},
        tracking={"uri": "sqlite:///mlflow/mlflow.db"},
        finetune={"max_steps": 2, "batch_size": 8, "bf16": False, "early_stopping_patience": None},
        kubeflow={"stages": {"finetune": {"nodes": 2, "procs_per_node": 4}}, "jobs": {"mount_path": str(volume)}},
    )  # fmt: skip
    compiles_to_a_launcher(params, "finetune-t", volume)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(params)
    arguments = pipeline_arguments(cfg, local=True)
    art = {name: Artifact(tmp_path / "artifacts" / name) for name in ("prepared", "m1", "encoder", "m2", "model", "data", "m3")}

    def step(stage: str, task: str | None, inputs: list[Artifact], outputs: dict[str, Artifact], metrics: Artifact) -> None:
        runtime.run_stage(stage, task, arguments["params"], arguments["seed"], "", inputs, outputs, metrics)

    step("prepare", "t", [], {"data": art["prepared"]}, art["m1"])
    step("pretrain", None, [art["prepared"]], {"model": art["encoder"]}, art["m2"])
    api = TrainerDouble([])
    monkeypatch.setattr(jobs, "custom_objects_api", lambda: api)
    monkeypatch.setattr(jobs, "current_namespace", lambda default="default": "team")
    step("finetune", "t", [art["prepared"], art["encoder"]], {"model": art["model"], "data": art["data"]}, art["m3"])
    assert [verb for verb, _, plural in api.calls if plural == "trainjobs"][:2] == ["create", "get"]
    assert (Path(art["model"].path) / cfg.finetune.output / "t" / "model.safetensors").is_file()
    report = Path(art["data"].path) / cfg.paths.reports / "finetune" / "t.json"
    assert art["m3"].metadata["test.accuracy"] == pytest.approx(json.loads(report.read_text())["test"]["accuracy"])
    assert list(volume.iterdir()) == []  # the job's workspace is removed afterwards
