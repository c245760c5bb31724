"""Release gate: retention and transfer rules, reasons, bad input, and the published decision."""

from __future__ import annotations

import json

import pytest

from dg_core import gate, store
from dg_core.cli import main as dguard
from dg_core.config import from_dict
from dg_core.errors import DGError


def teacher(which: str, acc: float) -> dict:
    return {"model": "teacher", "teacher": which, "accuracy": acc}


def student(which: str, acc: float, name: str = "student-gpt2", method: str = "sft", seed: int = 0) -> dict:
    return {"model": "student", "teacher": which, "student": name, "method": method, "seed": seed, "accuracy": acc}


def records(t_orig=1.0, t_cal=0.98, pairs=((0.9, 0.3),), name="student-gpt2", method="sft"):
    out = [teacher("original", t_orig), teacher("calibrated", t_cal)]
    for seed, (o, c) in enumerate(pairs):
        out += [student("original", o, name, method, seed), student("calibrated", c, name, method, seed)]
    return out


def test_undistillable_pass_reports_retention_and_worst_transfer():
    r = gate.decide(records(1.0, 0.98, ((0.9, 0.3), (0.8, 0.3))))
    assert r["passed"] is True
    assert r["retention"] == pytest.approx(0.98)
    assert r["transfer"] == pytest.approx(0.3 / 0.85)  # seeds averaged before the ratio
    assert r["attacks"]["student-gpt2/sft"]["seeds"] == {"original": 2, "calibrated": 2}
    assert any("retention 0.980" in x for x in r["reasons"]) and any(
        "(student-gpt2/sft) 0.353 <= 0.5" in x for x in r["reasons"]
    )


def test_retention_below_threshold_fails_with_reason():
    r = gate.decide(records(1.0, 0.90))
    assert r["passed"] is False
    assert len(r["reasons"]) == 1 and "teacher retention 0.900" in r["reasons"][0] and "< 0.95" in r["reasons"][0]


def test_worst_attack_decides_and_mean_can_be_chosen():
    evals = (
        records(pairs=((0.8, 0.2),), name="student-llama", method="kd")
        + records(pairs=((0.8, 0.6),), name="student-gpt2", method="sft")[2:]
    )
    worst = gate.decide(evals)
    assert worst["passed"] is False
    assert worst["transfer"] == pytest.approx(0.75)
    assert "worst transfer (student-gpt2/sft) 0.750 > 0.5" in worst["reasons"][0]
    mean = gate.decide(evals, aggregate="mean", max_transfer=0.5)
    assert mean["transfer"] == pytest.approx((0.25 + 0.75) / 2)
    assert mean["passed"] is True


def test_transfer_interval_widens_with_seed_spread_and_needs_two_seeds():
    tight = gate.transfer_interval([0.30, 0.31, 0.29], [0.60, 0.61, 0.59])
    loose = gate.transfer_interval([0.10, 0.30, 0.50], [0.40, 0.60, 0.80])
    assert tight[0] < 0.5 < tight[1] and tight[1] - tight[0] < 0.1
    assert loose[0] < 0.5 < loose[1] and loose[1] - loose[0] > 1.0
    assert gate.transfer_interval([0.3], [0.6, 0.6]) is None
    assert gate.transfer_interval([0.0, 0.0], [0.5, 0.6]) == (0.0, 0.0)


def test_worst95_judges_the_far_end_of_each_attacks_interval():
    # point transfer 0.4 passes max_transfer 0.5; the seeds spread so far that the upper bound does not
    noisy = records(pairs=((0.6, 0.1), (0.6, 0.25), (0.6, 0.37)))
    assert gate.decide(noisy)["passed"] is True
    r = gate.decide(noisy, aggregate="worst95")
    assert r["passed"] is False and "95% bound of the worst transfer (student-gpt2/sft)" in r["reasons"][0]
    assert r["attacks"]["student-gpt2/sft"]["transfer"] == pytest.approx(0.4)
    assert r["transfer"] == pytest.approx(r["attacks"]["student-gpt2/sft"]["transfer_95"][1])
    steady = records(pairs=((0.6, 0.2), (0.61, 0.21), (0.59, 0.2)))
    assert gate.decide(steady, aggregate="worst95")["passed"] is True
    # distillable: the lower bound must clear min_transfer
    up = records(t_cal=1.0, pairs=((0.4, 0.6), (0.41, 0.62), (0.39, 0.6)))
    assert gate.decide(up, direction="distillable", aggregate="worst95")["passed"] is True
    one_seed = gate.decide(records(), aggregate="worst95")
    assert one_seed["passed"] is False and "needs 2+ seeds" in one_seed["reasons"][0]


def test_named_attacks_of_one_student_and_method_are_judged_apart():
    plain = records(pairs=((0.6, 0.1),))[2:]
    rich = [dict(r, attack="student-gpt2/sft-8x3") for r in records(pairs=((0.7, 0.42),))[2:]]
    r = gate.decide(records(pairs=())[:2] + plain + rich)
    assert set(r["attacks"]) == {"student-gpt2/sft", "student-gpt2/sft-8x3"}
    assert r["passed"] is False and "(student-gpt2/sft-8x3) 0.600 > 0.5" in r["reasons"][0]


def test_distillable_direction_needs_transfer_above_threshold():
    up = gate.decide(records(1.0, 1.0, ((0.5, 0.6),)), direction="distillable", min_transfer=1.1)
    assert up["passed"] is True and up["transfer"] == pytest.approx(1.2)
    flat = gate.decide(records(1.0, 1.0, ((0.5, 0.52),)), direction="distillable", min_transfer=1.1)
    assert flat["passed"] is False and "< 1.1" in flat["reasons"][0]
    # the same numbers that pass as distillable fail as undistillable
    assert gate.decide(records(1.0, 1.0, ((0.5, 0.6),)))["passed"] is False


def test_every_failure_is_listed_at_once():
    r = gate.decide(records(1.0, 0.5, ((0.9, 0.9),)))
    assert r["passed"] is False and len(r["reasons"]) == 2
    assert "retention" in r["reasons"][0] and "students still learn" in r["reasons"][1]


@pytest.mark.parametrize(
    "evals, phrase",
    [
        ([teacher("original", 1.0)], "no evaluation of the calibrated teacher"),
        (records(0.0, 0.0), "original teacher scores 0"),
        (records(pairs=((0.0, 0.0),)), "learned nothing from the original teacher"),
        ([teacher("original", 1.0), teacher("calibrated", 1.0)], "no attacked students"),
        (records()[:-1], "0 from the calibrated teacher, 1 required"),
    ],
)
def test_unmeasurable_cases_fail_the_gate_not_the_stage(evals, phrase):
    r = gate.decide(evals)
    assert r["passed"] is False
    assert any(phrase in x for x in r["reasons"]), r["reasons"]


def test_min_seeds_is_enforced():
    assert gate.decide(records(pairs=((0.9, 0.3),)), min_seeds=3)["passed"] is False
    assert gate.decide(records(pairs=((0.9, 0.3),) * 3), min_seeds=3)["passed"] is True


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"model": "teacher", "teacher": "original"}, "field 'accuracy' missing"),
        ({"model": "teacher", "teacher": "original", "accuracy": 1.5}, "expected a number in [0, 1]"),
        ({"model": "teacher", "teacher": "orig", "accuracy": 0.5}, "expected 'original' or 'calibrated'"),
        ({"model": "proxy", "teacher": "original", "accuracy": 0.5}, "expected 'teacher' or 'student'"),
        ({"model": "student", "teacher": "original", "accuracy": 0.5}, "needs field 'student'"),
        ("0.5", "expected a mapping"),
    ],
)
def test_malformed_records_raise_one_line(bad, message):
    with pytest.raises(DGError) as e:
        gate.decide([teacher("original", 1.0), bad])
    assert message in str(e.value) and "evaluations[1]" in str(e.value) and "\n" not in str(e.value)


def test_config_validation():
    with pytest.raises(DGError, match="min_transfer"):
        from_dict(gate.Config, {"direction": "distillable", "min_transfer": 0.9})
    with pytest.raises(DGError, match="expected one of"):
        from_dict(gate.Config, {"direction": "sideways"})


def _model(tmp_path, name="m", payload=b"weights-v1"):
    d = tmp_path / f"src-{name}"
    d.mkdir()
    (d / "model.safetensors").write_bytes(payload)
    (d / "config.json").write_text('{"model_type": "llama"}')
    uri = (tmp_path / "store" / name).as_uri()
    store.publish(d, uri)
    return uri


def test_run_publishes_decision_bound_to_the_model(tmp_path):
    model = _model(tmp_path)
    out = (tmp_path / "store" / "gate").as_uri()
    cfg = from_dict(gate.Config, {"evaluations": records(), "model": model, "output": out})
    r = gate.run(cfg)
    assert r["passed"] and r["uri"] == out
    back = gate.read_result(out)
    assert back["passed"] is True and back["model"]["uri"] == model
    assert back["model"]["sha256"] == store.content_sha(model)
    md = (store.fetch(out) / "gate.md").read_text()
    assert "Release gate: PASSED" in md and "| student-gpt2/sft |" in md


def test_cli_gate_from_yaml(tmp_path, capsys):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(json.dumps({"gate": {"evaluations": records(1.0, 0.7), "min_retention": 0.9}}))
    assert dguard(["gate", "--config", str(cfg)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] is False and "0.700" in summary["reasons"][0]


def test_attack_summary_matches_the_attack_stage_layout():
    from dg_core.distill.suite import attack_markdown

    evals = records(1.0, 0.9, ((0.8, 0.2), (0.6, 0.4))) + records(pairs=((0.5, 0.5),), name="b", method="kd")[2:]
    floors = [{"model": "student", "teacher": "original", "student": "student-gpt2", "accuracy": 0.05}]
    s = gate.attack_summary(evals, floors, steps=30, teacher="t-uri", calibrated="c-uri")
    assert s["retention"] == pytest.approx(0.9)
    assert s["teachers"]["original"]["accuracy"] == 1.0 and s["config"]["calibrated"] == "c-uri"
    rows = {r["attack"]: r for r in s["attacks"]}
    assert set(rows) == {"student-gpt2/sft", "b/kd"}
    g = rows["student-gpt2/sft"]
    assert g["original"]["mean"] == pytest.approx(0.7) and g["original"]["n"] == 2
    assert g["calibrated"]["mean"] == pytest.approx(0.3) and g["transfer"] == pytest.approx(0.3 / 0.7)
    assert g["floor"] == 0.05 and g["steps"] == 30
    assert rows["b/kd"]["transfer"] == pytest.approx(1.0)
    md = attack_markdown(s)  # the attack stage's own renderer accepts it
    assert "student-gpt2/sft" in md and "0.429" in md
