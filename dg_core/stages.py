"""The stages `dguard` runs: one module each, exposing ``Config`` (a StageConfig) and ``run(cfg) -> dict``.

Modules are imported lazily so ``dguard --help`` stays fast and a stage's heavy imports load only when used.
The returned dict is the stage's summary: the CLI prints it as JSON, components turn it into KFP outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from dg_core.errors import DGError


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
            "zoo",
            "dg_core.models.zoo_stage",
            "Build the offline tiny-model zoo (teacher, proxy, students) into the store.",
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
