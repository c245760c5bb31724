"""`make demo` (pipelines/demo.py) at reduced size: the whole graph under kfp.local on two worker processes.

Checks the shape of what the demo prints and saves (both eta rows, every attack from every teacher, a gate
verdict per eta, the report paths) and that the terminal stays on one screen; not the knob's effect, which the
full-size demo and bench/knob.py measure (docs/results/demo.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DG_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pipelines.demo",
        "--store",
        (tmp_path / "store").as_uri(),
        "--dir",
        str(tmp_path / "demo"),
        *args,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_demo_small_prints_one_screen_with_both_etas_every_attack_and_gates(tmp_path):
    p = _demo(tmp_path, "--small")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert len(lines) < 60, p.stdout
    s = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [t["teacher"] for t in s["teachers"]] == ["original", "eta=-0.5", "eta=+0.5"]
    assert sorted(a["attack"] for a in s["attacks"]) == ["student-gpt2/sft", "student-llama/sft"]
    for a in s["attacks"]:
        assert {"original", "eta=-0.5", "eta=+0.5"} <= set(a)
    assert [(g["eta"], g["direction"]) for g in s["gates"]] == [(-0.5, "undistillable"), (0.5, "distillable")]
    for g in s["gates"]:
        assert isinstance(g["passed"], bool) and g["reasons"]
        assert Path(g["report"]).read_text().lstrip().lower().startswith(("<!doctype", "<html"))
        assert f"gate eta={g['eta']:+g} ({g['direction']}): {'PASSED' if g['passed'] else 'FAILED'}" in p.stdout
    # one start and one done line per task (14 tasks), then the table
    assert sum(" start " in line for line in lines) == sum(" done " in line for line in lines) == 14
    assert "hardened model:" in p.stdout
    # the runner's logs went to the file, not the terminal
    assert "KFP Executor" not in p.stdout + p.stderr
    assert "KFP Executor" in (tmp_path / "demo" / "demo.log").read_text()


def test_demo_failure_prints_one_line_reason_and_log_path(tmp_path):
    p = _demo(tmp_path, "--small", "teacher.model=zoo:no-such-member")
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 2, p.stderr
    assert err[0].startswith("demo failed: task 'bootstrap teacher (train)' failed: ") and "no-such-member" in err[0]
    assert err[1] == f"log: {tmp_path / 'demo' / 'demo.log'}"


def test_demo_bad_setting_fails_before_running(tmp_path):
    p = _demo(tmp_path, "etas_typo=[1]")
    assert p.returncode == 2
    assert "demo setting 'etas_typo=[1]': expected key=value with key one of" in p.stderr
    assert not (tmp_path / "demo" / "kfp").exists()
