"""Distillation losses against brute-force references."""

from __future__ import annotations

import torch

from dg_core.base.kl import token_divergence
from dg_core.distill.losses import span_likelihood_divergence, topk_kd, uld_distance


def test_topk_kd_with_full_vocabulary_is_the_exact_divergence():
    torch.manual_seed(0)
    t, s = torch.randn(6, 11), torch.randn(6, 11)
    lp = torch.log_softmax(t, -1)
    top = lp.topk(11, -1)
    for kind in ("forward", "reverse", "jsd"):
        got = topk_kd(s, top.indices, top.values, kind, temperature=2.0)
        assert torch.allclose(got, token_divergence(t, s, kind, temperature=2.0), atol=1e-5)


def test_topk_kd_tail_bucket_matches_brute_force():
    torch.manual_seed(1)
    t, s = torch.randn(5, 9), torch.randn(5, 9, requires_grad=True)
    k = 3
    lp = torch.log_softmax(t, -1)
    top = lp.topk(k, -1)
    got = topk_kd(s, top.indices, top.values, "forward")
    p, q = lp.exp(), torch.softmax(s, -1)
    ref = []
    for i in range(5):
        idx = top.indices[i]
        rest = torch.ones(9, dtype=torch.bool)
        rest[idx] = False
        pc = torch.cat([p[i, idx], p[i, rest].sum(0, keepdim=True)])
        qc = torch.cat([q[i, idx], q[i, rest].sum(0, keepdim=True)])
        ref.append((pc * (pc.log() - qc.log())).sum())
    assert torch.allclose(got, torch.stack(ref), atol=1e-5)
    got.sum().backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_span_divergence_is_bernoulli_kl():
    lt, ls = torch.tensor([-0.1, -2.0]), torch.tensor([-0.5, -0.2])
    got = span_likelihood_divergence(lt, ls, "forward")
    pt, ps = lt.exp(), ls.exp()
    ref = pt * (pt / ps).log() + (1 - pt) * ((1 - pt) / (1 - ps)).log()
    assert torch.allclose(got, ref, atol=1e-5)
    assert span_likelihood_divergence(lt, lt).abs().max() < 1e-6


def test_uld_ignores_token_identity_but_not_shape():
    p = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), -1)
    top = p.topk(2, -1).values
    permuted_student = torch.tensor([[-1.0, 0.0, 3.0, 1.0]])
    assert uld_distance(permuted_student, top).abs().max() < 1e-6
    assert uld_distance(torch.zeros(1, 4), top).item() > 0.1


def test_teacher_token_offsets_canonical_and_not():
    from dg_core.distill.signals import _char_offsets
    from dg_core.models.zoo import build_tokenizer

    tok = build_tokenizer("bpe")
    text = "120+28=148 #148"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    offs = _char_offsets(tok, ids, text)
    assert [text[a:b] for a, b in offs] == [tok.decode([i]) for i in ids]
    # A sampled, non-canonical spelling (one token per character) still gets contiguous spans over the text.
    chars = [tok.convert_tokens_to_ids(c) for c in "because"]
    assert tok.decode(chars) == "because" and chars != tok("because", add_special_tokens=False)["input_ids"]
    spans = _char_offsets(tok, chars, "because")
    assert spans == [(i, i + 1) for i in range(7)]
