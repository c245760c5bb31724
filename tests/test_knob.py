"""The one rule for eta's direction (dg_core.knob), and that the card, gate and report all follow it."""

from __future__ import annotations

import math

import pytest

from dg_core import gate, knob
from dg_core.calibrate.card import build_card
from dg_core.errors import DGError
from dg_core.report import tradeoff_rows


@pytest.mark.parametrize(("eta", "want"), [(-1.0, "undistillable"), (-1e-9, "undistillable"), (0.0, "control"),
                                           (-0.0, "control"), (0.5, "distillable")])  # fmt: skip
def test_direction_of_eta(eta, want):
    assert knob.direction_of(eta) == want


@pytest.mark.parametrize("eta", [math.nan, math.inf, -math.inf])
def test_non_finite_eta_has_no_direction(eta):
    with pytest.raises(DGError, match="expected a finite number"):
        knob.direction_of(eta)


def test_worst_attack_per_direction():
    t = {"a": 0.4, "b": 1.3, "c": 0.95}
    assert knob.worst_attack("undistillable", t) == "b"
    assert knob.worst_attack("distillable", t) == "a"
    assert knob.worst_attack("control", t) == "a"  # |log 0.4| > |log 1.3|
    assert knob.worst_attack("control", {"x": 0.0, "y": 2.0}) == "x"
    with pytest.raises(DGError, match="expected one of undistillable, control, distillable"):
        knob.worst_attack("sideways", t)


def _records(t_orig, t_cal, students):
    recs = [{"model": "teacher", "teacher": "original", "accuracy": t_orig},
            {"model": "teacher", "teacher": "calibrated", "accuracy": t_cal}]  # fmt: skip
    for name, (a0, a1) in students.items():
        recs.append({"model": "student", "teacher": "original", "student": name, "accuracy": a0})
        recs.append({"model": "student", "teacher": "calibrated", "student": name, "accuracy": a1})
    return recs


def test_control_gate_checks_retention_and_reports_transfer():
    recs = _records(0.9, 0.9, {"s1": (0.5, 0.5), "s2": (0.5, 0.25)})
    res = gate.decide(recs, direction="control", min_retention=0.95)
    assert res["passed"] and res["direction"] == "control"
    assert res["transfer"] == pytest.approx(0.5)  # the attack furthest from 1
    assert any("not gated" in r for r in res["reasons"])
    assert res["thresholds"]["max_transfer"] is None and res["thresholds"]["min_transfer"] is None
    bad = gate.decide(_records(0.9, 0.5, {"s1": (0.5, 0.5)}), direction="control", min_retention=0.95)
    assert not bad["passed"] and "calibration cost too much teacher accuracy" in bad["reasons"][0]
    # the same records gated as undistillable pass on transfer 0.5 only because a claim is made
    assert gate.decide(recs, direction="undistillable", max_transfer=0.6)["reasons"] != res["reasons"]


def test_card_and_report_follow_the_rule():
    body = build_card(
        settings={"eta": 0.0},
        teacher="zoo:teacher",
        proxies=[],
        dataset="",
        before={},
        after={},
        training={},
        status="passed",
        reason="",
        outputs={},
    )
    assert body["direction"] == "control"
    attacks = {"u": {"attacks": [{"attack": "a", "transfer": 0.4}, {"attack": "b", "transfer": 1.3}],
                     "teachers": {"original": {"accuracy": 1.0}}}}  # fmt: skip
    assert tradeoff_rows(attacks, "control")[0]["worst_transfer"] == 0.4
    assert tradeoff_rows(attacks, "undistillable")[0]["worst_transfer"] == 1.3
