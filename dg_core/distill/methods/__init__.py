"""The attack methods, one file each (its config, its batch, its loss): how a student learns from a teacher.

- :mod:`.sft`: sequence-level KD on the teacher's text (black-box API).
- :mod:`.kd`: token-level KD on stored top-k log-probs (shared tokenizer).
- :mod:`.gkd`: on-policy KD, the teacher in memory scoring student samples (shared tokenizer).
- :mod:`.xtok`: cross-tokenizer KD on character-aligned spans.

Every method except sft may add ``ce_weight`` x cross-entropy on the sequences it trains on.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from dg_core.distill.methods import gkd, kd, sft, xtok
from dg_core.distill.methods.base import Context, DistillBatch, Method, config_of, same_vocabulary
from dg_core.errors import DGError

MODULES: dict[str, ModuleType] = {"sft": sft, "kd": kd, "gkd": gkd, "xtok": xtok}
METHODS = tuple(MODULES)
XTOK_LOSSES = xtok.XTOK_LOSSES

__all__ = ["METHODS", "MODULES", "XTOK_LOSSES", "Context", "DistillBatch", "Method", "build", "same_vocabulary"]


def get(name: str) -> ModuleType:
    if name not in MODULES:
        raise DGError(f"distill method {name!r}: expected one of {', '.join(METHODS)}")
    return MODULES[name]


def build(name: str, options: Any, ctx: Context) -> Method:
    """Method ``name`` with its config read from the same-named fields of ``options`` (the stage config)."""
    mod = get(name)
    return mod.METHOD(config_of(mod.Config, options), ctx)
