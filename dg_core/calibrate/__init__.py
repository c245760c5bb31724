"""RFT calibration of a teacher: the distillability knob η (see DESIGN.md §2).

- :mod:`~dg_core.calibrate.rewards`: ``r_task`` (the task scorer) and the across-tokenizer ``r_cal``.
- :mod:`~dg_core.calibrate.grpo`: the group-relative policy-gradient loop and its pure math.
- :mod:`~dg_core.calibrate.guards`: defences against reward hacking and the release gate.
- :mod:`~dg_core.calibrate.card`: the calibration card (JSON + Markdown).
- :mod:`~dg_core.calibrate.stage`: the ``calibrate`` stage.
"""

from dg_core.calibrate.grpo import (
    CalibrationSettings,
    clipped_pg_loss,
    combine_advantages,
    group_standardize,
    k3_kl,
)
from dg_core.calibrate.rewards import CalibrationReward, TaskReward

__all__ = [
    "CalibrationReward",
    "CalibrationSettings",
    "TaskReward",
    "clipped_pg_loss",
    "combine_advantages",
    "group_standardize",
    "k3_kl",
]
