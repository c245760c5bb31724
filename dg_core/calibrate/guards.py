"""Guards against reward hacking during calibration, and the release gate.

The toy study  saw the knob hacked both ways: with η < 0 the teacher appended junk after its
answer that the proxy finds unlikely; with η > 0 a weak teacher drifted towards answers the proxy likes — the
proxy's own mistakes. The defences, each an option of the ``calibrate`` stage:

- **gate r_cal by correctness** (:func:`dg_core.base.advantages.gated_cal_advantage`): the calibration advantage is computed among the
  *correct* samples of a group only, so η can choose between correct answers but never pays for a wrong one;
- **strict scorers**: the task scorer is ``r_task`` (a junk suffix after the answer scores 0, see
  :class:`dg_core.data.tasks.SyntheticMathTask`);
- **pre-flight** (:func:`preflight`): calibrate only a teacher that is sound on the task (sampled accuracy at
  the calibration temperature ≥ a threshold), since drift towards the proxy needs room to be wrong;
- **early stopping** (:func:`early_stop_reason`): stop when held-out teacher accuracy or the KL to π₀ crosses a
  bound;
- **release gate** (:func:`gate`): a calibrated teacher whose retention falls below a threshold is marked failed
  with the reason and not published.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preflight:
    """Outcome of the pre-flight soundness check."""

    accuracy: float
    threshold: float
    n: int

    @property
    def ok(self) -> bool:
        return self.accuracy >= self.threshold

    @property
    def reason(self) -> str:
        if self.threshold <= 0:
            return f"teacher soundness check off (preflight_accuracy=0): sampled accuracy {self.accuracy:.3f} over {self.n} samples"
        verdict = "sound" if self.ok else "not sound"
        return (
            f"teacher {verdict} on the task: sampled accuracy {self.accuracy:.3f} over {self.n} samples "
            f"(threshold {self.threshold:.3f})"
        )


def preflight(accuracy: float, n: int, threshold: float) -> Preflight:
    """Judge the sampled accuracy of the original teacher before calibration."""
    return Preflight(float(accuracy), float(threshold), int(n))


def style_sign_problem(r_cal_by_style: dict[str, float], hardest_style: str, eta: float) -> str | None:
    """Why the knob would turn against its sign, or None: eta < 0 pushes the teacher towards the reference style
    with the lowest r_cal, so that must be the style students learn worst (measured, e.g. by
    bench/style_learnability.py). On synthetic_qa the whole-response r_cal ranked the other style lowest and
    students of the "undistillable" teacher learned 1.5x more."""
    if not r_cal_by_style:
        return (
            f"hardest_style {hardest_style!r}: the held-out rows carry no reference styles to score, expected a "
            "dataset with meta.references (the synthetic families) or hardest_style ''"
        )
    if hardest_style not in r_cal_by_style:
        styles = sorted(r_cal_by_style)
        return f"hardest_style {hardest_style!r}: not a reference style of the dataset, expected one of {styles}"
    lowest = min(r_cal_by_style, key=r_cal_by_style.get)
    if eta == 0 or lowest == hardest_style:
        return None
    ranks = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r_cal_by_style.items(), key=lambda kv: kv[1]))
    return (
        f"r_cal ranks {lowest!r} lowest ({ranks}), not hardest_style {hardest_style!r}: eta {eta:+g} would push the "
        f"teacher {'towards' if eta < 0 else 'away from'} a style students learn better than {hardest_style!r}; "
        "expected another span, normalize or proxy (bench/style_learnability.py compares them)"
    )


def early_stop_reason(
    *,
    eval_accuracy: float | None,
    base_accuracy: float | None,
    min_accuracy_ratio: float,
    kl: float | None,
    max_kl: float,
) -> str | None:
    """Why to stop now (teacher accuracy fell or KL to π₀ grew too far), or None to go on. Bounds <= 0 are off."""
    if (
        min_accuracy_ratio > 0
        and eval_accuracy is not None
        and base_accuracy is not None
        and base_accuracy > 0
        and eval_accuracy < min_accuracy_ratio * base_accuracy
    ):
        return (
            f"held-out teacher accuracy {eval_accuracy:.3f} fell below {min_accuracy_ratio:.2f} x "
            f"its value before calibration ({base_accuracy:.3f})"
        )
    if max_kl > 0 and kl is not None and kl > max_kl:
        return f"KL(pi_theta||pi_0) per token {kl:.4f} exceeded the bound {max_kl:.4f}"
    return None


@dataclass(frozen=True)
class GateResult:
    """Release verdict on a calibrated teacher."""

    passed: bool
    retention: float | None
    reason: str


def gate(acc_before: float, acc_after: float, min_retention: float, stopped_reason: str | None = None) -> GateResult:
    """Pass when ``acc_after / acc_before >= min_retention``; a teacher that cannot be measured fails."""
    if acc_before <= 0:
        return GateResult(False, None, f"original teacher accuracy is {acc_before:.3f}: retention is undefined")
    retention = acc_after / acc_before
    if retention < min_retention:
        why = f"teacher retention {retention:.3f} ({acc_after:.3f}/{acc_before:.3f}) is below {min_retention:.3f}"
        if stopped_reason:
            why += f"; training stopped early: {stopped_reason}"
        return GateResult(False, retention, why)
    return GateResult(True, retention, f"teacher retention {retention:.3f} >= {min_retention:.3f}")
