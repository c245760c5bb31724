"""Attack suite against an original and a 'calibrated' teacher, then the report built from its output."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from dg_core import report, store
from dg_core.config import from_dict
from dg_core.data import get_task
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl
from dg_core.distill import suite, train_stage
from dg_core.errors import DGError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", f"file://{root}")
    d = tmp_path_factory.mktemp("ds")
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    ex = task.generate(36, seed=0)
    write_jsonl(d / "train.jsonl", ex[:32])
    write_manifest(d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}}})
    common = {"model": "zoo:student-llama", "dataset": str(d), "batch_size": 32, "lr": 5e-3, "warmup_steps": 10}
    strong = train_stage.run(from_dict(train_stage.Config, {**common, "steps": 150}))["model"]
    weak = train_stage.run(from_dict(train_stage.Config, {**common, "steps": 40}))["model"]
    yield {"dataset": str(d), "strong": strong, "weak": weak}
    mp.undo()


def test_attack_table_transfer_and_report(world):
    cfg = from_dict(
        suite.Config,
        {
            "teacher": world["strong"],
            "calibrated": world["weak"],
            "dataset": world["dataset"],
            "eval_split": "train",
            "attacks": [{"student": "zoo:student-llama", "method": "sft", "steps": 60, "seeds": [0, 1]}],
            "distill": {"batch_size": 32, "lr": 5e-3, "warmup_steps": 10, "max_new_tokens": 24, "checkpoint_every": 0},
            "max_new_tokens": 24,
        },
    )
    out = suite.run(cfg)
    recs = out["records"]
    students = [r for r in recs if r["model"] == "student"]
    assert len(students) == 4 and {r["teacher"] for r in students} == {"original", "calibrated"}
    row = out["attacks"][0]
    orig = [r["accuracy"] for r in students if r["teacher"] == "original"]
    cal = [r["accuracy"] for r in students if r["teacher"] == "calibrated"]
    assert row["original"]["mean"] == pytest.approx(sum(orig) / 2)
    assert row["transfer"] == pytest.approx((sum(cal) / 2) / (sum(orig) / 2))
    t = out["teachers"]
    assert out["retention"] == pytest.approx(t["calibrated"]["accuracy"] / t["original"]["accuracy"])
    # The stronger teacher makes the better students, and students beat the random-init floor.
    assert t["original"]["accuracy"] > t["calibrated"]["accuracy"]
    assert row["original"]["mean"] > row["floor"]
    saved = suite.read_attack(out["attack"])
    assert saved["records"] == recs
    assert "| student-llama/sft |" in store.fetch(out["attack"]).joinpath("attack.md").read_text()
    # Records are what the release gate reads: it accepts them and computes the same transfer.
    from dg_core.gate import decide

    verdict = decide(recs, direction="undistillable", max_transfer=10.0, min_retention=0.0)
    assert verdict["passed"] is True, verdict

    rep = report.run(from_dict(report.Config, {"attacks": [out["attack"]]}))
    d = store.fetch(rep["report"])
    data = json.loads((d / "report.json").read_text())
    assert data["tradeoff"][0]["retention"] == pytest.approx(out["retention"])
    assert data["tradeoff"][0]["worst_transfer"] == pytest.approx(row["transfer"])
    page = (d / "report.html").read_text()
    imgs = [p.split("'")[0] for p in page.split("data:image/png;base64,")[1:]]
    assert len(imgs) == rep["plots"] == 2
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    assert "retention" in (d / "report.md").read_text()


def test_bad_attack_entries_fail_with_one_line(world):
    base = {"teacher": world["strong"], "dataset": world["dataset"]}
    with pytest.raises(DGError, match=r"attacks\[0\]\.seed"):
        from_dict(suite.Config, {**base, "attacks": [{"method": "sft", "seed": 1}]})
    with pytest.raises(DGError, match=r"attacks\[0\]\.bogus"):
        from_dict(suite.Config, {**base, "attacks": [{"method": "sft", "bogus": 1}]})
    with pytest.raises(DGError, match="seeds"):
        from_dict(suite.Config, {**base, "attacks": [{"method": "sft", "seeds": []}]})
    with pytest.raises(DGError, match="empty"):
        from_dict(report.Config, {})
