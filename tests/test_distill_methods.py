"""The per-method layout: training options declared once, each method's config adding only its own fields, and
the gkd student's own token budget (issue 12 item 5). Zoo models, untrained: seconds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dg_core.config import from_dict
from dg_core.data import get_task
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl
from dg_core.distill import methods, stage, train_stage
from dg_core.distill.methods import gkd, kd, sft, xtok
from dg_core.distill.methods.base import DivergenceConfig
from dg_core.distill.signals import SignalsConfig, build_signals, load_signals, signal_spec
from dg_core.distill.training import TrainingConfig
from dg_core.errors import DGError


def _names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_training_options_are_declared_once_and_stages_only_change_defaults():
    shared = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    for cfg in (stage.Config, train_stage.Config):
        fields = {f.name: f for f in dataclasses.fields(cfg)}
        for name, f in shared.items():
            assert fields[name].metadata == f.metadata, f"{cfg.__module__}.{name} restates its help or bounds"
    assert train_stage.Config(dataset="d").steps == 1000 and stage.Config(teacher="t", dataset="d").steps == 300


def test_each_method_config_adds_only_its_own_fields():
    div = _names(DivergenceConfig)
    assert _names(sft.Config) == set()
    assert _names(kd.Config) - div == {"topk"}
    assert _names(gkd.Config) - div == {"lmbda", "reduction", "student_max_new_tokens", "sft_steps"}
    assert _names(xtok.Config) - _names(kd.Config) == {"xtok_loss"}
    # and the stage config is exactly the union of the parts plus its own few fields
    parts = _names(TrainingConfig) | _names(SignalsConfig) | _names(gkd.Config) | _names(xtok.Config)
    assert _names(stage.Config) - parts == {"student", "method", "dropout", "keep", "output", "allow_zoo"}


@pytest.fixture()
def tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("DG_STORE_ROOT", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tmp_path / "ds"
    d.mkdir()
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
    ex = task.generate(8, seed=0)
    write_jsonl(d / "train.jsonl", ex)
    write_manifest(d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}}})
    return str(d)


def _cfg(ds: str, **kw) -> stage.Config:
    base = {"teacher": "zoo:student-llama", "student": "zoo:student-llama", "dataset": ds, "method": "gkd"}
    return from_dict(stage.Config, {**base, "max_new_tokens": 4, "batch_size": 4, "lmbda": 1.0, **kw})


def test_gkd_student_samples_on_its_own_budget(tiny):
    from dg_core.data import task_of
    from dg_core.models import load_model

    torch.manual_seed(0)
    teacher = load_model("zoo:student-llama", device="cpu")
    student, tok = load_model("zoo:student-llama", device="cpu")
    for budget, longest in ((0, 4), (12, 12)):  # 0: the teacher's max_new_tokens
        cfg = _cfg(tiny, student_max_new_tokens=budget, sample_temperature=3.0)
        sig = load_signals(build_signals(cfg, teacher=teacher))
        ctx = methods.Context(student, tok, sig, task_of(tiny), cfg, teacher=teacher, max_new_tokens=4)
        batch = methods.build("gkd", cfg, ctx).make_batch(0, 0)
        resp = batch.tokens.targets_mask().sum(-1)
        assert int(resp.max()) == longest  # an untrained student at T=3 does not stop early
        assert batch.info["on_policy_fraction"] == 1.0


def test_gkd_student_budget_past_its_context_is_refused_before_sampling(tiny):
    from dg_core import store
    from dg_core.distill.signals import default_signals_uri

    cfg = _cfg(tiny, student_max_new_tokens=400)
    with pytest.raises(DGError, match=r"student zoo:student-llama: context of 256 .*student_max_new_tokens=400"):
        stage.run(cfg)
    assert not store.is_published(default_signals_uri(cfg, cfg.signals_topk()))


def _world(ds: str, **kw):
    from dg_core.data import task_of
    from dg_core.models import load_model

    torch.manual_seed(0)
    teacher = load_model("zoo:student-llama", device="cpu")
    student, tok = load_model("zoo:student-llama", device="cpu")
    cfg = _cfg(ds, **kw)
    sig = load_signals(build_signals(cfg, teacher=teacher))
    return cfg, sig, teacher, student, tok, task_of(ds)


def test_keep_correct_trains_only_on_samples_the_scorer_accepts(tiny):
    """The adaptive attacker with a verifier: an untrained teacher is never right, so two samples are made
    right by hand; only they remain, and a teacher with none right is refused in one line."""
    cfg, sig, teacher, student, tok, task = _world(tiny, method="sft", n_samples=2)
    assert not any(task.score(sig.examples[r.example_id], r.response).correct for r in sig.rows)
    ctx = methods.Context(student, tok, sig, task, cfg, keep="correct")
    with pytest.raises(DGError, match="keep=correct, but none of the 16 teacher samples is correct"):
        methods.build("sft", cfg, ctx)
    fixed = [sig.rows[0], sig.rows[5]]
    for r in fixed:
        r.response = sig.examples[r.example_id].reference  # the worked answer the scorer accepts
    m = methods.build("sft", cfg, ctx)
    assert m.rows == fixed
    assert len(methods.build("sft", cfg, methods.Context(student, tok, sig, task, cfg)).rows) == 16


def test_ask_samples_the_teacher_on_the_request_and_trains_the_student_on_the_plain_question(tiny):
    """The prompt attack: the teacher's samples answer the asked prompt (a separate signals address), while the
    student's batch is built from the dataset's own prompt."""
    from dg_core.distill.signals import default_signals_uri

    cfg, sig, teacher, student, tok, task = _world(tiny, method="sft", n_samples=1, ask="show steps")
    plain = _cfg(tiny, method="sft", n_samples=1)
    assert sig.uri != default_signals_uri(plain) and sig.spec["ask"] == "show steps" and "ask" not in signal_spec(plain)
    for r in sig.rows:
        assert r.prompt == task.prompt(sig.examples[r.example_id]).replace("\n", " show steps\n")
    m = methods.build("sft", cfg, methods.Context(student, tok, sig, task, cfg))
    ids = m.make_batch(0, 0).tokens.input_ids[0].tolist()
    text = tok.decode(ids, skip_special_tokens=True)
    assert "show steps" not in text and any(text.startswith(task.prompt(e)) for e in sig.examples.values())


def test_gkd_sft_warm_start_then_on_policy(tiny):
    """``sft_steps``: teacher samples and cross-entropy only (the teacher is not run), then the student's own."""
    cfg, sig, teacher, student, tok, task = _world(tiny, sft_steps=2, sample_temperature=3.0)
    ctx = methods.Context(student, tok, sig, task, cfg, teacher=teacher, max_new_tokens=4)
    m = methods.build("gkd", cfg, ctx)
    warm, on = m.make_batch(1, 0), m.make_batch(2, 0)
    assert warm.info == {"on_policy_fraction": 0.0, "sft": 1.0} and on.info["on_policy_fraction"] == 1.0
    teacher_samples = {tuple(r.token_ids) for r in m.rows}
    tb = warm.tokens
    assert all(
        tuple(tb.input_ids[i][tb.response_mask[i]].tolist()) in teacher_samples for i in range(len(tb.input_ids))
    )
    calls = []
    handle = teacher[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        out = m.loss(student, warm)
        assert not calls and set(out.stats) >= {"ce", "sft"}
        ce = methods.base.cross_entropy(
            student(input_ids=warm.tokens.input_ids, attention_mask=warm.tokens.attention_mask).logits[:, :-1],
            warm.tokens,
        )[0]
        assert float(out.loss.detach()) == pytest.approx(float(ce.detach()))
        m.loss(student, on)
        assert calls  # on-policy steps are scored by the teacher
    finally:
        handle.remove()
