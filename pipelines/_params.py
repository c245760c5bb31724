"""Every pipeline parameter's default and Kubeflow UI help, taken from the stage Config field it sets.

A parameter that sets a stage field (``eta`` is ``calibrate.eta``, ``attack_steps`` is ``distill.steps``) is
declared here as :class:`Field`; its default and its help text are read from that field of the stage's
``Config`` in ``dg_core`` (the one place a stage parameter lives), so a pipeline can neither restate nor
contradict it. Only where a pipeline must start from another default (the offline zoo teacher instead of "no
teacher") does a ``Field`` give ``default=`` with its reason, which the UI shows. Parameters that belong to the
pipeline itself (placement, credentials, resources, the attack suite's shape) are :class:`Own` entries here.

Pipelines apply it with :func:`parameters`, under ``@dsl.pipeline``: their signatures hold names and types
only, and the decorator fills in the defaults (``__signature__``) and the ``Args:`` docstring kfp turns into the
``description`` of each input in the compiled IR. Defaults are generated, not checked after the fact, so the
restated literals disappear; ``tests/test_params.py`` still compares every compiled parameter with its stage
field, so a stale compiled file or a hand edit fails too.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from dataclasses import dataclass
from typing import Any

from components._common import IMAGE, IMAGE_CUDA
from dg_core.errors import DGError

_SAME: Any = object()


@dataclass(frozen=True)
class Field:
    """A pipeline parameter that sets field ``field`` of stage ``stage``'s Config."""

    stage: str
    field: str
    default: Any = _SAME
    why: str = ""

    def __post_init__(self) -> None:
        if (self.default is not _SAME) != bool(self.why):
            raise DGError(f"pipeline parameter for {self.stage}.{self.field}: a changed default needs its reason")


@dataclass(frozen=True)
class Own:
    """A parameter of the pipeline itself; ``default`` _SAME marks an input of a sub-pipeline (no default)."""

    help: str
    default: Any = _SAME


def stage_field(stage: str, name: str) -> dataclasses.Field:
    """The dataclass field ``name`` of stage ``stage``'s Config (imports the stage module)."""
    from dg_core.stages import get_stage

    cfg = get_stage(stage).load().Config
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if name not in fields:
        raise DGError(f"stage {stage!r} has no config field {name!r}")
    return fields[name]


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise DGError(f"config field {f.name!r} has no default")


def stage_default(stage: str, name: str) -> Any:
    """Default of a stage Config field (for the few literal arguments a pipeline passes to a component)."""
    return field_default(stage_field(stage, name))


_RES = "a Kubernetes quantity."

# fmt: off
PARAMS: dict[str, Field | Own] = {
    # -- inputs and data
    "teacher": Field("calibrate", "teacher", "zoo:teacher",
                     "the offline zoo teacher, so a run needs no model of its own"),
    "proxies": Field("calibrate", "proxies"),
    "student": Field("diagnose", "student", "zoo:student-gpt2", "the offline zoo student (another tokenizer)"),
    "task": Field("prep", "task"),
    "source": Field("prep", "source"),
    "data_seed": Field("prep", "seed"),
    "prep_options": Own("Further fields of `dguard prep` (e.g. {n: 400}); see the prep stage's --help.", {}),
    "teacher_sft_steps": Own("Bootstrap SFT steps of the teacher before calibration (0: use it as given).", 0),
    "teacher_sft_options": Own("Further fields of `dguard train` for the bootstrap SFT.", {}),
    # -- calibration (the knob)
    "eta": Field("calibrate", "eta"),
    "beta": Field("calibrate", "beta"),
    "calibrate_steps": Field("calibrate", "steps"),
    "group_size": Field("calibrate", "group_size"),
    "lr": Field("calibrate", "lr"),
    "calibrate_seed": Field("calibrate", "seed"),
    "calibrate_options": Own("Further fields of `dguard calibrate` (guards, LoRA rank, normalisation...).", {}),
    # -- evaluation
    "eval_split": Field("evaluate", "split"),
    "eval_limit": Field("evaluate", "limit", 64, "64 held-out examples keep each of the many evaluations short"),
    "eval_options": Own("Further fields of `dguard evaluate` (k, temperature, max_new_tokens...).", {}),
    # -- the attack suite
    "attack_students": Own("Probe students of the attack suite (zoo:<name> or model references).",
                           ["zoo:student-llama", "zoo:student-gpt2"]),
    "attack_suite": Own("Attack methods (sft, kd, gkd, xtok); each student is attacked with each.", ["sft"]),
    "attack_seeds": Own("Seeds per (student, method): independent students; 3+ for a release decision.", 1),
    "attack_steps": Field("distill", "steps"),
    "attack_samples": Field("distill", "n_samples"),
    "attack_max_new_tokens": Field("distill", "max_new_tokens"),
    "attack_batch_size": Field("distill", "batch_size"),
    "attack_lr": Field("distill", "lr"),
    "attack_limit": Field("distill", "limit"),
    "attack_options": Own("Further fields of `dguard distill` for every attack (temperature, topk, lora...).", {}),
    # -- the release gate and publishing
    "min_retention": Field("gate", "min_retention"),
    "max_transfer": Field("gate", "max_transfer"),
    "min_transfer": Field("gate", "min_transfer"),
    "gate_aggregate": Field("gate", "aggregate"),
    "min_seeds": Field("gate", "min_seeds"),
    "publish": Own("Publish the calibrated model (with its card) when the gate passes.", True),
    "publish_to": Field("publish", "dest"),
    "releases_prefix": Field("publish", "releases_prefix", "s3://models/releases",
                             "the bucket layout the chart's recurring run watches"),
    "hardened_prefix": Field("publish", "hardened_prefix", "s3://models/hardened",
                             "the bucket layout the chart's recurring run publishes to"),
    "retry_rejected": Own("Harden again the releases whose last attempt was rejected.", False),
    # -- diagnose
    "limit": Field("diagnose", "n_examples"),
    "diagnose_options": Own("Further fields of `dguard diagnose` (ks, thresholds, n_samples...).", {}),
    # -- where it runs
    "store_root": Own("Store root under which every stage publishes (s3://bucket/prefix or file://).", "s3://dguard"),
    "s3_secret": Own("Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (optional: IRSA works without).",
                     "dguard-s3"),
    "env_config_map": Own("ConfigMap with the S3 endpoint and Pushgateway settings (optional).", "dguard-env"),
    "image": Own("Image of the CPU tasks (a mirror registry needs no recompile).", IMAGE),
    "gpu_image": Own("Image of the GPU tasks (the CUDA image).", IMAGE_CUDA),
    "accelerator_type": Own("Accelerator resource of the GPU tasks.", "nvidia.com/gpu"),
    "accelerator_count": Own("Accelerators per GPU task (> 1: the stage runs one process per accelerator).", 1),
    "num_nodes": Own("Nodes per calibrate/distill task (> 1: it runs as a Kubeflow Trainer TrainJob, "
                     "accelerator_count GPUs per node; needs the Trainer, see the chart README).", 1),
    "trainer_runtime": Own("Kubeflow Trainer runtime of those TrainJobs.", "torch-distributed"),
    "gpu_node_selector": Own("Node selector of the GPU tasks, e.g. {nvidia.com/gpu.product: H100}.", {}),
    "gpu_tolerations": Own("Tolerations of the GPU tasks (Kubernetes toleration objects).", []),
    "light_cpu_request": Own(f"CPU request of the light tasks (pin, plan, prep, report, gate, publish); {_RES}",
                             "500m"),
    "light_cpu_limit": Own(f"CPU limit of the light tasks; {_RES}", "2"),
    "light_memory_request": Own(f"Memory request of the light tasks; {_RES}", "1Gi"),
    "light_memory_limit": Own(f"Memory limit of the light tasks; {_RES}", "4Gi"),
    "gpu_cpu_request": Own(f"CPU request of the GPU tasks (train, calibrate, distill, evaluate, diagnose); {_RES}",
                           "4"),
    "gpu_cpu_limit": Own(f"CPU limit of the GPU tasks; {_RES}", "16"),
    "gpu_memory_request": Own(f"Memory request of the GPU tasks; {_RES}", "24Gi"),
    "gpu_memory_limit": Own(f"Memory limit of the GPU tasks; {_RES}", "64Gi"),
}

#: Inputs of the sub-pipelines only (wired by the parent, never set by a user).
INTERNAL: dict[str, Own] = {
    "attacks": Own("Attack items from plan-attacks: {student_name, student, method, seed, reinit}."),
    "original": Own("Pinned reference of the original (bootstrapped) teacher."),
    "calibrated": Own("Pinned reference of the calibrated teacher."),
    "calibration": Own("Pinned reference of the calibration card."),
    "dataset": Own("Pinned reference of the prepared dataset."),
    "teacher_original": Own("Evaluation record of the original teacher."),
    "teacher_calibrated": Own("Evaluation record of the calibrated teacher."),
    "release": Own("The release this run hardens (provenance and twin naming); '' for none."),
    "releases": Own("Pending releases from list-releases: {ref, ...} each."),
    "publish_model": Own("Publish the calibrated model when the gate passes."),
}
# fmt: on


def describe(name: str) -> str:
    """UI help of pipeline parameter ``name``."""
    spec = PARAMS.get(name) or INTERNAL.get(name)
    if spec is None:
        raise DGError(f"pipeline parameter {name!r} is not declared in pipelines/_params.py")
    if isinstance(spec, Own):
        return spec.help
    f = stage_field(spec.stage, spec.field)
    text = f"{f.metadata.get('help', '')} [{spec.stage}.{spec.field}]"
    if spec.default is not _SAME:
        text += f" Pipeline default {spec.default!r} (stage default {field_default(f)!r}): {spec.why}."
    return text


def default(name: str) -> Any:
    """Default of pipeline parameter ``name`` (a fresh copy: KFP takes literal lists and dicts)."""
    spec = PARAMS.get(name)
    if spec is None:
        raise DGError(f"pipeline parameter {name!r} has no default: declare it in pipelines/_params.py PARAMS")
    if isinstance(spec, Field):
        value = field_default(stage_field(spec.stage, spec.field)) if spec.default is _SAME else spec.default
    else:
        if spec.default is _SAME:
            raise DGError(f"pipeline parameter {name!r} has no default (it is an input of a sub-pipeline)")
        value = spec.default
    return copy.deepcopy(value)


def parameters(func: Any = None, *, defaults: bool = True) -> Any:
    """Give ``func``'s parameters their defaults (unless ``defaults=False``: a sub-pipeline) and their UI help.

    Put it under ``@dsl.pipeline``. The function's own docstring stays as the pipeline description.
    """

    def wrap(fn: Any) -> Any:
        sig = inspect.signature(fn)
        params, lines = [], []
        for p in sig.parameters.values():
            if p.default is not inspect.Parameter.empty:
                raise DGError(f"{fn.__name__}({p.name}=...): defaults come from pipelines/_params.py, not the source")
            if defaults:
                p = p.replace(default=default(p.name))
            params.append(p)
            lines.append(f"    {p.name}: {' '.join(describe(p.name).split())}")
        doc = inspect.getdoc(fn) or fn.__name__
        fn.__doc__ = f"{doc}\n\nArgs:\n" + "\n".join(lines) + "\n"
        fn.__signature__ = sig.replace(parameters=params)
        return fn

    return wrap(func) if func is not None else functools.partial(parameters, defaults=defaults)
