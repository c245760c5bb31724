"""GRPO advantages: each reward standardised within its group, and the calibration reward gated by correctness.

Both calibration engines (native and TRL) compute ``A = Â_task + η·Â_cal`` with these functions, so they optimise
the same objective; the gate (r_cal only among correct samples) is the guard against the knob being hacked.
"""

from __future__ import annotations

import torch

from dg_core.errors import DGError

CAL_GATES = ("correct", "multiply", "none")


def group_standardize(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``(r − mean_group) / (std_group + eps)`` per row of a ``[groups, G]`` tensor.

    With ``mask``, statistics use the masked-in entries only and masked-out entries get 0; a group with fewer
    than two entries (or no spread) carries no signal and gets 0. Population std (ddof=0).
    """
    r = rewards.float()
    m = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    mf = m.float()
    n = mf.sum(-1, keepdim=True)
    mean = (r * mf).sum(-1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) ** 2) * mf).sum(-1, keepdim=True) / n.clamp(min=1)
    std = var.sqrt()
    out = (r - mean) / (std + eps) * mf
    return torch.where((n >= 2) & (std > 0), out, torch.zeros_like(out))


def combine_advantages(a_task: torch.Tensor, a_cal: torch.Tensor, eta: float) -> torch.Tensor:
    """``A = Â_task + η·Â_cal`` — η is the knob: > 0 distillable, < 0 undistillable, 0 plain RFT."""
    return a_task + eta * a_cal


def gated_cal_advantage(
    r_cal: torch.Tensor, r_task: torch.Tensor, how: str = "correct", eps: float = 1e-6
) -> torch.Tensor:
    """Group-standardised calibration advantage ``[groups, G]``, gated by task correctness.

    - ``correct``: standardise r_cal among the correct samples of each group only (``r_task >= 1``); incorrect
      samples get 0, and a group with fewer than two correct samples gets 0 throughout.
    - ``multiply``: standardise over the whole group, then multiply by ``r_task`` (partial credit scales it).
    - ``none``: plain group standardisation (the paper's objective; open to hacking).
    """
    if r_cal.shape != r_task.shape or r_cal.dim() != 2:
        raise DGError(f"gated_cal_advantage: r_cal {tuple(r_cal.shape)} and r_task {tuple(r_task.shape)}")
    if how == "none":
        return group_standardize(r_cal, eps=eps)
    if how == "multiply":
        return group_standardize(r_cal, eps=eps) * r_task
    if how != "correct":
        raise DGError(f"cal_gate {how!r}: expected one of {list(CAL_GATES)}")
    return group_standardize(r_cal, mask=r_task >= 1.0, eps=eps)
