"""Attack methods end to end on synthetic math with zoo models: each improves a student over its floor, signals
are produced once, and a run killed mid-way resumes to the same result as an uninterrupted one.

Budgets are tiny: a 32-prompt multiplication table, a char-level teacher trained for 200 steps, students for
~100 steps. Accuracy is measured on the prompts the teacher was queried on (what the student could copy).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from dg_core import store
from dg_core.config import from_dict
from dg_core.data import get_task
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl
from dg_core.distill import stage, train_stage
from dg_core.distill.signals import build_signals, load_signals
from dg_core.errors import DGError
from dg_core.evaluate import Config as EvalConfig
from dg_core.evaluate import evaluate_ref

pytestmark = pytest.mark.slow

COMMON = {"batch_size": 32, "lr": 5e-3, "warmup_steps": 10, "checkpoint_every": 0, "max_new_tokens": 24}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store, a dataset and a trained teacher shared by the module's tests."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("store")
    mp = pytest.MonkeyPatch()
    mp.setenv("DG_STORE_ROOT", f"file://{root}")
    mp.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path_factory.mktemp("ds")
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    ex = task.generate(36, seed=0)
    write_jsonl(d / "train.jsonl", ex[:32])
    write_jsonl(d / "test.jsonl", ex[32:])
    write_manifest(
        d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}, "test": {"file": "test.jsonl"}}}
    )
    teacher = train_stage.run(
        from_dict(train_stage.Config, {"model": "zoo:student-llama", "dataset": str(d), "steps": 200, **_train(COMMON)})
    )["model"]
    yield {"dataset": str(d), "teacher": teacher, "root": f"file://{root}"}
    mp.undo()


def _train(c: dict) -> dict:
    return {k: v for k, v in c.items() if k != "max_new_tokens"}


def acc(model: str, dataset: str) -> dict:
    cfg = from_dict(EvalConfig, {"model": model, "dataset": dataset, "split": "train", "k": 0, "max_new_tokens": 24})
    return evaluate_ref(cfg)


def distill(world: dict, **kw) -> dict:
    return stage.run(
        from_dict(stage.Config, {"teacher": world["teacher"], "dataset": world["dataset"], **COMMON, **kw})
    )


def test_teacher_knows_the_task(world):
    assert acc(world["teacher"], world["dataset"])["greedy_accuracy"] >= 0.9


@pytest.mark.parametrize(
    "student,method,extra",
    [
        ("zoo:student-llama", "sft", {}),
        ("zoo:student-llama", "kd", {"kind": "forward", "topk": 8}),
        ("zoo:student-gpt2", "xtok", {"xtok_loss": "align"}),
        ("zoo:student-gpt2", "xtok", {"xtok_loss": "uld", "ce_weight": 1.0}),
        ("zoo:student-neox", "xtok", {"xtok_loss": "align"}),  # digits merged: spans align across pieces
    ],
)
def test_method_beats_undistilled_floor(world, student, method, extra):
    from dg_core.data import load_split, task_of
    from dg_core.distill.common import load_trainable
    from dg_core.distill.training import TrainingConfig
    from dg_core.evaluate import evaluate_model

    floor_model, tok = load_trainable(student, seed=1, reinit=True, settings=TrainingConfig())
    floor = evaluate_model(
        floor_model.eval(),
        tok,
        task_of(world["dataset"]),
        load_split(world["dataset"], "train"),
        k=0,
        max_new_tokens=24,
    )
    out = distill(world, student=student, method=method, reinit=True, seed=1, steps=100, **extra)
    got = acc(out["model"], world["dataset"])
    assert got["greedy_accuracy"] >= floor["greedy_accuracy"] + 0.2, (method, extra, got["greedy_accuracy"])
    assert got["greedy_ci95"][0] > floor["greedy_ci95"][1]


def test_gkd_improves_an_sft_started_student(world):
    """On-policy KD needs a student that already writes answers (from random init its samples are noise)."""
    start = distill(world, student="zoo:student-llama", method="sft", reinit=True, seed=1, steps=40)["model"]
    floor = acc(start, world["dataset"])["greedy_accuracy"]
    out = distill(world, student=start, method="gkd", lmbda=0.5, seed=1, steps=60, lr=3e-3, warmup_steps=5)
    assert out["mean_on_policy_fraction"] == pytest.approx(0.5)
    got = acc(out["model"], world["dataset"])["greedy_accuracy"]
    assert got >= floor + 0.15, (floor, got)


def test_signals_are_generated_once_and_consistent(world):
    from dg_core.models import load_tokenizer

    cfg = from_dict(stage.Config, {"teacher": world["teacher"], "dataset": world["dataset"], "method": "kd", "topk": 5})
    uri = build_signals(cfg, topk=cfg.signals_topk())
    before = store.read_manifest(uri)["created"]
    assert build_signals(cfg, topk=cfg.signals_topk()) == uri
    assert store.read_manifest(uri)["created"] == before
    sig = load_signals(uri)
    tok = load_tokenizer(world["teacher"])
    assert len(sig.rows) == 2 * 32 and sig.has_topk
    for r in sig.rows[:8]:
        body = r.token_ids[:-1] if r.finished else r.token_ids
        assert tok.decode(body, skip_special_tokens=True) == r.response
        assert r.offsets[-1][1] == len(r.response) and len(r.offsets) == len(r.token_ids)
        assert r.topk_ids.shape == (len(r.token_ids), 5)
        # top-k log-probs are sorted and the sampled token's log-prob never exceeds the best one
        assert torch.all(r.topk_logprobs[:, :-1] >= r.topk_logprobs[:, 1:])
        assert torch.all(r.token_logprobs <= r.topk_logprobs[:, 0] + 1e-5)


def test_kd_refuses_a_student_with_another_tokenizer(world):
    with pytest.raises(DGError, match="xtok"):
        distill(world, student="zoo:student-gpt2", method="kd", reinit=True, steps=2)


def test_killed_run_resumes_to_the_same_student(world, tmp_path):
    """An exception at step 13 (after the checkpoint at 10) then a restart ends where an uninterrupted run
    does: same weights (atol 1e-6) and same final loss. gpt2 has dropout, so the RNG streams must resume too."""
    kw = dict(
        student="zoo:student-gpt2", method="xtok", reinit=True, dropout=True, seed=3, steps=20, checkpoint_every=10
    )
    ref = distill(world, output=f"{world['root']}/resume/ref", **kw)

    class Boom(RuntimeError):
        pass

    def kill(step: int, loss: float) -> None:
        if step == 13:
            raise Boom()

    out = f"{world['root']}/resume/killed"
    cfg = from_dict(
        stage.Config, {"teacher": world["teacher"], "dataset": world["dataset"], **COMMON, **kw, "output": out}
    )
    with pytest.raises(Boom):
        stage.run(cfg, on_step=kill)
    assert not store.is_published(out)
    assert store.read_manifest(out + ".ckpt")["metadata"]["step"] == 10
    resumed = stage.run(cfg)
    assert resumed["resumed_from"] == 10
    assert resumed["final_loss"] == pytest.approx(ref["final_loss"], abs=1e-6)
    a = load_file(str(store.fetch(ref["model"]) / "model.safetensors"))
    b = load_file(str(store.fetch(resumed["model"]) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # A finished run is not repeated.
    assert stage.run(cfg)["reused"] is True


def test_lora_distillation_publishes_merged_plain_weights(world):
    out = distill(world, student=world["teacher"], method="sft", lora=True, lora_r=4, steps=5, lr=1e-2)
    got = load_file(str(store.fetch(out["model"]) / "model.safetensors"))
    base = load_file(str(store.fetch(world["teacher"]) / "model.safetensors"))
    assert got.keys() == base.keys()  # no adapter tensors: merged into the base weights
    changed = [k for k in base if not torch.equal(base[k], got[k])]
    assert changed and all("proj" in k for k in changed)  # LoRA touched the linear layers only


def test_cli_reports_bad_input_in_one_line(world, capsys):
    from dg_core.cli import main

    code = main(["distill", f"teacher={world['teacher']}", f"dataset={world['dataset']}", "method=bogus"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "method" in err[0] and "sft" in err[0]
    code = main(
        ["attack", f"teacher={world['teacher']}", f"dataset={world['dataset']}", "attacks=[{method: sft, seed: 1}]"]
    )
    assert code == 2 and "attacks[0].seed" in capsys.readouterr().err
