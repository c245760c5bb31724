"""The stages `dguard` runs: one module each, exposing ``Config`` (a StageConfig) and ``run(cfg) -> dict``.

Modules are imported lazily so ``dguard --help`` stays fast and a stage's heavy imports load only when used.
The returned dict is the stage's summary: the CLI prints it as JSON, components turn it into KFP outputs.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dg_core import store
from dg_core.config import from_dict, load_config, merge_overrides
from dg_core.errors import DGError, redact

log = logging.getLogger("dguard")


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    summary: str

    def load(self) -> ModuleType:
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name and self.module.startswith(e.name):
                raise DGError(f"stage '{self.name}' is not installed in this build ({self.module})") from None
            raise
        return mod


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "zoo", "dg_core.models.zoo", "Build the offline tiny-model zoo (teacher, proxy, students) into the store."
        ),
        Stage("prep", "dg_core.data.prep", "Load, validate, deduplicate and split a task dataset; publish it."),
        Stage(
            "train",
            "dg_core.distill.train_stage",
            "Supervised fine-tuning on a dataset's references (bootstraps zoo models).",
        ),
        Stage(
            "diagnose",
            "dg_core.traps.diagnose",
            "Measure distillation traps for a teacher/student pair and write reports.",
        ),
        Stage("distill", "dg_core.distill.stage", "Distill a probe student from a teacher (sft, kd, gkd, xtok)."),
        Stage("evaluate", "dg_core.evaluate", "Accuracy of a model on a prepared dataset, with bootstrap CIs."),
        Stage("calibrate", "dg_core.calibrate.stage", "RFT calibration of a teacher: the distillability knob (eta)."),
        Stage("attack", "dg_core.distill.suite", "Run the attack suite of probe students against a teacher."),
        Stage("report", "dg_core.report", "Trade-off table, plots and HTML report from stage outputs."),
        Stage("gate", "dg_core.gate", "Release gate: retention and transfer thresholds for a calibrated teacher."),
        Stage("publish", "dg_core.publish", "Publish a gated, hardened model with its calibration card."),
    )
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise DGError(f"unknown stage {name!r}: expected one of {', '.join(STAGES)}")
    return STAGES[name]


def run_stage(
    name: str,
    values: Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    config_path: str | None = None,
    num_processes: int = 1,
    strategy: str = "ddp",
    trainjob: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build stage ``name``'s Config and run it: what the CLI, every component and the benchmarks call.

    The config comes from ``values`` (a mapping: how KFP parameters arrive) or else from the ``name`` section of
    the YAML file ``config_path``, then ``overrides`` apply (``key=value`` strings from a command line, or a
    mapping of free-form options); either way it is validated the same, and logged with its secrets masked.
    With ``num_processes > 1`` (a task holding several GPUs) the stage runs in that many processes with the
    packaged ``strategy`` config (:mod:`dg_core.launch`); with ``trainjob`` (keyword arguments of
    :func:`dg_core.launch.trainjob.run_stage`: num_nodes, gpus_per_node, runtime, image, ...) it runs as a Kubeflow
    Trainer TrainJob and this process only follows it. Either way rank 0's summary is the result.
    """
    mod = get_stage(name).load()
    if isinstance(overrides, Mapping):
        values, overrides = {**(values or {}), **overrides}, ()
    if values is None:
        cfg = load_config(mod.Config, config_path, overrides, section=name)
    elif config_path:
        raise DGError(f"stage {name}: got both config values and a config file {config_path!r}; expected one")
    else:
        cfg = from_dict(mod.Config, merge_overrides(dict(values), overrides))
    log.info("%s config: %s", name, json.dumps(redact(cfg.to_dict()), default=str, sort_keys=True))
    if trainjob:
        from dg_core.launch import trainjob as tj

        return tj.run_stage(name, cfg.to_dict(), **trainjob)
    if num_processes > 1:
        from dg_core import launch

        return launch.run_stage(name, cfg.to_dict(), num_processes, strategy=strategy)
    return mod.run(cfg)


def output_uri(kind: str, params: Mapping[str, Any], *, root: str | None = None, label: str = "") -> str:
    """Where a stage publishes unless told: ``<root>/<kind>/[<label>-]<key>``, the one naming scheme.

    ``key`` is a short hash of ``kind`` and ``params``, so the same inputs land in the same place (a restarted
    stage finds its checkpoint, a finished one its result, KFP reruns overwrite nothing else) and different
    inputs never collide. ``label`` is a readable prefix (calibrate: ``<teacher>-eta<eta>``); components name
    their kind ``runs/<stage>``; ``root`` defaults to :func:`dg_core.store.default_root`.
    """
    body = json.dumps({"kind": kind, **params}, sort_keys=True, default=str)
    key = hashlib.sha256(body.encode()).hexdigest()[:16]
    return store.join(root or store.default_root(), kind, f"{label}-{key}" if label else key)
