"""Release gate: is a calibrated teacher fit to publish?

A calibration is only worth releasing when it did what it was for *and* kept the teacher useful:

- **teacher retention** = acc(calibrated teacher) / acc(original teacher) must be >= ``min_retention``;
- **student transfer** = acc(student <- calibrated) / acc(student <- original), per (student, method) averaged
  over seeds, must be <= ``max_transfer`` for the *undistillable* direction (every attack must fail; the
  worst case decides) or >= ``min_transfer`` for the *distillable* direction. A *control* calibration (η = 0,
  plain RFT) makes no distillability claim: its transfer is reported, only its retention is gated. The direction
  comes from η by the one rule in :mod:`dg_core.knob`. With ``aggregate: worst95`` each attack is judged at the
  far end of its 95% interval over seeds (:func:`transfer_interval`): the upper bound for undistillable, the lower
  for distillable, so a lucky draw of three seeds does not pass a release.

The gate works on evaluation records, the small dicts the evaluate components emit (one per evaluated model)::

    {"model": "teacher", "teacher": "original" | "calibrated", "accuracy": 0.97, "n": 64, "uri": "..."}
    {"model": "student", "teacher": "original" | "calibrated", "student": "student-gpt2", "method": "sft",
     "seed": 0, "accuracy": 0.41, "n": 64, "uri": "..."}

A student record may name its attack (``"attack": "student-gpt2/sft-verified"``); records are grouped by that name,
else by ``<student>/<method>``, so two attacks of one student and method (a verifier's, a rich attacker's) are
judged apart.

It never raises for a *failing* calibration: it returns ``passed: false`` with one reason per violated rule, so the
pipeline can show why. It raises :class:`DGError` only for malformed input. The decision is published as
``gate.json`` (+ ``gate.md``) so :mod:`dg_core.publish` can read it back and check it belongs to the model.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.config import StageConfig, option
from dg_core.errors import DGError
from dg_core.knob import CONTROL, DIRECTIONS, DISTILLABLE, UNDISTILLABLE, check_direction, worst_attack

GATE_FILE = "gate.json"
_TEACHERS = ("original", "calibrated")
# Two-sided 95% quantiles of Student's t by degrees of freedom 1..30 (the normal's 1.96 beyond).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


@dataclass
class Config(StageConfig):
    evaluations: list[dict] = option([], "Evaluation records (see module doc): teachers and attacked students.")
    direction: str = option(
        UNDISTILLABLE,
        "What the calibration was for (dg_core.knob: eta < 0 undistillable, > 0 distillable, 0 control).",
        choices=DIRECTIONS,
    )
    min_retention: float = option(0.95, "Lowest acceptable acc(calibrated)/acc(original) of the teacher.", ge=0.0)
    max_transfer: float = option(
        0.5, "Undistillable: highest acceptable student transfer (worst student/method decides).", ge=0.0
    )
    min_transfer: float = option(
        1.10, "Distillable: lowest acceptable student transfer (worst student/method decides).", ge=0.0
    )
    aggregate: str = option(
        "worst",
        "How per-attack transfers combine: 'worst' (every attack must pass), 'worst95' (every attack must pass at "
        "the far end of its 95% interval over seeds; 2+ seeds a side) or 'mean'.",
        choices=("worst", "worst95", "mean"),
    )
    min_seeds: int = option(1, "Fewest student seeds per (student, method) on each side; 3+ recommended.", ge=1)
    model: str = option("", "URI of the calibrated model being gated (recorded with its manifest sha).")
    output: str = option("", "Where to publish gate.json (default: no publish, result only returned).")

    def check(self) -> None:
        if self.direction == DISTILLABLE and self.min_transfer <= 1.0:
            raise DGError(
                f"config field 'min_transfer': got {self.min_transfer}, expected > 1.0 for the distillable direction"
            )


def _record_key(i: int, r: Any) -> dict[str, Any]:
    if not isinstance(r, dict):
        raise DGError(f"gate evaluations[{i}]: got {r!r}, expected a mapping with model, teacher, accuracy")
    for f in ("model", "teacher", "accuracy"):
        if f not in r:
            raise DGError(f"gate evaluations[{i}]: field '{f}' missing, expected model, teacher, accuracy")
    if r["model"] not in ("teacher", "student"):
        raise DGError(f"gate evaluations[{i}].model: got {r['model']!r}, expected 'teacher' or 'student'")
    if r["teacher"] not in _TEACHERS:
        raise DGError(f"gate evaluations[{i}].teacher: got {r['teacher']!r}, expected 'original' or 'calibrated'")
    acc = r["accuracy"]
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not (0.0 <= float(acc) <= 1.0):
        raise DGError(f"gate evaluations[{i}].accuracy: got {acc!r}, expected a number in [0, 1]")
    if r["model"] == "student" and not r.get("student"):
        raise DGError(f"gate evaluations[{i}]: a student record needs field 'student' (its name)")
    return r


def attack_name(record: dict[str, Any]) -> str:
    """The attack a student record belongs to: its own name, else ``<student>/<method>`` (the gate's grouping)."""
    return record.get("attack") or f"{record['student']}/{record.get('method') or 'default'}"


def t95(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (>= 1)."""
    return _T95[df - 1] if df <= len(_T95) else 1.96


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def transfer_interval(calibrated: list[float], original: list[float]) -> tuple[float, float] | None:
    """95% interval of mean(calibrated) / mean(original) over student seeds, or None below 2 seeds a side.

    The delta method on the log ratio (the two sides' seeds are independent) with a t quantile on the pooled degrees
    of freedom: with 3 seeds a side it is wide, as three student seeds are. A side whose seeds all scored 0 has no
    spread and a ratio of 0 (or an undefined one on the original side, which the gate refuses before this).
    """
    nc, no = len(calibrated), len(original)
    if nc < 2 or no < 2:
        return None
    mc, mo = _mean(calibrated), _mean(original)
    if mo <= 0.0:
        return None
    if mc <= 0.0:
        return 0.0, 0.0
    var = lambda xs, m: sum((x - m) ** 2 for x in xs) / (len(xs) - 1)  # noqa: E731
    se = math.sqrt(var(calibrated, mc) / (nc * mc**2) + var(original, mo) / (no * mo**2))
    df = nc + no - 2
    half = t95(df) * se
    r = mc / mo
    return r * math.exp(-half), r * math.exp(half)


def decide(
    evaluations: list[dict],
    *,
    direction: str = UNDISTILLABLE,
    min_retention: float = 0.95,
    max_transfer: float = 0.5,
    min_transfer: float = 1.10,
    aggregate: str = "worst",
    min_seeds: int = 1,
) -> dict[str, Any]:
    """The gate decision for a set of evaluation records (pure: no I/O)."""
    check_direction(direction)
    teacher: dict[str, list[float]] = {t: [] for t in _TEACHERS}
    students: dict[str, dict[str, list[float]]] = defaultdict(lambda: {t: [] for t in _TEACHERS})
    for i, r in enumerate(evaluations):
        r = _record_key(i, r)
        if r["model"] == "teacher":
            teacher[r["teacher"]].append(float(r["accuracy"]))
        else:
            name = attack_name(r)
            students[name][r["teacher"]].append(float(r["accuracy"]))

    reasons: list[str] = []
    failures: list[str] = []

    retention = None
    if not teacher["original"] or not teacher["calibrated"]:
        missing = [t for t in _TEACHERS if not teacher[t]]
        failures.append(f"no evaluation of the {' and '.join(missing)} teacher: retention cannot be measured")
    elif _mean(teacher["original"]) == 0.0:
        failures.append("the original teacher scores 0: retention is undefined (is the teacher trained on this task?)")
    else:
        retention = _mean(teacher["calibrated"]) / _mean(teacher["original"])
        line = (
            f"teacher retention {retention:.3f} ({_mean(teacher['calibrated']):.3f} / {_mean(teacher['original']):.3f})"
        )
        if retention >= min_retention:
            reasons.append(f"{line} >= {min_retention}")
        else:
            failures.append(f"{line} < {min_retention}: calibration cost too much teacher accuracy")

    transfers: dict[str, float] = {}
    judged: dict[str, float] = {}  # what decides per attack: the transfer, or its 95% bound (worst95)
    attacks: dict[str, dict[str, Any]] = {}
    for name, acc in sorted(students.items()):
        seeds = {t: len(acc[t]) for t in _TEACHERS}
        attacks[name] = {
            "acc_original": _mean(acc["original"]) if acc["original"] else None,
            "acc_calibrated": _mean(acc["calibrated"]) if acc["calibrated"] else None,
            "seeds": seeds,
        }
        if min(seeds.values()) < min_seeds:
            failures.append(
                f"attack {name}: {seeds['original']} seed(s) from the original and {seeds['calibrated']} from the "
                f"calibrated teacher, {min_seeds} required on each side"
            )
            continue
        if attacks[name]["acc_original"] == 0.0:
            failures.append(
                f"attack {name}: the student learned nothing from the original teacher (accuracy 0), "
                "so transfer is undefined; use a stronger attack budget"
            )
            continue
        transfers[name] = attacks[name]["acc_calibrated"] / attacks[name]["acc_original"]
        attacks[name]["transfer"] = transfers[name]
        bounds = transfer_interval(acc["calibrated"], acc["original"])
        attacks[name]["transfer_95"] = list(bounds) if bounds else None
        if aggregate == "worst95":
            if bounds is None:
                failures.append(f"attack {name}: aggregate 'worst95' needs 2+ seeds on each side for an interval")
                continue
            # the end of the interval that argues against the claim decides
            judged[name] = {UNDISTILLABLE: bounds[1], DISTILLABLE: bounds[0]}.get(direction, transfers[name])
        else:
            judged[name] = transfers[name]

    transfer = None
    if not students:
        failures.append("no attacked students: student transfer cannot be measured")
    elif judged:
        if aggregate == "mean":
            transfer = _mean(list(judged.values()))
            which = "mean transfer"
        else:
            worst = worst_attack(direction, judged)
            bound = "95% bound of the " if aggregate == "worst95" and direction != CONTROL else ""
            transfer, which = judged[worst], f"{bound}worst transfer ({worst})"
        if direction == UNDISTILLABLE:
            if transfer <= max_transfer:
                reasons.append(f"{which} {transfer:.3f} <= {max_transfer}")
            else:
                failures.append(f"{which} {transfer:.3f} > {max_transfer}: students still learn from the teacher")
        elif direction == DISTILLABLE:
            if transfer >= min_transfer:
                reasons.append(f"{which} {transfer:.3f} >= {min_transfer}")
            else:
                failures.append(f"{which} {transfer:.3f} < {min_transfer}: students do not learn better")
        else:
            reasons.append(f"{which} {transfer:.3f}: reported, not gated (a control makes no distillability claim)")

    passed = not failures
    return {
        "passed": passed,
        "direction": direction,
        "retention": retention,
        "transfer": transfer,
        "transfers": transfers,
        "attacks": attacks,
        "teacher": {t: (_mean(v) if v else None) for t, v in teacher.items()},
        "thresholds": {
            "min_retention": min_retention,
            "max_transfer": max_transfer if direction == UNDISTILLABLE else None,
            "min_transfer": min_transfer if direction == DISTILLABLE else None,
            "aggregate": aggregate,
            "min_seeds": min_seeds,
        },
        "reasons": failures if failures else reasons,
    }


def to_markdown(result: dict[str, Any]) -> str:
    """A short human summary of a gate decision (what the Kubeflow UI shows)."""
    head = "PASSED" if result["passed"] else "FAILED"
    lines = [f"## Release gate: {head} ({result['direction']})", ""]
    lines += [f"- {r}" for r in result["reasons"]]
    if result["attacks"]:
        head = "| attack | acc <- original | acc <- calibrated | transfer | 95% interval | seeds |"
        lines += ["", head, "|---|---|---|---|---|---|"]
        for name, a in result["attacks"].items():

            def f(x: float | None) -> str:
                return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

            seeds = f"{a['seeds']['original']}/{a['seeds']['calibrated']}"
            ci = a.get("transfer_95")
            ci = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "-"
            lines.append(
                f"| {name} | {f(a['acc_original'])} | {f(a['acc_calibrated'])} | {f(a.get('transfer'))} | {ci} "
                f"| {seeds} |"
            )
    return "\n".join(lines) + "\n"


def read_result(uri: str) -> dict[str, Any]:
    """A published gate decision (``gate.json`` of the artifact at ``uri``)."""
    path = Path(store.fetch(uri)) / GATE_FILE
    if not path.is_file():
        raise DGError(f"{uri}: no {GATE_FILE}, expected an artifact written by `dguard gate`")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DGError(f"{uri}/{GATE_FILE}: invalid JSON ({e.msg})") from None
    if not isinstance(result, dict) or not isinstance(result.get("passed"), bool):
        raise DGError(f"{uri}/{GATE_FILE}: field 'passed' missing, expected a gate decision")
    return result


def run(cfg: Config) -> dict[str, Any]:
    """Decide, and publish the decision (with the gated model's identity) when ``output`` is set."""
    result = decide(
        cfg.evaluations,
        direction=cfg.direction,
        min_retention=cfg.min_retention,
        max_transfer=cfg.max_transfer,
        min_transfer=cfg.min_transfer,
        aggregate=cfg.aggregate,
        min_seeds=cfg.min_seeds,
    )
    if cfg.model:
        result["model"] = {"uri": cfg.model, "sha256": store.content_sha(cfg.model)}
    if cfg.output:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / GATE_FILE).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            (Path(tmp) / "gate.md").write_text(to_markdown(result))
            manifest = store.publish(tmp, cfg.output, metadata={"kind": "gate", "passed": result["passed"]})
        result["uri"] = manifest["uri"]
    return result


def _stats(xs: list[float]) -> dict[str, float]:
    import statistics

    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def attack_summary(
    evaluations: list[dict],
    floors: list[dict] | None = None,
    *,
    steps: int | None = None,
    teacher: str = "",
    calibrated: str = "",
) -> dict[str, Any]:
    """The `attack` stage's summary (the ``attack.json`` layout of :mod:`dg_core.distill.suite`) rebuilt from the
    evaluation records a pipeline's parallel attack loop produced, so the report renders both the same way.

    ``floors`` are records of the undistilled students (``student`` names them); ``teacher``/``calibrated`` are
    the two teachers' URIs (the report labels a calibration by the calibrated model's eta).
    """
    for i, r in enumerate(evaluations):
        _record_key(i, r)
    teachers = {
        r["teacher"]: {"accuracy": float(r["accuracy"]), "n": r.get("n")}
        for r in evaluations
        if r["model"] == "teacher"
    }
    floor_acc: dict[str, list[float]] = defaultdict(list)
    for r in floors or []:
        floor_acc[str(r.get("student"))].append(float(r["accuracy"]))
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {t: [] for t in _TEACHERS})
    for r in evaluations:
        if r["model"] == "student":
            groups[(str(r["student"]), str(r.get("method") or "default"))][r["teacher"]].append(float(r["accuracy"]))
    rows = []
    for (student, method), acc in sorted(groups.items()):
        row: dict[str, Any] = {
            "attack": f"{student}/{method}",
            "method": method,
            "steps": steps,
            "floor": _mean(floor_acc[student]) if floor_acc.get(student) else float("nan"),
        }
        for side in _TEACHERS:
            if acc[side]:
                row[side] = _stats(acc[side])
        if acc["original"] and acc["calibrated"] and row["original"]["mean"] > 0:
            row["transfer"] = row["calibrated"]["mean"] / row["original"]["mean"]
        rows.append(row)
    summary: dict[str, Any] = {
        "teachers": teachers,
        "attacks": rows,
        "records": list(evaluations),
        "config": {"teacher": teacher, "calibrated": calibrated},
    }
    if "calibrated" in teachers and teachers.get("original", {}).get("accuracy"):
        summary["retention"] = teachers["calibrated"]["accuracy"] / teachers["original"]["accuracy"]
    return summary
