"""Length limits are checked before any generation: one line naming the model, exit 2, nothing published."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dg_core import store
from dg_core.data import get_task
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", f"file://{root}")
    mp.setenv("DG_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    d = tmp_path_factory.mktemp("ds")
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    ex = task.generate(8, seed=0)
    for split in ("train", "test"):
        write_jsonl(d / f"{split}.jsonl", ex)
    write_manifest(
        d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}, "test": {"file": "test.jsonl"}}}
    )
    yield {"root": f"file://{root}", "dataset": str(d)}
    mp.undo()


def _cli(world, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "DG_STORE_ROOT": world["root"], "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dg_core.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_evaluate_past_the_context_is_one_line_naming_the_model(world):
    t0 = time.perf_counter()
    r = _cli(world, "evaluate", "model=zoo:student-gpt2", f"dataset={world['dataset']}", "max_new_tokens=400")
    assert r.returncode == 2, r.stderr[-2000:]
    err = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
    assert len(err) == 1 and "Traceback" not in r.stderr
    assert "zoo:student-gpt2" in err[0] and "context of" in err[0] and "max_new_tokens=400" in err[0]
    assert "TokenizersBackend" not in r.stderr and "IndexError" not in r.stderr
    assert not store.list_artifacts(store.join(world["root"], "evals"))
    assert time.perf_counter() - t0 < 120


def test_diagnose_checks_both_models_and_cross_scoring_before_generating(world):
    from dg_core.config import from_dict
    from dg_core.errors import DGError
    from dg_core.traps import diagnose

    base = {"teacher": "zoo:teacher", "student": "zoo:student-gpt2", "dataset": world["dataset"], "n_examples": 4}
    # the teacher alone fits 240 new tokens, but the student cannot hold them (nor its own 240 after its prompt)
    cfg = from_dict(diagnose.Config, {**base, "max_new_tokens": 240})
    with pytest.raises(DGError, match=r"^(student zoo:student-gpt2|teacher zoo:teacher): context of \d+ positions"):
        diagnose.run(cfg)
    assert not store.list_artifacts(store.join(world["root"], "diagnose"))


def test_kd_across_vocabularies_is_refused_before_the_teacher_is_sampled(world):
    from dg_core.config import from_dict
    from dg_core.distill import stage
    from dg_core.errors import DGError

    cfg = from_dict(
        stage.Config,
        {
            "teacher": "zoo:teacher",
            "student": "zoo:student-gpt2",
            "dataset": world["dataset"],
            "method": "kd",
            "steps": 1,
        },
    )
    with pytest.raises(DGError, match="student zoo:student-gpt2 does not share teacher zoo:teacher's vocabulary"):
        stage.run(cfg)
    assert not store.list_artifacts(store.join(world["root"], "signals"))


def test_a_random_init_proxy_is_refused_as_not_modelling_the_text(world):
    """A random-init model sits at a uniform guess over its vocabulary on the task's text (ratio ~1): refused by
    name; max_ratio=0 only measures."""
    from dg_core.errors import DGError
    from dg_core.models import load_model
    from dg_core.models.limits import check_models_text, is_real_model

    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    texts = [t for e in task.generate(8, seed=0) for t in (e.prompt, e.reference)]
    model, tok = load_model("zoo:proxy", device="cpu")
    assert not is_real_model(model) and not is_real_model("zoo:proxy")
    with pytest.raises(
        DGError,
        match=r"proxy zoo:proxy does not model the task's text: .* \(ratio (0\.9\d|1\.\d\d), expected <= 0\.75\)",
    ):
        check_models_text(model, tok, texts, max_ratio=0.75, name="zoo:proxy")
    assert check_models_text(model, tok, texts, max_ratio=0, name="zoo:proxy") > 0.9


def test_a_zoo_teacher_with_a_zoo_proxy_only_warns(world, caplog):
    """The zoo world (toy teacher, random proxy) is the plumbing demo: the text check warns and calibration runs."""
    import logging

    from dg_core.calibrate import stage
    from dg_core.config import from_dict

    cfg = from_dict(
        stage.Config,
        dict(teacher="zoo:teacher", dataset=world["dataset"], train_split="train", eval_split="test", steps=1,
             prompts_per_step=2, group_size=2, max_new_tokens=8, eval_n=2, sampled_k=1, preflight_accuracy=0,
             device="cpu", progress=False, checkpoint_every=0, output=f"{world['root']}/calib-zoo"),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dg_core.calibrate.stage"):
        summary = stage.run(cfg)
    assert summary["status"] == "failed"  # untrained teacher: accuracy 0, stopped after the measurement
    import json

    card = json.loads((store.fetch(summary["card"]) / "card.json").read_text())
    assert card["teacher"]["sha256"] and card["proxies"][0]["sha256"]  # zoo: refs were null before
    before = summary["before"]
    assert 0.0 <= before["truncation_rate"] <= 1.0 and before["tokens_per_second"] > 0 and before["seconds"] > 0
    assert any("does not model the task's text" in r.getMessage() and "zoo-sized" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_card_provenance_covers_local_dirs_and_zoo_refs(world, tmp_path):
    """The same files give the same digest as a local directory and as a published artifact; zoo refs resolve."""
    from dg_core.calibrate.card import artifact_digest
    from dg_core.models.zoo import ensure

    d = store.fetch(ensure("proxy"))
    local = tmp_path / "proxy"
    local.mkdir()
    for p in d.iterdir():
        if p.name != store.MANIFEST:
            (local / p.name).write_bytes(p.read_bytes())
    published = artifact_digest(ensure("proxy"))
    assert published and artifact_digest("zoo:proxy") == published == artifact_digest(str(local))
    (local / "config.json").write_text((local / "config.json").read_text() + " ")
    assert artifact_digest(str(local)) != published
    assert artifact_digest("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_diagnose_budgets_the_teacher_and_the_student_separately(world):
    """student_max_new_tokens is the student's own budget: checked against the student's context (and the teacher
    scoring its responses), while the teacher keeps its budget; 0 falls back to max_new_tokens."""
    from dg_core.config import from_dict
    from dg_core.data import task_of, with_task_budget
    from dg_core.errors import DGError
    from dg_core.traps import diagnose

    base = {"teacher": "zoo:teacher", "student": "zoo:student-gpt2", "dataset": world["dataset"], "n_examples": 2}
    cfg = from_dict(diagnose.Config, {**base, "max_new_tokens": 8, "student_max_new_tokens": 300})
    assert cfg.student_budget() == 300
    with_task = with_task_budget(from_dict(diagnose.Config, base))  # 0 everywhere: the task's budget for both
    assert with_task.max_new_tokens == with_task.student_budget() == task_of(world["dataset"]).max_new_tokens == 64
    with pytest.raises(DGError, match=r"^student zoo:student-gpt2: context of 256 positions, .*max_new_tokens=300"):
        diagnose.run(cfg)
