"""Evaluation: accuracies agree with the task scorer applied by hand, CIs behave, eval.json is published."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dg_core import store
from dg_core.base.generate import generate
from dg_core.config import from_dict
from dg_core.data import get_task, load_split
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl
from dg_core.distill import train_stage
from dg_core.errors import DGError
from dg_core.evaluate import Config, bootstrap_ci, read_eval, run
from dg_core.models import load_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", f"file://{root}")
    d = tmp_path_factory.mktemp("ds")
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0, style_mix={"decomposed": 1, "compressed": 1})
    ex = task.generate(36, seed=0)
    write_jsonl(d / "train.jsonl", ex[:32])
    write_manifest(d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}}})
    cfg = {"model": "zoo:student-llama", "dataset": str(d), "steps": 80, "batch_size": 32, "lr": 5e-3}
    model = train_stage.run(from_dict(train_stage.Config, cfg))["model"]
    yield {"dataset": str(d), "model": model, "task": task}
    mp.undo()


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 20).astype(float)
    big = rng.integers(0, 2, 2000).astype(float)
    lo, hi = bootstrap_ci(small)
    assert lo <= small.mean() <= hi
    blo, bhi = bootstrap_ci(big)
    assert bhi - blo < (hi - lo) / 4
    assert bootstrap_ci([1.0] * 10) == [1.0, 1.0]


def test_eval_matches_scorer_by_hand_and_is_published(trained):
    out = run(
        from_dict(
            Config,
            {
                "model": trained["model"],
                "dataset": trained["dataset"],
                "split": "train",
                "k": 3,
                "max_new_tokens": 24,
                "label": {"model": "teacher", "teacher": "original"},
            },
        )
    )
    examples = load_split(trained["dataset"], "train")
    model, tok = load_model(trained["model"])
    task = trained["task"]
    greedy = generate(model, tok, [task.prompt(e, tok) for e in examples], do_sample=False, max_new_tokens=24)
    by_hand = np.mean([task.score(e, g[0]).correct for e, g in zip(examples, greedy)])
    assert out["greedy_accuracy"] == pytest.approx(by_hand)
    assert out["greedy_accuracy"] > 0.0  # the trained model answers some prompts right
    lo, hi = out["greedy_ci95"]
    assert lo <= out["greedy_accuracy"] <= hi
    assert 0.0 <= out["sampled_accuracy"] <= 1.0
    assert out["record"] == {
        "model": "teacher",
        "teacher": "original",
        "accuracy": out["accuracy"],
        "n": 32,
        "uri": trained["model"],
    }
    saved = read_eval(out["eval"])
    assert saved["greedy_accuracy"] == out["greedy_accuracy"]
    # per-style table: counts add up and the overall accuracy is their weighted mean
    groups = saved["groups"]
    assert set(groups) == {e.meta["style"] for e in examples}
    assert sum(g["n"] for g in groups.values()) == 32
    weighted = sum(g["n"] * g["greedy_accuracy"] for g in groups.values()) / 32
    assert weighted == pytest.approx(saved["greedy_accuracy"])
    rows = (store.fetch(out["eval"]) / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 32 and len(json.loads(rows[0])["samples"]) == 3


def test_bad_config_is_one_line(trained):
    with pytest.raises(DGError, match="'model' is required"):
        from_dict(Config, {"dataset": trained["dataset"]})
    with pytest.raises(DGError, match="measures nothing"):
        from_dict(Config, {"model": "zoo:teacher", "dataset": trained["dataset"], "greedy": False, "k": 0})


def test_eval_records_time_tokens_per_second_and_truncation_and_logs_progress(trained, caplog):
    """A budget of 2 tokens cuts every answer off: truncation rate 1; the rates and seconds are in eval.json, and
    a run without a terminal logs progress lines (sequences done, ETA)."""
    import logging

    cfg = {"model": trained["model"], "dataset": trained["dataset"], "split": "train", "k": 2, "max_new_tokens": 2}
    with caplog.at_level(logging.INFO, logger="dg_core.evaluate"):
        out = run(from_dict(Config, {**cfg, "batch_size": 16}))
    saved = read_eval(out["eval"])
    assert saved["truncation_rate"] == 1.0
    assert set(saved["timing"]) == {"greedy", "sampled"}
    assert saved["timing"]["greedy"]["tokens"] == 32 * 2 and saved["timing"]["sampled"]["tokens"] == 64 * 2
    assert saved["seconds"] > 0 and saved["tokens_per_second"] > 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate seq ")]
    assert lines and lines[-1].startswith("evaluate seq 96/96") and "ETA" in lines[-1]
