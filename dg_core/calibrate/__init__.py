"""RFT calibration of a teacher: the distillability knob η .

- :mod:`~dg_core.calibrate.rewards`: ``r_task`` (the task scorer) and the across-tokenizer ``r_cal``.
- :mod:`~dg_core.calibrate.grpo`: the policy-gradient loss and the native loop (advantages: ``dg_core.base.advantages``)
  (``rollout_step`` → ``policy_step``).
- :mod:`~dg_core.calibrate.trl_engine`: the same objective on TRL's ``GRPOTrainer`` (``engine: trl``: several
  processes, vLLM rollouts).
- :mod:`~dg_core.calibrate.guards`: defences against reward hacking and the release gate.
- :mod:`~dg_core.calibrate.card`: the calibration card (JSON + Markdown).
- :mod:`~dg_core.calibrate.stage`: the ``calibrate`` stage.
"""

from dg_core.base.advantages import combine_advantages, group_standardize
from dg_core.calibrate.grpo import CalibrationSettings, clipped_pg_loss, k3_kl
from dg_core.calibrate.rewards import CalibrationReward, Reward, RewardInputs, TaskReward

__all__ = [
    "CalibrationReward",
    "CalibrationSettings",
    "Reward",
    "RewardInputs",
    "TaskReward",
    "clipped_pg_loss",
    "combine_advantages",
    "group_standardize",
    "k3_kl",
]
