"""The TRL engine (``engine: trl``) against the native loop: same advantages and loss on the same rollouts, exact
resume through the store, and the early-stop guard."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter

import pytest
import torch

from dg_core.base.generate import generate_tokens
from dg_core.calibrate.grpo import (
    CalibrationSettings,
    Learner,
    Rollout,
    make_policy,
    policy_step,
    reference_logprobs,
    step_advantages,
)
from dg_core.calibrate.rewards import CalibrationReward, RewardInputs, TaskReward
from dg_core.calibrate.trl_engine import run_calibration_trl
from dg_core.checkpoint import Checkpointer
from dg_core.data import get_task
from dg_core.models import load_model

TASK_OPTS = dict(a_digits=1, b_digits=1, terms=1, term_digits=1)


@pytest.fixture(scope="module")
def task():
    return get_task("synthetic_math", **TASK_OPTS)


@pytest.fixture(scope="module")
def examples(task):
    return task.generate(100, 0)


@pytest.fixture(scope="module")
def models(zoo_root):
    torch.set_num_threads(1)
    base, tok = load_model("zoo:teacher", device="cpu")
    return base, tok, load_model("zoo:proxy", device="cpu")


def _same_length_prompts(task, examples, tok, n):
    """Prompts of one token length: TRL left-pads prompts without position ids, the native loop packs each row from
    position 0; with no prompt padding both forward passes see the very same positions."""
    lengths = Counter(len(tok(task.prompt(e, tok))["input_ids"]) for e in examples)
    width = lengths.most_common(1)[0][0]
    picked, seen = [], set()
    for e in examples:
        p = task.prompt(e, tok)
        if len(tok(p)["input_ids"]) == width and p not in seen:
            picked.append(e)
            seen.add(p)
    assert len(picked) >= n
    return picked[:n]


@pytest.mark.parametrize("cal_gate", ["correct", "none"])
def test_both_engines_compute_the_same_advantages_and_loss_on_the_same_rollouts(models, task, examples, cal_gate):
    """Feed both engines identical completions (some correct, so the r_cal gate bites); the advantages, the loss, the
    KL and the adapter after one update agree."""
    base, tok, proxy = models
    P, G = 4, 4
    batch = _same_length_prompts(task, examples, tok, P)
    cfg = CalibrationSettings(
        eta=-1.0,
        beta=0.1,
        steps=1,
        prompts_per_step=P,
        group_size=G,
        max_new_tokens=8,
        lr=1e-2,
        cal_gate=cal_gate,
        eval_every=0,
        seed=0,
    )
    prompts = [task.prompt(e, tok) for e in batch]
    roll = generate_tokens(base, tok, prompts, n=G, max_new_tokens=cfg.max_new_tokens, seed=11)
    # two correct answers in every group: r_cal's advantage among correct samples is not all zero
    for g, e in enumerate(batch):
        for j in (0, 1):
            ids = list(tok(f"#{e.answer}", add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
            roll.response_ids[g * G + j] = ids
            roll.texts[g * G + j] = f"#{e.answer}"
            roll.finished[g * G + j] = True

    # native: the policy step on these rollouts
    native, _ = make_policy(copy.deepcopy(base), cfg)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    params = [p for p in native.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    cal = CalibrationReward(native, tok, [proxy])
    learner = Learner(native, native, opt, acc, params, tok, task, cfg, TaskReward(task), cal)
    reps = [e for e in batch for _ in range(G)]
    inputs = RewardInputs(reps, lambda t: [task.prompt(e, t) for e in reps], roll.texts, roll.finished)
    r_task, r_cal = TaskReward(task).score(inputs), cal.score(inputs)
    assert 0 < float((r_task >= 1).float().mean()) < 1
    packed = roll.batch(tok.pad_token_id)
    ref_lp, old_lp = reference_logprobs(learner, packed)
    adv = step_advantages(r_task, r_cal, cfg)
    ro = Rollout(1, batch, roll, packed, ref_lp, old_lp, r_task, r_cal, adv)
    stats = policy_step(learner, ro)

    # TRL: the same completions handed back by rollout_func, whatever order its sampler picks the prompts in
    by_prompt = {p: (roll.prompt_ids[i * G], roll.response_ids[i * G : (i + 1) * G]) for i, p in enumerate(prompts)}

    def fixed(ps, trainer):
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": None}
        for k in range(0, len(ps), G):
            pid, comps = by_prompt[ps[k]]
            out["prompt_ids"] += [pid] * G
            out["completion_ids"] += comps
        return out

    trl_policy, _ = make_policy(copy.deepcopy(base), cfg)
    res = run_calibration_trl(
        trl_policy,
        tok,
        task,
        batch,
        dataclasses.replace(cfg, engine="trl"),
        cal_reward=CalibrationReward(trl_policy, tok, [proxy]),
        progress=False,
        rollout_func=fixed,
    )
    last = res.trainer.dg_last
    native_adv = {(prompts[i // G], roll.texts[i], i % G): float(adv[i]) for i in range(len(adv))}
    trl_rows = {}
    for i, p in enumerate(last["prompts"]):
        trl_rows[(p, i % G)] = float(last["advantages"][i])
    for (p, _, j), a in native_adv.items():
        assert trl_rows[(p, j)] == pytest.approx(a, abs=1e-4), (p, j)
    assert sorted(last["r_cal"].tolist()) == pytest.approx(sorted(r_cal.tolist()), abs=1e-4)
    row = res.history[0]
    assert row["loss"] == pytest.approx(stats["loss"], abs=1e-5)
    assert row["kl"] == pytest.approx(stats["kl"], abs=1e-6)
    assert row["grad_norm"] == pytest.approx(stats["grad_norm"], rel=1e-4)
    got = {n: p.detach() for n, p in trl_policy.named_parameters() if p.requires_grad}
    want = {n: p.detach() for n, p in native.named_parameters() if p.requires_grad}
    assert set(got) == set(want)
    assert max(float(w.abs().max()) for n, w in want.items() if "lora_B" in n) > 0  # the update did move it
    # Adam's first step moves each weight by about ±lr whatever its gradient's size, so an entry whose gradient is
    # float noise (~1e-9) may flip sign between two summation orders: compare the update as a whole
    init, _ = make_policy(copy.deepcopy(base), cfg)
    start = {n: p.detach() for n, p in init.named_parameters() if p.requires_grad}
    d_got = torch.cat([(got[n] - start[n]).flatten() for n in want])
    d_want = torch.cat([(want[n] - start[n]).flatten() for n in want])
    assert float(torch.nn.functional.cosine_similarity(d_got, d_want, dim=0)) > 0.999
    assert float(((d_got - d_want).abs() > 1e-5).float().mean()) < 1e-3


def test_trl_engine_resumes_exactly_after_a_kill(models, task, examples, tmp_path):
    base, tok, proxy = models
    cfg = CalibrationSettings(
        eta=-1.0,
        steps=4,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=8,
        lr=5e-3,
        cal_gate="none",
        eval_every=0,
        checkpoint_every=2,
        seed=3,
        engine="trl",
    )

    def fresh():
        policy, _ = make_policy(copy.deepcopy(base), cfg)
        return policy, CalibrationReward(policy, tok, [proxy])

    policy, cal = fresh()
    full = run_calibration_trl(policy, tok, task, examples, cfg, cal_reward=cal, progress=False)
    want = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert full.steps_done == 4 and len(full.history) == 4

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, row):
        if step == 3:
            raise Killed

    uri = (tmp_path / "ckpt").as_uri()
    policy, cal = fresh()
    with pytest.raises(Killed):
        run_calibration_trl(
            policy,
            tok,
            task,
            examples,
            cfg,
            cal_reward=cal,
            progress=False,
            checkpointer=Checkpointer(uri, 2),
            on_step=kill_at_3,
        )
    policy, cal = fresh()
    resumed = run_calibration_trl(
        policy, tok, task, examples, cfg, cal_reward=cal, progress=False, checkpointer=Checkpointer(uri, 2)
    )
    assert resumed.resumed_from == 2 and resumed.steps_done == 4
    got = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-6), n
    assert [h["reward_cal"] for h in resumed.history] == pytest.approx([h["reward_cal"] for h in full.history])


def test_trl_engine_kl_guard_stops_and_stays_stopped(models, task, examples, tmp_path):
    base, tok, proxy = models
    cfg = CalibrationSettings(
        eta=-1.0,
        steps=6,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=8,
        lr=5e-2,
        cal_gate="none",
        eval_every=0,
        stop_kl=1e-6,
        checkpoint_every=100,
        seed=1,
        engine="trl",
    )
    uri = (tmp_path / "ckpt").as_uri()
    policy, _ = make_policy(copy.deepcopy(base), cfg)
    cal = CalibrationReward(policy, tok, [proxy])
    res = run_calibration_trl(
        policy, tok, task, examples, cfg, cal_reward=cal, progress=False, checkpointer=Checkpointer(uri, 100)
    )
    assert res.history[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert res.stopped_reason and "KL" in res.stopped_reason and res.steps_done < 6
    policy2, _ = make_policy(copy.deepcopy(base), cfg)
    again = run_calibration_trl(
        policy2, tok, task, examples, cfg, cal_reward=cal, progress=False, checkpointer=Checkpointer(uri, 100)
    )
    assert again.steps_done == res.steps_done and again.stopped_reason == res.stopped_reason


def test_engine_auto_picks_trl_only_where_only_trl_runs():
    from dg_core.calibrate.stage import Config, resolve_engine
    from dg_core.config import from_dict
    from dg_core.errors import DGError

    def cfg(**kw):
        return from_dict(Config, {"teacher": "zoo:teacher", "dataset": "x", **kw})

    assert resolve_engine(cfg(), 1) == "native"  # the faster engine on one CPU process (bench/calibrate.py)
    assert resolve_engine(cfg(), 2) == "trl"
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # the CPU image: vLLM is the CUDA image's extra
        with pytest.raises(DGError, match="'use_vllm': vLLM is not installed here, expected the vllm extra"):
            resolve_engine(cfg(use_vllm=True), 1)
    else:
        assert resolve_engine(cfg(use_vllm=True), 1) == "trl"
    with pytest.raises(DGError, match="2 processes need engine trl"):
        resolve_engine(cfg(engine="native"), 2)
    with pytest.raises(DGError, match="'lora_r': 0 .* expected lora_r > 0"):
        resolve_engine(cfg(lora_r=0), 2)
    with pytest.raises(DGError, match="'use_vllm': vLLM rollouts run on engine trl"):
        cfg(engine="native", use_vllm=True)
