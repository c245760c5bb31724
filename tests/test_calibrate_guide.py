"""Off-policy guidance (``guide_ask``/``guide_samples``): the defence against the prompt attack. An obedient
teacher asked for worked solutions never samples a bare one, so GRPO has nothing to rank there; guided answers,
sampled on another request and trained as answers to the asked prompt, give it something."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator

from dg_core.base.generate import encode_prompt, generate_tokens, pack_texts
from dg_core.calibrate.grpo import CalibrationSettings, Learner, make_policy, rollout_step, run_calibration
from dg_core.calibrate.rewards import CalibrationReward, TaskReward
from dg_core.data import get_task
from dg_core.models import load_model

TASK_OPTS = dict(a_digits=1, b_digits=1, terms=1, term_digits=1, style_mix={"decomposed": 1.0, "compressed": 1.0})
SHOW, BARE = "show steps", "answer only"


@pytest.fixture(scope="module")
def task():
    return get_task("synthetic_math", **TASK_OPTS)


@pytest.fixture(scope="module")
def examples(task):
    return task.generate(200, 0)


@pytest.fixture(scope="module")
def obedient(zoo_root, task, examples):
    """A zoo teacher SFT'd to obey both requests (worked answers when asked to show steps, bare ones when asked
    for the answer only): ~10 s."""
    from dg_core.distill.trainer import response_ce, row_indices, train
    from dg_core.distill.training import TrainingConfig

    torch.set_num_threads(1)
    model, tok = load_model("zoo:teacher", device="cpu")
    rows = [
        (task.prompt(task.ask(e, ask), tok), e.meta["references"][style])
        for e in examples
        for ask, style in ((SHOW, "decomposed"), (BARE, "compressed"))
    ]

    def make_batch(step: int, micro: int):
        idx = row_indices(len(rows), 32, step, micro, seed=0)
        return pack_texts(tok, [rows[i][0] for i in idx], [rows[i][1] for i in idx])

    for p in model.parameters():
        p.requires_grad_(True)
    train(model, make_batch, response_ce, TrainingConfig(steps=120, lr=3e-3, warmup_steps=10), progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


@pytest.fixture(scope="module")
def proxy(zoo_root):
    return load_model("zoo:proxy", device="cpu")


def _settings(**kw) -> CalibrationSettings:
    base = dict(steps=8, prompts_per_step=8, group_size=4, max_new_tokens=24, lr=1e-3, beta=0.05, cal_gate="none")
    return CalibrationSettings(**{**base, "eval_every": 0, "seed": 0, **kw})


def _learner(policy, tok, task, cfg, cal) -> Learner:
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr)
    params = [p for p in policy.parameters() if p.requires_grad]
    acc = Accelerator(cpu=True)
    return Learner(policy, policy, opt, acc, params, tok, task, cfg, TaskReward(task), cal)


def _bare_share(model, tok, task, asked) -> float:
    roll = generate_tokens(model, tok, [task.prompt(e, tok) for e in asked], n=4, max_new_tokens=24, seed=99)
    return sum(t.lstrip().startswith("#") for t in roll.texts) / len(roll.texts)


def test_guided_answers_join_each_group_as_answers_to_the_asked_prompt(obedient, proxy, task, examples):
    base, tok = obedient
    cfg = _settings(eta=-1.0, guide_ask=BARE, guide_samples=2)
    policy, _ = make_policy(copy.deepcopy(base), cfg)
    cal = CalibrationReward(policy, tok, [proxy], normalize="char")
    asked = [task.ask(e, SHOW) for e in examples]
    ro = rollout_step(_learner(policy, tok, task, cfg, cal), asked, step=1)

    G, k = cfg.group_size, cfg.guide_samples
    assert ro.roll.n == G + k and len(ro.roll.texts) == len(ro.examples) * (G + k) == ro.advantages.numel()
    for i, e in enumerate(ro.examples):
        rows = range(i * (G + k), (i + 1) * (G + k))
        # every row, guided or not, is trained after the prompt the teacher was asked (show steps)
        assert all(ro.roll.prompt_ids[r] == encode_prompt(tok, task.prompt(e, tok)) for r in rows)
        own, guided = [ro.roll.texts[r] for r in rows][:G], [ro.roll.texts[r] for r in rows][G:]
        assert not any(t.startswith("#") for t in own), own  # the obedient teacher shows its steps when asked
        assert all(t.startswith("#") for t in guided), guided  # and answers bare when asked for the answer only
    # a guided answer's pi_0 term is scored after the prompt it was sampled on: after 'show steps' an obedient
    # pi_0 finds a bare answer far less likely, which would make r_cal measure obedience instead
    g = [r for r in range(len(ro.roll.texts)) if r % (G + k) >= G]
    plain = [task.prompt(ro.examples[r // (G + k)], tok) for r in g]
    on_asked = [task.prompt(task.ask(ro.examples[r // (G + k)], BARE), tok) for r in g]
    texts, fin = [ro.roll.texts[r] for r in g], [ro.roll.finished[r] for r in g]
    expected = cal(plain, texts, cal.reference_logprob(on_asked, texts, fin), fin)
    assert ro.r_cal[g].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    naive = cal(plain, texts, None, fin)
    assert float((naive - expected).mean()) > 1.0


def test_guidance_moves_an_obedient_teacher_where_grpo_alone_cannot(obedient, proxy, task, examples):
    base, tok = obedient
    asked = [task.ask(e, SHOW) for e in examples]
    held = asked[150:]
    assert _bare_share(base, tok, task, held) == 0.0
    # per character the proxy finds the bare answers less likely than the worked ones: eta < 0 prefers them
    probe = _settings(guide_ask=BARE, guide_samples=4)
    policy, _ = make_policy(copy.deepcopy(base), probe)
    cal = CalibrationReward(policy, tok, [proxy], normalize="char")
    ro = rollout_step(_learner(policy, tok, task, probe, cal), asked, step=1)
    guided = torch.tensor([r % 8 >= 4 for r in range(ro.r_cal.numel())])
    assert float(ro.r_cal[guided].mean()) < float(ro.r_cal[~guided].mean()) - 0.5

    shares = {}
    for k in (0, 4):
        cfg = _settings(eta=-1.0, guide_ask=BARE if k else "", guide_samples=k)
        policy, _ = make_policy(copy.deepcopy(base), cfg)
        cal = CalibrationReward(policy, tok, [proxy], normalize="char")
        run_calibration(policy, tok, task, asked[:150], cfg, cal_reward=cal, progress=False)
        shares[k] = _bare_share(policy, tok, task, held)
    assert shares[0] == 0.0, shares  # nothing sampled bare, nothing to rank
    assert shares[4] >= 0.25, shares


def test_guide_settings_fail_clearly():
    from dg_core.calibrate.stage import Config
    from dg_core.errors import DGError

    with pytest.raises(DGError, match="'guide_ask'.*'guide_samples'"):
        Config(teacher="zoo:teacher", dataset="x", proxies=["zoo:proxy"], guide_samples=2)
    with pytest.raises(DGError, match="'guide_ask'.*'guide_samples'"):
        Config(teacher="zoo:teacher", dataset="x", proxies=["zoo:proxy"], guide_ask=BARE)
    with pytest.raises(DGError, match="engine native"):
        Config(teacher="zoo:teacher", dataset="x", proxies=["zoo:proxy"], guide_ask=BARE, guide_samples=2, engine="trl")
