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
- **style sign** (:func:`style_sign`, option ``hardest_style``): r_cal must rank the style a probe
  student learns worst lowest before any rollout, else the knob turns against its sign;
- **style soundness** (:func:`style_soundness`, with ``hardest_style``): the teacher must still answer after
  writing that style's steps, else η < 0 trades its accuracy for the style and fails the retention gate;
- **release gate** (:func:`gate`): a calibrated teacher whose retention falls below a threshold is marked failed
  with the reason and not published.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from dg_core.gate import t95


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


@dataclass(frozen=True)
class StyleSign:
    """r_cal's ranking of the style students learn worst: ``problem`` (refuse) when the mean paired gap says
    another style scores lower, ``resolved`` when the gap is below 0 at its 95% bound (else a close call)."""

    problem: str | None
    resolved: bool
    summary: str


def style_sign(r_cal_rows: dict[str, Sequence[float]], hardest_style: str, eta: float) -> StyleSign:
    """eta < 0 pushes the teacher towards the reference style with the lowest r_cal, so that must be the style
    students learn worst (measured, e.g. by bench/style_learnability.py), else the knob turns against its sign.
    Judged on the paired gap per reference (same prompt, two styles): on synthetic_qa 49 held-out references and
    140 test ones put the gap of whole-response r_cal on opposite sides of 0, so the interval is reported too."""
    if not r_cal_rows:
        why = (
            f"hardest_style {hardest_style!r}: the held-out rows carry no reference styles to score, expected a "
            "dataset with meta.references (the synthetic families) or hardest_style ''"
        )
        return StyleSign(why, False, why)
    if hardest_style not in r_cal_rows:
        styles = sorted(r_cal_rows)
        why = f"hardest_style {hardest_style!r}: not a reference style of the dataset, expected one of {styles}"
        return StyleSign(why, False, why)
    hard, parts, resolved = r_cal_rows[hardest_style], [], True
    for other in sorted(set(r_cal_rows) - {hardest_style}):
        gaps = [a - b for a, b in zip(hard, r_cal_rows[other])]
        n = len(gaps)
        mean = sum(gaps) / n
        half = t95(n - 1) * math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1) / n) if n > 1 else math.inf
        gap = f"r_cal({hardest_style}) - r_cal({other}) = {mean:+.3f} [95% {mean - half:+.3f}, {mean + half:+.3f}]"
        parts.append(gap)
        resolved = resolved and mean + half < 0
        if mean >= 0 and eta != 0:  # at eta = 0 r_cal has no weight: no sign to turn
            why = (
                f"r_cal does not rank hardest_style {hardest_style!r} lowest: {gap} over {n} held-out references, "
                f"so eta {eta:+g} would push the teacher {'towards' if eta < 0 else 'away from'} a style students "
                "learn better; expected a gap below 0 (another span, normalize or proxy: "
                "bench/style_learnability.py compares them)"
            )
            return StyleSign(why, False, why)
    return StyleSign(None, resolved, f"{'; '.join(parts)} over {len(hard)} held-out references")


def sample_style_sign(rows: dict[str, Sequence[float]], hardest_style: str, eta: float) -> StyleSign:
    """The same question as :func:`style_sign`, asked of what calibration actually ranks: the teacher's own correct
    samples, grouped by the reference style their trace follows (``own``: steps of its making). A proxy can rank
    the references right and the teacher's renderings wrong (on synthetic_qa with ``decoy``: references decoy
    -1.02 < bare -0.37 < chain 0.00, yet eta = +0.5 made the teacher answer bare 100% and eta < 0 moved it to its
    own steps and chains). Groups differ in size and prompts, so the gap is unpaired (Welch); a style the teacher
    writes on fewer than two correct samples has no mean to judge and is left out, as is ``hardest_style`` itself
    when the teacher hardly writes it at eta < 0, which is refused: calibration can only select what it samples."""
    n_all = sum(len(v) for v in rows.values())
    hard = rows.get(hardest_style, [])
    if eta == 0 or not rows:  # at eta = 0 r_cal has no weight; no reference styles: style_sign has said so
        return StyleSign(None, True, "")
    if len(hard) < 2:
        why = (
            f"the teacher writes hardest_style {hardest_style!r} on {len(hard)} of its {n_all} correct held-out "
            f"samples, so eta {eta:+g} has nothing of it to select; expected two or more (train the teacher on it)"
        )
        return StyleSign(why if eta < 0 else None, False, why)
    parts, resolved = [], True
    for other in sorted(k for k, v in rows.items() if k != hardest_style and len(v) >= 2):
        a, b = hard, rows[other]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
        vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
        dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else 1.0
        mean, half = ma - mb, t95(max(1, round(dof))) * math.sqrt(va + vb)
        gap = (
            f"r_cal({hardest_style}) - r_cal({other}) = {mean:+.3f} [95% {mean - half:+.3f}, {mean + half:+.3f}] "
            f"({len(a)} vs {len(b)} samples)"
        )
        parts.append(gap)
        resolved = resolved and mean + half < 0
        if mean >= 0:
            why = (
                f"on the teacher's own correct samples r_cal does not rank hardest_style {hardest_style!r} lowest: "
                f"{gap}, so eta {eta:+g} would push the teacher {'towards' if eta < 0 else 'away from'} its "
                f"{other!r} answers rather than {'towards' if eta < 0 else 'away from'} {hardest_style!r}; expected a "
                "gap below 0 (another span, normalize or proxy: bench/style_learnability.py compares them)"
            )
            return StyleSign(why, False, why)
    return StyleSign(None, resolved, "; ".join(parts))


def style_soundness(
    style_accuracy: float, greedy_accuracy: float, hardest_style: str, min_retention: float, eta: float
) -> str | None:
    """Why to refuse (None: go on). Calibration at eta < 0 moves the teacher towards ``hardest_style``; its accuracy
    once its responses start with that style's steps is where retention ends up, so a ratio to its own greedy
    accuracy below the retention gate fails the run before training would."""
    if eta >= 0 or min_retention <= 0 or greedy_accuracy <= 0:
        return None
    ratio = style_accuracy / greedy_accuracy
    if ratio >= min_retention:
        return None
    return (
        f"the teacher answers {style_accuracy:.3f} of held-out problems after writing hardest_style "
        f"{hardest_style!r}'s steps against {greedy_accuracy:.3f} in its own style (ratio {ratio:.3f} < "
        f"min_retention {min_retention:g}), so eta {eta:+g} would trade its accuracy for the style; expected a "
        "teacher trained to be sound on it (its train style) or another hardest_style"
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
