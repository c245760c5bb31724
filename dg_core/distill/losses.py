"""Distillation losses on top of the KL toolkit (``dg_core.base.kl``): the divergences themselves live there.

What is here is only what the toolkit cannot see: teacher distributions that arrive as stored top-k
log-probabilities (a k+1-category view with a tail bucket), span-level likelihood matching across tokenizers
(binarised, ALM-style) and the ULD sorted-distribution distance.
"""

from __future__ import annotations

import math

import torch

from dg_core.base.kl import elementwise_terms, token_divergence
from dg_core.errors import DGError

_MIN_LOG = math.log(1e-10)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable on both ends."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_kd(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    kind: str = "forward",
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Per-position divergence between a teacher known only by its top-k log-probs and a full student.

    ``student_logits [N, V]``, ``teacher_ids``/``teacher_logprobs [N, k]`` (log-probs at temperature 1).
    When k covers the vocabulary this is exactly :func:`token_divergence`. Otherwise both sides are
    coarsened to the k teacher tokens plus one tail bucket (the teacher's tail mass is 1 − Σ top-k, floored at
    1e-10 so reverse KL stays finite); temperature is applied to those k+1 log-masses, which is exact for the
    head and treats the tail as a single token.
    """
    if student_logits.dim() != 2 or teacher_ids.shape != teacher_logprobs.shape:
        raise DGError(
            f"topk_kd: student logits {tuple(student_logits.shape)} and teacher top-k "
            f"{tuple(teacher_ids.shape)}/{tuple(teacher_logprobs.shape)}: expected [N, V] and two [N, k]"
        )
    if student_logits.shape[0] != teacher_ids.shape[0]:
        raise DGError(
            f"topk_kd: {student_logits.shape[0]} student positions but {teacher_ids.shape[0]} teacher positions"
        )
    n, v = student_logits.shape
    k = teacher_ids.shape[1]
    t_lp = teacher_logprobs.float().to(student_logits.device)
    t_ids = teacher_ids.long().to(student_logits.device)
    if k >= v:
        full = torch.full((n, v), float("-inf"), device=student_logits.device)
        full = full.scatter(-1, t_ids, t_lp)
        return token_divergence(full, student_logits, kind, temperature=temperature, beta=beta, alpha=alpha)
    lq = torch.log_softmax(student_logits.float() / temperature, -1)
    q_head = lq.gather(-1, t_ids)
    q_tail = lq.scatter(-1, t_ids, float("-inf")).logsumexp(-1, keepdim=True)
    p_tail = _log1mexp(t_lp.logsumexp(-1, keepdim=True)).clamp_min(_MIN_LOG)
    p = torch.log_softmax(torch.cat([t_lp, p_tail], -1) / temperature, -1)
    q = torch.cat([q_head, q_tail], -1)
    return elementwise_terms(p, q, kind, beta=beta, alpha=alpha).sum(-1)


def span_likelihood_divergence(
    teacher_span_lp: torch.Tensor,
    student_span_lp: torch.Tensor,
    kind: str = "forward",
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
) -> torch.Tensor:
    """Per-span divergence of the binary events "the model produces this span next" (ALM-style).

    Spans are character ranges on which two tokenizations agree (``dg_core.base.align.align_tokens``), so
    ``log p(span | prefix)`` is comparable across tokenizers; matching each as a Bernoulli with the toolkit's
    divergences is a cross-tokenizer KD signal that needs no shared vocabulary. Temperature scales log p.
    """
    lt = (teacher_span_lp.float() / temperature).clamp(max=0.0)
    ls = (student_span_lp.float() / temperature).clamp(max=0.0)
    p = torch.stack([lt, _log1mexp(lt).clamp_min(_MIN_LOG)], -1)
    q = torch.stack([ls, _log1mexp(ls).clamp_min(_MIN_LOG)], -1)
    return elementwise_terms(p, q, kind, beta=beta, alpha=alpha).sum(-1)


def uld_distance(
    student_logits: torch.Tensor, teacher_topk_logprobs: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """ULD (Boizard et al., 2024): L1 between sorted probability vectors, which needs no vocabulary mapping.

    The teacher is known by its top-k log-probs, so both sides are compared on their k largest probabilities
    (sorted) plus the remaining mass as one last entry. ``[N, V]`` and ``[N, k]`` -> ``[N]``.
    """
    k = teacher_topk_logprobs.shape[-1]
    q = torch.softmax(student_logits.float() / temperature, -1)
    kk = min(k, q.shape[-1])
    q_top = q.topk(kk, dim=-1).values
    q_vec = torch.cat([q_top, (1 - q_top.sum(-1, keepdim=True)).clamp_min(0)], -1)
    t = teacher_topk_logprobs.float().to(q.device)
    if temperature != 1.0:
        tail = _log1mexp(t.logsumexp(-1, keepdim=True)).clamp_min(_MIN_LOG)
        t = torch.log_softmax(torch.cat([t, tail], -1) / temperature, -1)[..., :-1]
    p_top = t.exp().sort(-1, descending=True).values[..., :kk]
    p_vec = torch.cat([p_top, (1 - p_top.sum(-1, keepdim=True)).clamp_min(0)], -1)
    return (p_vec - q_vec).abs().sum(-1)
