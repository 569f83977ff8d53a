"""Every cluster artifact checked against the schemas its readers publish, parsed as the cluster parses it.

- `load_kubectl`: YAML read the way kubectl reads it (sigs.k8s.io/yaml turns YAML into JSON with YAML 1.2
  scalars: an unquoted `1e-05` is a number), via ruamel.yaml; `dump_yaml` writes YAML that reads back the
  same under YAML 1.1 (PyYAML) and 1.2 (kubectl, ruamel).
- `kubernetes_errors`: core objects (Job, Secret, Role, ...) with `kubernetes-validate`, strict (unknown
  fields are errors), at `K8S_VERSION`.
- `katib_errors`, `trainjob_errors`: Katib `Experiment` and Trainer v2 `TrainJob` read by the pydantic models
  Katib and Trainer publish (`kubeflow_katib_api`, `kubeflow_trainer_api`, both installed with the
  `kubeflow` SDK) through their own `from_dict`: strict types (StrictStr, StrictInt) and required fields;
  unknown fields, which `from_dict` drops, are refused by a walk of the same models. The older `kubeflow-katib` SDK's models are not
  used: they coerce 1e-05 to '1e-05' and drop unknown keys, so they cannot see the bug Katib's webhook sees.
- `pytorchjob_errors`: Training Operator v1 `PyTorchJob` with `kubeflow-training`'s OpenAPI models
  (legacy generator: every key and primitive type is checked here against their `openapi_types`).
- `pipeline_errors`: a compiled pipeline with kfp's own protobufs (`PipelineSpec`, `PlatformSpec` and each
  executor's kfp-kubernetes `KubernetesExecutorConfig`), unknown fields refused.

Each `*_errors` returns a list of messages (empty: accepted); `check` raises them as one UnitaskError.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml

from unitask.errors import UnitaskError

K8S_VERSION = "1.37.0"  # the newest Kubernetes release kubernetes-validate 1.37 knows


# ---- YAML as kubectl reads it ----------------------------------------------------------------


def load_kubectl(text: str) -> list[Any]:
    """The documents of `text` as kubectl sends them to the API server (YAML 1.2 scalars), empty ones dropped."""
    from ruamel.yaml import YAML

    return [doc for doc in YAML(typ="safe", pure=True).load_all(text) if doc is not None]


class _Dumper(yaml.SafeDumper):
    """PyYAML quotes strings that YAML 1.1 would misread; this also quotes those YAML 1.2 would (1e-05)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    from ruamel.yaml.nodes import ScalarNode
    from ruamel.yaml.resolver import VersionedResolver

    if VersionedResolver(version=(1, 2)).resolve(ScalarNode, value, (True, False)) != "tag:yaml.org,2002:str":
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_str(value)


_Dumper.add_representer(str, _str)


def dump_yaml(obj: Any, *more: Any) -> str:
    """YAML of one or more documents whose every scalar keeps its type under YAML 1.1 and 1.2."""
    return yaml.dump_all([obj, *more], Dumper=_Dumper, sort_keys=False)


# ---- the checks ------------------------------------------------------------------------------


def kubernetes_errors(obj: dict[str, Any], version: str = K8S_VERSION) -> list[str]:
    """A core Kubernetes object against the OpenAPI schema of `version`, unknown fields refused."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(root)"
        return [f"{obj.get('kind')}/{_name(obj)}: {where}: {exc.message}"]
    except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
        return [f"{obj.get('kind')}/{_name(obj)}: no schema: {exc}"]
    return []


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _sdk_errors(model: Any, obj: dict[str, Any]) -> list[str]:
    """`obj` read by the SDK's own `from_dict` (strict field types, required fields, oneOf quantities),
    after a walk of the model tree for unknown keys (which `from_dict` would drop silently)."""
    from pydantic import ValidationError

    errors = [f"{obj.get('kind')}/{_name(obj)}: {e}" for e in _unknown_keys(model, obj, "")]
    try:
        model.from_dict(obj)
    except ValidationError as exc:
        errors += [f"{obj.get('kind')}/{_name(obj)}: {exc.title}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return errors


def _unknown_keys(annotation: Any, value: Any, where: str) -> list[str]:
    from pydantic import BaseModel

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return next((_unknown_keys(a, value, where) for a in args if a is not type(None)), [])
    if origin is list and isinstance(value, list):
        return [e for i, item in enumerate(value) for e in _unknown_keys(args[0], item, f"{where}.{i}")]
    if origin is dict and isinstance(value, dict):
        return [e for k, item in value.items() for e in _unknown_keys(args[1], item, f"{where}.{k}")]
    if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or not isinstance(value, dict):
        return []
    fields = annotation.model_fields
    if "actual_instance" in fields:  # a oneOf (Quantity, IntOrString): a scalar, checked by from_dict
        return []
    by_key = {field.alias or name: field.annotation for name, field in fields.items()}
    errors = [f"{(where + '.' + k).lstrip('.')}: unknown field of {annotation.__name__}" for k in value if k not in by_key]
    for key, item in value.items():
        if key in by_key:
            errors += _unknown_keys(by_key[key], item, f"{where}.{key}")
    return errors


def _header_errors(obj: dict[str, Any], api_version: str, kind: str) -> list[str]:
    if (obj.get("apiVersion"), obj.get("kind")) != (api_version, kind):
        return [f"expected apiVersion {api_version} kind {kind}, got {obj.get('apiVersion')} {obj.get('kind')}"]
    return []


def katib_errors(obj: dict[str, Any]) -> list[str]:
    """A Katib Experiment (kubeflow.org/v1beta1) with Katib's models, and its trialSpec by kind."""
    from kubeflow_katib_api.models import V1beta1Experiment

    errors = _header_errors(obj, "kubeflow.org/v1beta1", "Experiment") or _sdk_errors(V1beta1Experiment, obj)
    spec = obj.get("spec") or {}
    template = spec.get("trialTemplate") or {}
    trial = template.get("trialSpec")
    if isinstance(trial, dict):
        errors += [f"trialSpec: {e}" for e in manifest_errors(trial)]
        errors += _trial_parameter_errors(spec, template)
    return errors


def _trial_parameter_errors(spec: dict[str, Any], template: dict[str, Any]) -> list[str]:
    """What Katib's webhook checks beyond the schema: every ${trialParameters.X} declared and used."""
    text = yaml.safe_dump(template["trialSpec"])
    declared = {p.get("name") for p in template.get("trialParameters") or []}
    used = set(re.findall(r"\$\{trialParameters\.([^}]+)\}", text))
    names = {p.get("name") for p in spec.get("parameters") or []}
    errors = [f"trialSpec uses undeclared trialParameters.{n}" for n in sorted(used - declared)]
    errors += [f"trialParameters.{n} is not used in trialSpec" for n in sorted(declared - used)]
    for p in template.get("trialParameters") or []:
        ref = str(p.get("reference", ""))
        if ref not in names and not ref.startswith("${trialSpec."):
            errors.append(f"trialParameters.{p.get('name')}: reference {ref!r} names no parameter")
    return errors


def trainjob_errors(obj: dict[str, Any]) -> list[str]:
    """A Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) with Trainer's models."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return _header_errors(obj, "trainer.kubeflow.org/v1alpha1", "TrainJob") or _sdk_errors(TrainerV1alpha1TrainJob, obj)


def pytorchjob_errors(obj: dict[str, Any]) -> list[str]:
    """A Training Operator v1 PyTorchJob (kubeflow.org/v1) with kubeflow-training's models."""
    return _header_errors(obj, "kubeflow.org/v1", "PyTorchJob") or [
        f"PyTorchJob/{_name(obj)}: {e}" for e in _openapi_errors("KubeflowOrgV1PyTorchJob", obj, "")
    ]


_PRIMITIVES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "object": lambda v: True,
    "datetime": lambda v: isinstance(v, str),
}


def _openapi_class(name: str) -> Any:
    import kubernetes.client.models as core

    import kubeflow.training.models as training

    return getattr(training, name, None) or getattr(core, name)


def _openapi_errors(type_name: str, value: Any, where: str) -> list[str]:
    """`value` against the legacy OpenAPI type `type_name`: keys, primitive types, required fields."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, item in enumerate(value) for e in _openapi_errors(type_name[5:-1], item, f"{where}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for k, v in value.items() for e in _openapi_errors(inner, v, f"{where}.{k}")]
    if type_name in _PRIMITIVES:
        return [] if _PRIMITIVES[type_name](value) else [f"{where}: {value!r} is not of type {type_name}"]
    if not isinstance(value, dict):
        return [f"{where}: expected an object ({type_name})"]
    cls = _openapi_class(type_name)
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    errors = [f"{where}.{k}: unknown field of {type_name}" for k in value if k not in by_key]
    for key, item in value.items():
        if key in by_key and item is not None:
            errors += _openapi_errors(cls.openapi_types[by_key[key]], item, f"{where}.{key}" if where else key)
    if not errors:
        try:  # the models' own checks: required fields, enums
            cls(**{by_key[k]: v for k, v in value.items()})
        except (ValueError, TypeError) as exc:
            errors.append(f"{where or '(root)'}: {exc}")
    return errors


_BY_KIND: dict[tuple[str, str], Callable[[dict[str, Any]], list[str]]] = {
    ("kubeflow.org/v1beta1", "Experiment"): katib_errors,
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): trainjob_errors,
    ("kubeflow.org/v1", "PyTorchJob"): pytorchjob_errors,
}


def manifest_errors(obj: dict[str, Any]) -> list[str]:
    """Any object we write: by apiVersion/kind, a Kubeflow schema or Kubernetes' own."""
    if not isinstance(obj, dict):
        return [f"not a Kubernetes object: {type(obj).__name__}"]
    check = _BY_KIND.get((obj.get("apiVersion"), obj.get("kind")))
    if check is not None:
        return check(obj)
    if str(obj.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        return []  # read by kustomize, not the API server
    return kubernetes_errors(obj)


def pipeline_errors(text: str) -> list[str]:
    """A compiled pipeline YAML: PipelineSpec, then (if present) PlatformSpec and every executor's
    KubernetesExecutorConfig, each parsed by json_format with unknown fields refused."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = load_kubectl(text)
    if not docs or len(docs) > 2:
        return [f"expected a PipelineSpec and at most one PlatformSpec, got {len(docs)} documents"]
    errors = []

    def parse(doc: Any, message: Any, what: str) -> Any:
        try:
            return json_format.ParseDict(doc, message, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            errors.append(f"{what}: {exc}")
            return None

    parse(docs[0], pipeline_spec_pb2.PipelineSpec(), "PipelineSpec")
    if len(docs) == 2:
        platform = parse(docs[1], pipeline_spec_pb2.PlatformSpec(), "PlatformSpec")
        if platform is not None:
            for name, single in platform.platforms.items():
                for executor, config in single.deployment_spec.executors.items():
                    as_dict = json_format.MessageToDict(config)
                    parse(as_dict, kubernetes_executor_config_pb2.KubernetesExecutorConfig(), f"{name} executor {executor}")
    return errors


def check(errors: list[str], what: str) -> None:
    """Raise `errors` (from a `*_errors` function) as one UnitaskError about `what`."""
    if errors:
        raise UnitaskError(f"{what} does not match its schema:\n  " + "\n  ".join(errors),
                           hint="this is a unitask bug or an edited manifest; the messages name each field")  # fmt: skip


def file_errors(text: str) -> list[str]:
    """Every object of a manifest file (YAML read as kubectl reads it)."""
    return [e for doc in load_kubectl(text) for e in manifest_errors(doc)]

