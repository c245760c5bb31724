"""The calibration objective's pure math, against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from dg_core.base.advantages import combine_advantages, gated_cal_advantage, group_standardize
from dg_core.calibrate.grpo import aggregate, clipped_pg_loss, k3_kl
from dg_core.calibrate.guards import early_stop_reason, gate, preflight
from dg_core.errors import DGError


def _brute_standardize(row: list[float], eps: float = 1e-6) -> list[float]:
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in row) / n)
    if n < 2 or std == 0:
        return [0.0] * n
    return [(x - mean) / (std + eps) for x in row]


def test_group_standardize_matches_brute_force_per_group():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(5, 7, generator=g) * 3 + 2
    got = group_standardize(r)
    for i in range(5):
        assert got[i].tolist() == pytest.approx(_brute_standardize(r[i].tolist()), abs=1e-5)
    # each group separately: zero mean, unit (population) std
    assert got.mean(1).abs().max() < 1e-5
    assert got.std(1, unbiased=False).sub(1).abs().max() < 1e-4


def test_group_standardize_constant_group_and_mask():
    r = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 5.0, 9.0]])
    mask = torch.tensor([[True, True, True, True], [False, True, True, False]])
    got = group_standardize(r, mask=mask)
    assert got[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # no spread: no signal
    assert got[1, 0] == 0 and got[1, 3] == 0  # masked out
    assert got[1, 1:3].tolist() == pytest.approx(_brute_standardize([2.0, 5.0]), abs=1e-5)
    one = group_standardize(torch.tensor([[3.0, 4.0]]), mask=torch.tensor([[True, False]]))
    assert one.tolist() == [[0.0, 0.0]]  # a single member has no group statistics


def test_rewards_standardised_separately_then_combined():
    r_task = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    r_cal = torch.tensor([[-10.0, -2.0, -50.0, -4.0]])  # scale far larger than r_task's
    a_task = group_standardize(r_task)
    a_cal = group_standardize(r_cal)
    # the knob's sign picks which correct sample is preferred: lowest r_cal for eta < 0, highest for eta > 0
    correct = [0, 1, 3]
    for eta, best in ((-1.0, 0), (-0.5, 0), (0.5, 1), (1.0, 1)):
        a = combine_advantages(a_task, a_cal, eta)[0]
        assert int(torch.argmax(a)) == best
        assert a[correct].sum() > 0 > a[2]  # the wrong sample stays the least preferred at moderate |eta|
        assert a.tolist() == pytest.approx([t + eta * c for t, c in zip(a_task[0].tolist(), a_cal[0].tolist())])
    # eta = 0 is plain RFT: the calibration reward has no influence at all
    assert combine_advantages(a_task, a_cal, 0.0).tolist() == a_task.tolist()
    # separate standardisation: r_cal's scale does not swamp r_task
    assert a_cal.abs().max() < 2.0


def test_correctness_gate_ignores_wrong_samples():
    r_task = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    r_cal = torch.tensor([[-1.0, -3.0, 40.0, -2.0, -90.0]])
    a = gated_cal_advantage(r_cal, r_task, "correct")
    assert a[0, 2] == 0 and a[0, 4] == 0
    assert a[0, [0, 1, 3]].tolist() == pytest.approx(_brute_standardize([-1.0, -3.0, -2.0]), abs=1e-5)
    # a wrong answer the proxy loves cannot pull the correct ones' advantages (ungated, it does)
    ungated = gated_cal_advantage(r_cal, r_task, "none")
    assert ungated[0, 2] > 1.0
    mult = gated_cal_advantage(r_cal, r_task, "multiply")
    assert mult[0, 2] == 0 and mult[0, 0] == pytest.approx(ungated[0, 0].item())
    with pytest.raises(DGError, match="cal_gate"):
        gated_cal_advantage(r_cal, r_task, "sometimes")


def test_k3_kl_matches_exact_kl_in_expectation():
    g = torch.Generator().manual_seed(1)
    logits_p = torch.randn(6, generator=g)
    logits_q = logits_p + 0.5 * torch.randn(6, generator=g)
    lp, lq = torch.log_softmax(logits_p, -1), torch.log_softmax(logits_q, -1)
    exact = float((lp.exp() * (lp - lq)).sum())  # KL(p || q), brute force over the vocabulary
    # expectation of k3 under p, computed exactly by enumeration
    k3_exact = float((lp.exp() * k3_kl(lp, lq)).sum())
    assert k3_exact == pytest.approx(exact, rel=1e-5)
    # and as a Monte-Carlo estimate from samples of p
    x = torch.multinomial(lp.exp(), 200_000, replacement=True, generator=g)
    mc = float(k3_kl(lp[x], lq[x]).mean())
    assert mc == pytest.approx(exact, rel=0.05)
    assert (k3_kl(lp, lq) >= 0).all()
    assert k3_kl(lp, lp).abs().max() == 0


def test_k3_kl_gradient_pulls_towards_reference():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    k3_kl(lp, ref).sum().backward()
    # d/dlogp (e^{ref-logp} - (ref-logp) - 1) = 1 - e^{ref-logp}
    assert lp.grad.tolist() == pytest.approx([1 - math.exp(-0.5), 1 - math.exp(1.0)], rel=1e-6)


def test_clipped_pg_loss_brute_force():
    logp = torch.tensor([[-1.0, -0.5, -2.0]])
    old = torch.tensor([[-1.2, -0.5, -1.0]])
    for adv in (1.5, -0.7):
        got = clipped_pg_loss(logp, old, torch.tensor([adv]), clip_eps=0.2, clip_eps_high=0.28)
        want = []
        for a, b in zip(logp[0].tolist(), old[0].tolist()):
            ratio = math.exp(a - b)
            want.append(-min(ratio * adv, min(max(ratio, 0.8), 1.28) * adv))
        assert got[0].tolist() == pytest.approx(want, rel=1e-6)
    # on-policy (ratio 1): gradient of the surrogate is -A * dlogp
    lp = torch.tensor([[-0.3, -0.9]], requires_grad=True)
    clipped_pg_loss(lp, lp.detach(), torch.tensor([2.0])).sum().backward()
    assert lp.grad.tolist() == [[-2.0, -2.0]]


def test_aggregate_token_and_sequence_means():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(aggregate(loss, mask, "token-mean", 4, 2)) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert float(aggregate(loss, mask, "seq-mean", 4, 2)) == pytest.approx((2.0 + 4.0) / 2)
    # split across micro-batches, the shares add up to the full-batch value
    parts = float(aggregate(loss[:1], mask[:1], "seq-mean", 4, 2)) + float(
        aggregate(loss[1:], mask[1:], "seq-mean", 4, 2)
    )
    assert parts == pytest.approx(3.0)


def test_guards_preflight_stop_and_gate():
    assert preflight(0.995, 400, 0.99).ok
    bad = preflight(0.9, 400, 0.99)
    assert not bad.ok and "not sound" in bad.reason and "0.900" in bad.reason
    assert early_stop_reason(eval_accuracy=0.8, base_accuracy=1.0, min_accuracy_ratio=0.9, kl=None, max_kl=0)
    assert early_stop_reason(eval_accuracy=0.95, base_accuracy=1.0, min_accuracy_ratio=0.9, kl=0.01, max_kl=0.1) is None
    assert "KL" in early_stop_reason(eval_accuracy=None, base_accuracy=None, min_accuracy_ratio=0, kl=0.2, max_kl=0.1)
    ok = gate(0.9, 0.88, 0.95)
    assert ok.passed and ok.retention == pytest.approx(0.88 / 0.9)
    failed = gate(0.9, 0.8, 0.95, stopped_reason="step 3: KL too high")
    assert not failed.passed and "below 0.950" in failed.reason and "KL too high" in failed.reason
    assert not gate(0.0, 0.5, 0.95).passed
