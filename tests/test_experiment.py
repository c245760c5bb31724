"""One orchestrator: the demo and bench/knob.py run one experiment graph from YAML settings; components get
stage defaults for whatever the settings leave out; attacks are expanded by one planner everywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dg_core.distill.suite import plan_attacks
from dg_core.distill.train_stage import _targets as train_targets
from dg_core.errors import DGError
from pipelines.experiment import EXPERIMENTS, component_kwargs, load_settings, plan

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _default(stage_cls, name):
    f = {f.name: f for f in dataclasses.fields(stage_cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def test_settings_overlay_and_overrides(tmp_path):
    cfg = load_settings(EXPERIMENTS / "demo.yaml", EXPERIMENTS / "small.yaml", overrides=["calibrate.steps=3"])
    assert cfg["calibrate"]["steps"] == 3 and cfg["calibrate"]["lora_r"] == 4  # small overlay, then override
    assert cfg["prep"]["options"]["task_options"]["term_digits"] == 2  # deep merge keeps the demo's task
    assert cfg["prep"]["options"]["n"] == 64
    bad = tmp_path / "bad.yaml"
    bad.write_text("etas_typo: [1]\n")
    with pytest.raises(DGError, match=r"bad.yaml: unknown key 'etas_typo'"):
        load_settings(EXPERIMENTS / "demo.yaml", bad)
    with pytest.raises(DGError, match=r"demo setting 'nope=1': expected key=value"):
        load_settings(EXPERIMENTS / "demo.yaml", overrides=["nope=1"])


def test_components_take_stage_defaults_for_what_settings_leave_out():
    from dg_core.calibrate.stage import Config as CalConfig
    from dg_core.distill.stage import Config as DistillConfig

    cfg = load_settings(EXPERIMENTS / "demo.yaml", BENCH / "knob.yaml")
    kw = component_kwargs("calibrate", cfg["calibrate"], teacher="t", proxies=["p"], dataset="d", eta=-1.0)
    assert "beta" not in cfg["calibrate"] and kw["beta"] == _default(CalConfig, "beta")
    assert kw["steps"] == 40 and kw["options"]["preflight_accuracy"] == 0.8  # the sweep's own, not restated
    assert "beta" not in kw["options"] and "steps" not in kw["options"]
    job = plan_attacks(cfg["attacks"], cfg["distill"])[0]
    kw = component_kwargs("distill", job.settings, teacher="t", dataset="d", seed=job.seed)
    assert kw["n_samples"] == 2 and kw["steps"] == 1000 and kw["reinit"] is True
    assert kw["options"] == {"checkpoint_every": 0, "warmup_steps": 20}
    untouched = {f.name for f in dataclasses.fields(DistillConfig)} - set(job.settings) - {"teacher", "dataset"}
    assert not untouched & set(kw["options"])  # nothing restated: defaults are the stage's
    with pytest.raises(DGError, match=r"component evaluate: parameter 'role' has no stage default"):
        component_kwargs("evaluate", {}, model="m", dataset="d")


def test_one_planner_for_attacks():
    jobs = plan_attacks(
        [{"student": "zoo:student-gpt2", "method": "sft", "seeds": [0, 1], "lr": 0.1}, {"method": "kd"}],
        {"steps": 7, "lr": 0.2},
    )
    assert [(j.attack, j.seed) for j in jobs] == [
        ("student-gpt2/sft", 0),
        ("student-gpt2/sft", 1),
        ("student-llama/kd", 0),
    ]
    assert jobs[0].settings["lr"] == 0.1 and jobs[2].settings["lr"] == 0.2  # an entry's own field wins
    assert all(j.settings["reinit"] and j.settings["steps"] == 7 for j in jobs)  # zoo students: fresh per seed
    assert plan_attacks([{"student": "/models/s", "method": "sft"}])[0].settings["reinit"] is False
    with pytest.raises(DGError, match=r"attacks\[0\].method': got 'distil', expected one of"):
        plan_attacks([{"method": "distil"}])
    with pytest.raises(DGError, match=r"attacks\[0\].teacher': not an attack setting"):
        plan_attacks([{"method": "sft", "teacher": "x"}])
    # the experiment graph distils exactly the planner's jobs, from each teacher
    cfg = load_settings(EXPERIMENTS / "demo.yaml", BENCH / "knob.yaml")
    tasks = [t.key for t in plan(cfg, "file:///tmp/unused") if "|" in t.key]
    n = len(plan_attacks(cfg["attacks"], cfg["distill"]))
    assert n == 9 and len(tasks) == n * (1 + len(cfg["etas"]))


def test_adaptive_attacks_overlay_plans_valid_distill_jobs():
    """bench/knob-adaptive.yaml: every entry is a distill config the stage accepts (verifier, 8 samples x 3
    budget, SFT-started gkd), so a sweep with it cannot fail on a typo after the teachers are trained."""
    from dg_core.config import from_dict
    from dg_core.distill.stage import Config as DistillConfig

    cfg = load_settings(EXPERIMENTS / "demo.yaml", BENCH / "knob.yaml", BENCH / "knob-adaptive.yaml")
    jobs = plan_attacks(cfg["attacks"], cfg["distill"])
    by_name = {j.attack: j for j in jobs}
    assert {"student-gpt2/sft-verified", "student-gpt2/sft-8x3", "student-llama/gkd-sft"} <= set(by_name)
    for j in jobs:
        c = from_dict(DistillConfig, {**j.settings, "teacher": "t", "dataset": "d", "seed": j.seed})
        assert c.student == j.student
    assert by_name["student-gpt2/sft-verified"].settings["keep"] == "correct"
    assert by_name["student-gpt2/sft-8x3"].settings["steps"] == 3 * cfg["distill"]["steps"]
    assert by_name["student-llama/gkd-sft"].settings["sft_steps"] < cfg["distill"]["steps"]


_SWEEPS = [("demo.yaml", "tradeoff.yaml", p.name) for p in sorted(BENCH.glob("tradeoff-*.yaml"))] + [
    ("qa.yaml",),
    ("qa.yaml", "qa-answer.yaml"),
    *[("qa.yaml", "qa-answer.yaml", p.name) for p in sorted(BENCH.glob("qa-*.yaml")) if p.name != "qa-answer.yaml"],
]


@pytest.mark.parametrize("files", _SWEEPS, ids=lambda f: f[-1])
def test_sweep_settings_plan_valid_jobs_on_a_valid_task(files):
    """Each sweep (the trade-off overlays: adaptive, held-out, neutral teacher with the prompt attack, guided
    defence, saturated teacher; the QA family) makes a task, distill and calibrate configs the stages accept, so
    a 30-90 minute sweep cannot fail on a typo after its teachers are trained."""
    from dg_core.calibrate.stage import Config as CalibrateConfig
    from dg_core.config import from_dict
    from dg_core.data import get_task
    from dg_core.distill.stage import Config as DistillConfig

    cfg = load_settings(*[(EXPERIMENTS if f == "demo.yaml" else BENCH) / f for f in files])
    opts = cfg["prep"]["options"]
    task = get_task(cfg["prep"]["task"], **opts["task_options"])
    rows = task.generate(opts["n"], seed=cfg["prep"]["seed"])  # as many distinct problems as the sweep asks for
    style = cfg["teacher"]["train"]["style"]
    assert all(train_targets(ex, style) for ex in rows[:50])
    for j in plan_attacks(cfg["attacks"], cfg["distill"]):
        c = from_dict(DistillConfig, {**j.settings, "teacher": "t", "dataset": "d", "seed": j.seed})
        assert c.student == j.student and c.method == j.method
        if j.attack.endswith("-asks"):  # the prompt attack asks through the channel the teacher was trained on
            assert c.ask and task.options.get("instructed", 0) > 0
    cal = from_dict(CalibrateConfig, {**cfg["calibrate"], "teacher": "t", "dataset": "d", "proxies": ["p"]})
    if cal.guide_samples:  # guided answers are asked for through the task's instruction channel
        assert task.ask(rows[0], cal.guide_ask).prompt != rows[0].prompt


def test_reseed_shifts_every_seed_of_the_experiment():
    """`--seed N`: the data, both bootstraps, the calibrations and every attack run under other seeds, so the
    demo's bars are checked on independent repeats (and a repeat reuses nothing from seed 0)."""
    from pipelines.experiment import reseed

    cfg = load_settings(EXPERIMENTS / "demo.yaml")
    two = reseed(cfg, 2)
    assert two["prep"]["seed"] == cfg["prep"]["seed"] + 2 and two["calibrate"]["seed"] == cfg["calibrate"]["seed"] + 2
    assert two["teacher"]["train"]["seed"] == 2 and two["proxy"]["train"]["seed"] == 2
    assert [j.seed for j in plan_attacks(two["attacks"], two["distill"])] == [
        j.seed + 2 for j in plan_attacks(cfg["attacks"], cfg["distill"])
    ]
    assert "seed" not in cfg["teacher"]["train"]  # the settings read are left as they were


def test_the_summary_says_why_no_hardened_model_was_published():
    from pipelines.experiment import table

    def summary(passed: bool, hardened: str = "") -> dict:
        gate = {"eta": -0.5, "direction": "undistillable", "passed": passed, "reasons": ["r"], "report": "x"}
        teacher = {"teacher": "original", "accuracy": 0.9, "retention": 1.0}
        return {"teachers": [teacher], "attacks": [], "gates": [{**gate, "hardened": hardened}]}

    assert table(summary(True, "file:///s/hardened/x"))[-1] == "hardened model: file:///s/hardened/x"
    assert "publish is off" in table(summary(True))[-1]
    assert "no undistillable gate passed" in table(summary(False))[-1]


def _gpu_knob():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_knob", BENCH / "gpu_knob.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_knob_settings_make_stage_configs_and_a_teacher_of_10_to_30m_parameters():
    """bench/gpu_knob.py runs once per device lease: its settings must make every stage config it asks for, and
    its teacher must be the size the issue asks for, before any lease is spent on it."""
    from dg_core.config import from_dict
    from dg_core.distill.stage import Config as DistillConfig
    from dg_core.models.zoo import ZooMember, build_model, build_tokenizer
    from dg_core.stages import get_stage

    mod = _gpu_knob()
    cfg = mod.settings()
    label = {"model": "teacher", "teacher": "original"}  # device "auto": a config naming cuda needs one here
    asks = {
        "prep": mod.stage_values(cfg["prep"], output="file:///tmp/unused"),
        "train": {**cfg["teacher"]["train"], "model": "m", "dataset": "d", "device": "auto"},
        "calibrate": mod.stage_values(
            cfg["calibrate"],
            teacher="t",
            proxies=["p"],
            dataset="d",
            eta=-0.5,
            device="auto",
            allow_zoo=True,
            progress=False,
        ),  # fmt: skip
        "evaluate": mod.stage_values(cfg["evaluate"], model="m", dataset="d", device="auto", label=label),
    }
    for stage, values in asks.items():
        from_dict(get_stage(stage).load().Config, values)
    assert cfg["teacher"]["train"]["lr"] == 0.001 and cfg["teacher"]["train"]["steps"] == 4000  # knob.yaml's length
    jobs = plan_attacks(cfg["attacks"], cfg["distill"])
    for j in jobs:
        from_dict(DistillConfig, {**j.settings, "teacher": "t", "dataset": "d", "seed": j.seed, "device": "auto"})
    assert {j.attack for j in jobs} >= {"student-neox/sft", "student-llama/kd"} and len(jobs) == 12
    model = build_model(ZooMember(**mod.TEACHER_20M), build_tokenizer("char"))
    assert 10e6 <= sum(p.numel() for p in model.parameters()) <= 30e6


@pytest.mark.slow
def test_gpu_knob_tiny_runs_every_stage_and_judges_each_eta(tmp_path):
    """The script's CPU check: every task runs in its own spawned process, and each eta gets a gate decision
    from the original and calibrated teachers and two seeds of students on each side."""
    import json
    import subprocess
    import sys

    out = tmp_path / "gk"
    p = subprocess.run(
        [sys.executable, str(BENCH / "gpu_knob.py"), "--tiny", "--out", str(out), "--workers", "2", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((out / "gpu_knob.json").read_text())
    assert res["failed"] == {} and res["skipped"] == []
    assert set(res["gates"]) == {"-0.5", "+0.5"}
    for g in res["gates"].values():
        assert g["retention"] is not None and g["teacher"]["original"] > 0
        assert g["attacks"]["student-llama/sft"]["seeds"] == {"original": 2, "calibrated": 2}
    assert "retention" in p.stdout and "eta -0.5" in p.stdout
