"""The one rule for the knob's direction: what a calibration with a given η is for.

η < 0 rewards correct outputs that surprise small models, so students learn less: **undistillable** (a release
that resists cloning). η > 0 rewards correct outputs small models find likely: **distillable** (better KD).
η = 0 is plain RFT: the **control**, which shows what RFT alone does to students, so it makes neither claim.

The card, the gate, the report, the components and the pipelines all take the direction from here, so an η = 0
run is never labelled or gated as undistillable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from dg_core.errors import DGError

UNDISTILLABLE = "undistillable"
CONTROL = "control"
DISTILLABLE = "distillable"
DIRECTIONS = (UNDISTILLABLE, CONTROL, DISTILLABLE)


def direction_of(eta: float) -> str:
    """The direction a calibration with knob value ``eta`` is for."""
    eta = float(eta)
    if not math.isfinite(eta):
        raise DGError(f"eta: got {eta}, expected a finite number")
    return UNDISTILLABLE if eta < 0 else DISTILLABLE if eta > 0 else CONTROL


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise DGError(f"direction: got {direction!r}, expected one of {', '.join(DIRECTIONS)}")
    return direction


def worst_attack(direction: str, transfers: Mapping[str, float]) -> str:
    """The attack that decides: the one students learn most from (undistillable), least from (distillable), or,
    for the control, the one furthest from transfer 1 (ratio-wise)."""
    check_direction(direction)
    if not transfers:
        raise DGError("no transfers to choose the worst attack from")
    if direction == UNDISTILLABLE:
        return max(transfers, key=transfers.__getitem__)
    if direction == DISTILLABLE:
        return min(transfers, key=transfers.__getitem__)
    return max(transfers, key=lambda k: abs(math.log(transfers[k])) if transfers[k] > 0 else math.inf)
