"""KL toolkit against brute-force numpy references (python loops over the vocabulary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dg_core.base import kl
from dg_core.errors import DGError


def _softmax(x: np.ndarray, temp: float = 1.0) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64) / temp
    e = np.exp(x - x.max())
    return e / e.sum()


def _kl(a, b) -> float:
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)


def _ref(p, q, kind, beta=0.5, alpha=0.1) -> float:
    """Brute-force divergence of two probability vectors (float64, python loop)."""
    if kind == "forward":
        return _kl(p, q)
    if kind == "reverse":
        return _kl(q, p)
    if kind == "jsd":
        if beta == 0:
            return _kl(p, q)
        if beta == 1:
            return _kl(q, p)
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * _kl(p, m) + (1 - beta) * _kl(q, m)
    if kind == "skew_forward":
        return _kl(p, [alpha * pi + (1 - alpha) * qi for pi, qi in zip(p, q)])
    if kind == "skew_reverse":
        return _kl(q, [alpha * qi + (1 - alpha) * pi for pi, qi in zip(p, q)])
    if kind == "tvd":
        return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q))
    raise AssertionError(kind)


def _logits(b=2, t=5, v=37, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, v, generator=g) * scale, torch.randn(b, t, v, generator=g) * scale


@pytest.mark.parametrize("kind", kl.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_divergence_matches_brute_force(kind, temperature):
    tl, sl = _logits()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    got = kl.token_divergence(tl, sl, kind, mask=mask, temperature=temperature, beta=0.3, alpha=0.2)
    assert got.shape == (2, 5)
    for b in range(2):
        for t in range(5):
            if not mask[b, t]:
                assert got[b, t] == 0
                continue
            p, q = _softmax(tl[b, t].numpy(), temperature), _softmax(sl[b, t].numpy(), temperature)
            assert got[b, t].item() == pytest.approx(_ref(p, q, kind, beta=0.3, alpha=0.2), rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_jsd_endpoints_follow_trl_convention(beta):
    tl, sl = _logits(seed=1)
    want = kl.forward_kl(tl, sl) if beta == 0 else kl.reverse_kl(tl, sl)
    torch.testing.assert_close(kl.generalized_jsd(tl, sl, beta=beta), want)


@pytest.mark.parametrize("kind", kl.KINDS)
def test_chunked_equals_unchunked(kind):
    tl, sl = _logits(b=3, t=7, v=101, seed=2)
    whole = kl.token_divergence(tl, sl, kind, chunk_rows=10_000)
    by_rows = kl.token_divergence(tl, sl, kind, chunk_rows=2)
    by_vocab = kl.token_divergence(tl, sl, kind, chunk_rows=3, vocab_chunk=16)
    torch.testing.assert_close(by_rows, whole)
    torch.testing.assert_close(by_vocab, whole, rtol=1e-5, atol=1e-6)


def test_chunked_gradients_match_unchunked():
    tl, sl = _logits(b=2, t=6, v=50, seed=3)
    grads = []
    for chunk_rows, vocab_chunk in ((None, None), (2, None), (3, 7)):
        s = sl.clone().requires_grad_(True)
        t = tl.clone().requires_grad_(True)
        loss = kl.token_divergence(t, s, "jsd", beta=0.4, chunk_rows=chunk_rows, vocab_chunk=vocab_chunk).mean()
        loss.backward()
        grads.append((s.grad, t.grad))
    for gs, gt in grads[1:]:
        torch.testing.assert_close(gs, grads[0][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(gt, grads[0][1], rtol=1e-5, atol=1e-7)
    # the gradient of forward KL wrt student logits is q - p (a known closed form)
    s = sl.clone().requires_grad_(True)
    kl.forward_kl(tl, s, chunk_rows=3).sum().backward()
    torch.testing.assert_close(s.grad, torch.softmax(sl, -1) - torch.softmax(tl, -1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", kl.KINDS)
def test_gradcheck_of_chunked_backward(kind):
    g = torch.Generator().manual_seed(9)
    t = torch.randn(1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True]])

    def f(a, b):  # two position chunks, and vocabulary chunks of 2 columns
        return kl.token_divergence(a, b, kind, mask=mask, chunk_rows=2, vocab_chunk=2, temperature=1.3)

    assert torch.autograd.gradcheck(f, (t, s), eps=1e-6, atol=1e-6)
    kl.token_divergence(t, s, kind, mask=mask, chunk_rows=2).sum().backward()
    assert (t.grad[~mask] == 0).all() and (s.grad[~mask] == 0).all()
    assert s.grad[mask].abs().sum() > 0


def test_masked_padding_may_hold_nan_and_stays_finite():
    tl, sl = _logits(seed=4)
    tl[0, 4] = float("nan")
    sl[1, 0] = float("-inf")
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[0, 4] = mask[1, 0] = False
    s = sl.clone().requires_grad_(True)
    out = kl.reverse_kl(tl, s, mask=mask, chunk_rows=2)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(s.grad[mask]).all()


def test_extreme_logits_are_stable():
    tl = torch.tensor([[1000.0, 0.0, -1000.0]])
    sl = torch.tensor([[-1000.0, 0.0, 1000.0]])
    for kind in kl.KINDS:
        assert torch.isfinite(kl.token_divergence(tl, sl, kind)).all(), kind
    # identical distributions have zero divergence, even with -inf entries (zero mass tokens)
    x = torch.tensor([[2.0, float("-inf"), 0.5]])
    for kind in kl.KINDS:
        assert kl.token_divergence(x, x.clone(), kind).item() == pytest.approx(0.0, abs=1e-7), kind


@pytest.mark.parametrize("kind", kl.KINDS)
def test_topk_with_tail_bucket_equals_full_when_k_is_vocab(kind):
    tl, sl = _logits(v=23, seed=5)
    torch.testing.assert_close(kl.topk_divergence(tl, sl, 23, kind), kl.token_divergence(tl, sl, kind))
    torch.testing.assert_close(kl.topk_divergence(tl, sl, 500, kind), kl.token_divergence(tl, sl, kind))


@pytest.mark.parametrize("select", ["teacher", "student"])
def test_topk_matches_brute_force_bucketing(select):
    tl, sl = _logits(b=1, t=3, v=19, seed=6)
    k = 4
    got = kl.topk_divergence(tl, sl, k, "forward", select=select)
    for t in range(3):
        p, q = _softmax(tl[0, t].numpy()), _softmax(sl[0, t].numpy())
        order = np.argsort(-(p if select == "teacher" else q))[:k]
        rest = [i for i in range(19) if i not in set(order)]
        pb = [p[i] for i in order] + [sum(p[i] for i in rest)]
        qb = [q[i] for i in order] + [sum(q[i] for i in rest)]
        assert got[0, t].item() == pytest.approx(_kl(pb, qb), rel=1e-4)
    # coarsening never increases a divergence (data processing inequality)
    assert (got <= kl.forward_kl(tl, sl) + 1e-6).all()


def test_head_tail_decomposition_matches_brute_force_and_class_split():
    v = 31
    tl, sl = _logits(b=2, t=4, v=v, seed=7)
    token_class = torch.zeros(v, dtype=torch.bool)
    token_class[[0, 3, 5, 8, 13]] = True
    ks = [1, 5, 20, 100, None]
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = False
    ht = kl.head_tail(tl, sl, "reverse", ks=ks, token_class=token_class, mask=mask)
    assert ht.head.shape == (5, 2, 4)
    torch.testing.assert_close(ht.full, kl.reverse_kl(tl, sl, mask=mask))
    for b in range(2):
        for t in range(4):
            if not mask[b, t]:
                assert ht.full[b, t] == 0 and (ht.head[:, b, t] == 0).all()
                continue
            p, q = _softmax(tl[b, t].numpy()), _softmax(sl[b, t].numpy())
            terms = [qi * math.log(qi / pi) for pi, qi in zip(p, q)]
            order = list(np.argsort(-p))
            for i, k in enumerate(ks):
                chosen = order if k is None else order[:k]
                assert ht.head[i, b, t].item() == pytest.approx(sum(terms[j] for j in chosen), rel=1e-4, abs=1e-6)
                want_c = sum(terms[j] for j in chosen if token_class[j])
                assert ht.head_class[i, b, t].item() == pytest.approx(want_c, rel=1e-4, abs=1e-6)
            assert ht.full_class[b, t].item() == pytest.approx(
                sum(terms[j] for j in range(v) if token_class[j]), rel=1e-4, abs=1e-6
            )
    # head + tail = full for every k; the full-vocabulary head has no tail
    torch.testing.assert_close(ht.head + ht.tail, ht.full.expand_as(ht.head))
    assert ht.tail[-1].abs().max() < 1e-5
    s = ht.summary(mask)
    assert s["n_positions"] == 7 and [r["k"] for r in s["per_k"]] == [1, 5, 20, 100, "full"]
    assert s["per_k"][-1]["tail_share"] == pytest.approx(0.0, abs=1e-5)
    row = s["per_k"][1]
    assert row["class_head"] + row["class_tail"] + row["other_head"] + row["other_tail"] == pytest.approx(s["full"])


def test_entropy_and_sequence_reduce():
    tl, _ = _logits(seed=8)
    ent = kl.token_entropy(tl, temperature=1.5)
    p = _softmax(tl[1, 2].numpy(), 1.5)
    assert ent[1, 2].item() == pytest.approx(-sum(pi * math.log(pi) for pi in p), rel=1e-5)
    vals = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert kl.sequence_reduce(vals, mask, "sum").tolist() == [3.0, 0.0]
    assert kl.sequence_reduce(vals, mask, "mean").tolist() == [1.5, 0.0]


def test_by_position_class_splits_on_realised_token():
    vals = torch.tensor([[1.0, 2.0, 4.0]])
    labels = torch.tensor([[0, 1, 0]])
    cls = torch.tensor([True, False])
    out = kl.by_position_class(vals, labels, cls)
    assert out["class_sum"] == 5.0 and out["other_sum"] == 2.0 and out["class_n"] == 2 and out["other_mean"] == 2.0


def test_bad_input_is_one_line_dgerror():
    tl, sl = _logits()
    with pytest.raises(DGError, match="same shape"):
        kl.forward_kl(tl, sl[..., :-1])
    with pytest.raises(DGError, match="expected one of"):
        kl.token_divergence(tl, sl, "hellinger")
    with pytest.raises(DGError, match="mask of shape"):
        kl.forward_kl(tl, sl, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(DGError, match="temperature"):
        kl.forward_kl(tl, sl, temperature=0)
    with pytest.raises(DGError, match="beta"):
        kl.generalized_jsd(tl, sl, beta=1.5)
    with pytest.raises(DGError, match="token_class"):
        kl.head_tail(tl, sl, token_class=torch.ones(3, dtype=torch.bool))
