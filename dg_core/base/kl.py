"""KL toolkit: token-level divergences between a teacher and a student distribution, batched and chunked.

Every function takes logits (or log-probabilities: ``log_softmax`` of log-probs is the identity) of shape
``[..., V]`` for the **teacher** ``p`` and the **student** ``q`` and returns one value per position ``[...]``.
Masked-out positions come back as exactly 0 and are never computed, so padding may hold anything (even NaN).

Why chunked: a divergence needs several ``[N, V]`` temporaries (two log-softmaxes, products, a mixture for
JSD). For a 150k vocabulary and a few thousand positions that is gigabytes. We process ``chunk_rows``
positions at a time (auto-sized from ``max_chunk_elems``) and optionally ``vocab_chunk`` vocabulary columns at
a time (two passes: log-normalisers first, then the per-token terms), so peak extra memory stays bounded.
When gradients are needed, backward recomputes one position chunk at a time and writes its rows of the
gradient in place, so the backward pass is bounded too; these functions are the token-level KD losses of the
distillation stage.

Divergences (``kind``), all computed from ``log_softmax(logits / temperature)`` in float32:

- ``forward``: KL(p ‖ q) = Σ p (log p − log q)  (mode-covering; classic KD)
- ``reverse``: KL(q ‖ p) = Σ q (log q − log p)  (mode-seeking; on-policy GKD / MiniLLM)
- ``jsd``: generalised JSD(β) = β KL(p ‖ m) + (1−β) KL(q ‖ m), m = β p + (1−β) q. Following TRL's GKD
  convention β = 0 is forward KL and β = 1 is reverse KL (the formula itself vanishes at the endpoints).
- ``skew_forward``: KL(p ‖ α p + (1−α) q); ``skew_reverse``: KL(q ‖ α q + (1−α) p) (DistiLLM; α = 0 is plain KL).
- ``tvd``: total variation ½ Σ |p − q|.

All of them are sums over the vocabulary of an elementwise term, which is what makes the head/tail and
token-class decompositions exact: ``head_k + tail_k = full`` for every k.

Temperature divides both sets of logits. Classic KD multiplies the loss by T²; that is left to the caller.

Over 500 lines: every divergence shares one chunked forward and one recomputing backward; they are one idea.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from dg_core.errors import DGError

Kind = Literal["forward", "reverse", "jsd", "skew_forward", "skew_reverse", "tvd"]
KINDS: tuple[str, ...] = ("forward", "reverse", "jsd", "skew_forward", "skew_reverse", "tvd")
DEFAULT_KS: tuple[int | None, ...] = (1, 5, 20, 100, None)  # None = the full vocabulary
_NEG_INF = float("-inf")


# ----------------------------------------------------------------------------------------------- elementwise
def _plogratio(la: torch.Tensor, lb: torch.Tensor, safe: bool = True) -> torch.Tensor:
    """exp(la) * (la - lb), with 0·log 0 = 0 and finite gradients where la = -inf (double-where trick).

    ``safe=False`` is for callers that know ``la`` has no -inf (log-softmax of finite logits): three fewer passes.
    """
    if not safe:
        return la.exp() * (la - lb)
    fin = la > _NEG_INF
    la_s = torch.where(fin, la, torch.zeros_like(la))
    lb_s = torch.where(fin, lb, torch.zeros_like(lb))
    return torch.where(fin, la_s.exp() * (la_s - lb_s), torch.zeros_like(la))


def _mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w·a + (1−w)·b) from log a, log b; stable via logaddexp."""
    if w <= 0.0:
        return lb
    if w >= 1.0:
        return la
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def elementwise_terms(
    lp: torch.Tensor,
    lq: torch.Tensor,
    kind: str = "forward",
    *,
    beta: float = 0.5,
    alpha: float = 0.1,
    safe: bool = True,
) -> torch.Tensor:
    """Per-vocabulary-entry terms whose sum over the last axis is the divergence ``kind`` (see module doc).

    ``lp``/``lq`` are normalised log-probabilities (teacher, student); entries may be -inf (zero mass) unless
    ``safe=False``, which promises there are none and skips the guards.
    """
    if kind == "forward" or (kind == "jsd" and beta <= 0.0):
        return _plogratio(lp, lq, safe)
    if kind == "reverse" or (kind == "jsd" and beta >= 1.0):
        return _plogratio(lq, lp, safe)
    if kind == "jsd":
        lm = _mix(lp, lq, beta)
        return beta * _plogratio(lp, lm, safe) + (1.0 - beta) * _plogratio(lq, lm, safe)
    if kind == "skew_forward":
        return _plogratio(lp, _mix(lp, lq, alpha), safe)
    if kind == "skew_reverse":
        return _plogratio(lq, _mix(lq, lp, alpha), safe)
    if kind == "tvd":
        return 0.5 * (lp.exp() - lq.exp()).abs()
    raise DGError(f"divergence kind {kind!r}: expected one of {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------------- plumbing
def _check(
    teacher: torch.Tensor,
    student: torch.Tensor,
    mask: torch.Tensor | None,
    kind: str,
    beta: float,
    alpha: float,
    temperature: float,
) -> None:
    if kind not in KINDS:
        raise DGError(f"divergence kind {kind!r}: expected one of {', '.join(KINDS)}")
    if teacher.shape != student.shape:
        raise DGError(
            f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student.shape)}: expected the same "
            "shape [..., V] (align vocabularies first, e.g. with dg_core.base.align)"
        )
    if teacher.dim() < 1 or teacher.shape[-1] < 1:
        raise DGError(f"logits of shape {tuple(teacher.shape)}: expected [..., V] with V >= 1")
    if mask is not None and tuple(mask.shape) != tuple(teacher.shape[:-1]):
        raise DGError(f"mask of shape {tuple(mask.shape)}: expected {tuple(teacher.shape[:-1])} (logits without V)")
    if not temperature > 0:
        raise DGError(f"temperature {temperature}: expected a value > 0")
    if not 0.0 <= beta <= 1.0:
        raise DGError(f"jsd beta {beta}: expected a value in [0, 1]")
    if not 0.0 <= alpha < 1.0:
        raise DGError(f"skew alpha {alpha}: expected a value in [0, 1)")


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _valid_rows(mask: torch.Tensor | None, lead: torch.Size, device: torch.device) -> torch.Tensor:
    n = math.prod(lead)
    if mask is None:
        return torch.arange(n, device=device)
    return mask.reshape(-1).to(device=device, dtype=torch.bool).nonzero().squeeze(-1)


CPU_CHUNK_ELEMS = 1 << 22  # 16 MB float32 temporaries: cache-friendly, negligible next to the inputs
CUDA_CHUNK_ELEMS = 1 << 26  # 256 MB: few enough chunks that kernel launches do not dominate


def auto_chunk_rows(vocab: int, max_chunk_elems: int | None = None, device: torch.device | str | None = None) -> int:
    """Positions per chunk so that one [rows, V] float32 temporary holds at most ``max_chunk_elems`` entries
    (default: ``CUDA_CHUNK_ELEMS`` on a GPU, ``CPU_CHUNK_ELEMS`` elsewhere)."""
    if max_chunk_elems is None:
        max_chunk_elems = CUDA_CHUNK_ELEMS if torch.device(device or "cpu").type == "cuda" else CPU_CHUNK_ELEMS
    return max(1, max_chunk_elems // max(1, vocab))


def _up(x: torch.Tensor) -> torch.Tensor:
    """Half/bf16 -> float32 for the math; float32/float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _log_softmax(x: torch.Tensor, temperature: float) -> torch.Tensor:
    x = _up(x)
    if temperature != 1.0:
        x = x / temperature
    return torch.log_softmax(x, dim=-1)


def _scatter_rows(n: int, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    out = vals.new_zeros((n,) + tuple(vals.shape[1:]))
    return out.index_put((idx,), vals)


# ----------------------------------------------------------------------------------------------- divergences
def _div_rows(
    tt: torch.Tensor,
    ss: torch.Tensor,
    kind: str,
    temperature: float,
    beta: float,
    alpha: float,
    vocab_chunk: int | None,
    safe: bool = True,
) -> torch.Tensor:
    """Divergence of each row of one position chunk ``[r, V] -> [r]``."""
    v = tt.shape[-1]
    if not vocab_chunk or vocab_chunk >= v:
        lp, lq = _log_softmax(tt, temperature), _log_softmax(ss, temperature)
        return elementwise_terms(lp, lq, kind, beta=beta, alpha=alpha, safe=safe).sum(-1)
    # Two passes over vocabulary slices: log-normalisers, then the summed terms.
    bounds = [(a, min(a + vocab_chunk, v)) for a in range(0, v, vocab_chunk)]

    def scaled(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        y = _up(x[:, a:b])
        return y / temperature if temperature != 1.0 else y

    lse_t = torch.stack([torch.logsumexp(scaled(tt, a, b), -1) for a, b in bounds], -1).logsumexp(-1, keepdim=True)
    lse_s = torch.stack([torch.logsumexp(scaled(ss, a, b), -1) for a, b in bounds], -1).logsumexp(-1, keepdim=True)
    total = lse_t.new_zeros(tt.shape[0])
    for a, b in bounds:
        lp, lq = scaled(tt, a, b) - lse_t, scaled(ss, a, b) - lse_s
        total = total + elementwise_terms(lp, lq, kind, beta=beta, alpha=alpha, safe=safe).sum(-1)
    return total


Chunk = slice | torch.Tensor  # consecutive rows (no mask: a view, no host sync) or gathered row indices


def _chunks(n: int, rows: torch.Tensor | None, step: int) -> list[Chunk]:
    if rows is None:
        return [slice(a, min(a + step, n)) for a in range(0, n, step)]
    return list(rows.split(step))


def _take(x: torch.Tensor, c: Chunk) -> torch.Tensor:
    return x[c] if isinstance(c, slice) else x.index_select(0, c)


def _put(dst: torch.Tensor, c: Chunk, src: torch.Tensor) -> None:
    if isinstance(c, slice):
        dst[c].copy_(src)
    else:
        dst.index_copy_(0, c, src.to(dst.dtype))


def _size(c: Chunk) -> int:
    return c.stop - c.start if isinstance(c, slice) else c.numel()


class _ChunkedRows(torch.autograd.Function):
    """``fn`` applied to consecutive position chunks of its row inputs, with a backward that recomputes one chunk
    at a time and writes its gradient rows straight into the full-size gradient: peak memory is inputs +
    gradients + one chunk of temporaries (generic checkpointing would materialise a full-size gradient per
    chunk). ``shared`` tensors (e.g. an output head's weights, used by every chunk) get their gradients summed
    over chunks. Autocast is re-entered in backward as it was in forward, so the recomputation matches."""

    @staticmethod
    def forward(ctx, fn, chunks, n_rows, autocast, *tensors):  # noqa: D102
        ctx.save_for_backward(*tensors)
        ctx.fn, ctx.chunks, ctx.n_rows, ctx.autocast = fn, chunks, n_rows, autocast
        rows = tensors[:n_rows]
        with torch.no_grad():
            pieces = [fn(*[_take(x, c) for x in rows]) for c in chunks]
        if not pieces:
            return rows[0].new_zeros(0, dtype=torch.float32)
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad_vals):  # noqa: D102
        tensors = ctx.saved_tensors
        n = ctx.n_rows
        rows, shared = tensors[:n], tensors[n:]
        need = ctx.needs_input_grad[4:]
        row_grads = [torch.zeros_like(x) if nd else None for x, nd in zip(rows, need[:n])]
        shared_grads: list[torch.Tensor | None] = [None] * len(shared)
        wanted_shared = [s for s, nd in zip(shared, need[n:]) if nd]
        offset = 0
        for c in ctx.chunks:
            k = _size(c)
            parts = [_take(x, c).detach().requires_grad_(nd) for x, nd in zip(rows, need[:n])]
            with torch.enable_grad(), _autocast(ctx.autocast):
                out = ctx.fn(*parts)
            inputs = [x for x, nd in zip(parts, need[:n]) if nd] + wanted_shared
            if not inputs:
                break
            grads = list(torch.autograd.grad(out, inputs, grad_vals[offset : offset + k], allow_unused=True))
            for i, nd in enumerate(need[:n]):
                if nd:
                    g = grads.pop(0)
                    if g is not None:
                        _put(row_grads[i], c, g)
            for i, nd in enumerate(need[n:]):
                if nd:
                    g = grads.pop(0)
                    if g is not None:
                        shared_grads[i] = g if shared_grads[i] is None else shared_grads[i] + g
            offset += k
        return (None, None, None, None, *row_grads, *shared_grads)


def _autocast_state() -> tuple[str, torch.dtype] | None:
    for dev in ("cuda", "cpu"):
        if torch.is_autocast_enabled(dev):
            return dev, torch.get_autocast_dtype(dev)
    return None


def _autocast(state: tuple[str, torch.dtype] | None):
    import contextlib

    if state is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=state[0], dtype=state[1])


def chunked_rows(
    fn,
    rows: Sequence[torch.Tensor],
    chunks: list[Chunk],
    shared: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """``cat([fn(*(x[c] for x in rows)) for c in chunks])``: one value per row, computed a chunk at a time.

    With gradients on (any input, or a ``shared`` tensor ``fn`` uses, requiring them), backward recomputes one
    chunk at a time (see :class:`_ChunkedRows`), so neither pass holds more than one chunk's temporaries. This
    is the single chunked implementation behind the divergences here and the model log-probabilities of
    :mod:`dg_core.base.logprobs`.
    """
    grad = torch.is_grad_enabled() and (any(x.requires_grad for x in rows) or any(s.requires_grad for s in shared))
    if not grad:
        pieces = [fn(*[_take(x, c) for x in rows]) for c in chunks]
        return torch.cat(pieces) if pieces else rows[0].new_zeros(0, dtype=torch.float32)
    return _ChunkedRows.apply(fn, chunks, len(rows), _autocast_state(), *rows, *shared)


def token_divergence(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    kind: str = "forward",
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    chunk_rows: int | None = None,
    vocab_chunk: int | None = None,
    max_chunk_elems: int | None = None,
) -> torch.Tensor:
    """Token-level divergence ``kind`` per position: ``[..., V] x2 -> [...]`` (0 where ``mask`` is False); float32,
    or float64 for float64 inputs.

    Differentiable in both inputs; with gradients on, backward recomputes one position chunk at a time, so
    memory stays at inputs + their gradients + one chunk of temporaries. ``chunk_rows`` defaults to what fits
    ``max_chunk_elems`` (see :func:`auto_chunk_rows`; larger on GPUs, where launches, not memory, limit speed).
    """
    _check(teacher_logits, student_logits, mask, kind, beta, alpha, temperature)
    lead = teacher_logits.shape[:-1]
    v = teacher_logits.shape[-1]
    t, s = _rows(teacher_logits), _rows(student_logits)
    step = chunk_rows or auto_chunk_rows(v if not vocab_chunk else min(v, vocab_chunk), max_chunk_elems, t.device)
    rows = None if mask is None else _valid_rows(mask, lead, t.device)
    if rows is not None and not chunk_rows:  # masked rows are gathered (copied): keep that copy bounded too
        step = min(step, auto_chunk_rows(v, max_chunk_elems, t.device))
    # One check for -inf logits (a banned token) instead of guarding every term of every chunk.
    safe = bool(torch.isneginf(t).any() or torch.isneginf(s).any())
    chunks = _chunks(t.shape[0], rows, step)
    args = (kind, temperature, beta, alpha, vocab_chunk, safe)
    vals = chunked_rows(lambda tt, ss: _div_rows(tt, ss, *args), [t, s], chunks)
    if rows is None:
        return vals.reshape(lead)
    return _scatter_rows(t.shape[0], rows, vals).reshape(lead)


def forward_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, **kw) -> torch.Tensor:
    """KL(teacher ‖ student) per position (see :func:`token_divergence` for keyword arguments)."""
    return token_divergence(teacher_logits, student_logits, "forward", **kw)


def reverse_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, **kw) -> torch.Tensor:
    """KL(student ‖ teacher) per position: the on-policy (GKD) objective and the paper's Table 4 measure."""
    return token_divergence(teacher_logits, student_logits, "reverse", **kw)


def generalized_jsd(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, beta: float = 0.5, **kw
) -> torch.Tensor:
    """Generalised JSD(β) per position (TRL/GKD convention: β=0 forward KL, β=1 reverse KL)."""
    return token_divergence(teacher_logits, student_logits, "jsd", beta=beta, **kw)


def tvd(teacher_logits: torch.Tensor, student_logits: torch.Tensor, **kw) -> torch.Tensor:
    """Total variation distance per position, in [0, 1]."""
    return token_divergence(teacher_logits, student_logits, "tvd", **kw)


def token_entropy(
    logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    max_chunk_elems: int | None = None,
) -> torch.Tensor:
    """Entropy (nats) of each position's distribution ``[..., V] -> [...]``; 0 where ``mask`` is False."""
    _check(logits, logits, mask, "forward", 0.5, 0.1, temperature)
    lead = logits.shape[:-1]
    x = _rows(logits)
    rows = _valid_rows(mask, lead, x.device)
    step = auto_chunk_rows(x.shape[-1], max_chunk_elems, x.device)
    pieces = []
    for a in range(0, rows.numel(), step):
        lp = _log_softmax(x.index_select(0, rows[a : a + step]), temperature)
        pieces.append(-_plogratio(lp, torch.zeros_like(lp)).sum(-1))
    vals = torch.cat(pieces) if pieces else x.new_zeros(0, dtype=torch.float32)
    return _scatter_rows(x.shape[0], rows, vals).reshape(lead)


def sequence_reduce(values: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "sum") -> torch.Tensor:
    """Reduce per-token values ``[B, T]`` to one per sequence ``[B]``: ``sum`` or ``mean`` over unmasked tokens.

    A sequence with no unmasked tokens has mean 0 (not NaN), so one empty row cannot poison a batch average.
    """
    if reduction not in ("sum", "mean"):
        raise DGError(f"sequence reduction {reduction!r}: expected 'sum' or 'mean'")
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    if mask.shape != values.shape:
        raise DGError(f"mask of shape {tuple(mask.shape)}: expected {tuple(values.shape)}")
    m = mask.to(values.dtype)
    total = (values * m).sum(-1)
    if reduction == "sum":
        return total
    return total / m.sum(-1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------- top-k
def _select_lp(lp: torch.Tensor, lq: torch.Tensor, select: str) -> torch.Tensor:
    if select == "teacher":
        return lp
    if select == "student":
        return lq
    raise DGError(f"top-k selection {select!r}: expected 'teacher' or 'student'")


def topk_divergence(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    k: int,
    kind: str = "forward",
    *,
    select: str = "teacher",
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    max_chunk_elems: int | None = None,
) -> torch.Tensor:
    """Divergence over the k most likely tokens (by ``select``'s distribution) plus one tail bucket.

    Both distributions are coarsened to k+1 categories: the chosen k tokens and "everything else", whose mass
    is computed directly as a log-sum-exp over the remaining tokens (no 1 − Σ cancellation). This is what
    sparse/top-k KD sees; with k = V the tail is empty and the result equals :func:`token_divergence`.
    """
    _check(teacher_logits, student_logits, mask, kind, beta, alpha, temperature)
    v = teacher_logits.shape[-1]
    if not isinstance(k, int) or k < 1:
        raise DGError(f"top-k k={k!r}: expected an integer >= 1")
    k = min(k, v)
    lead = teacher_logits.shape[:-1]
    t, s = _rows(teacher_logits), _rows(student_logits)
    rows = _valid_rows(mask, lead, t.device)
    step = auto_chunk_rows(v, max_chunk_elems, t.device)
    pieces = []
    for a in range(0, rows.numel(), step):
        idx = rows[a : a + step]
        lp = _log_softmax(t.index_select(0, idx), temperature)
        lq = _log_softmax(s.index_select(0, idx), temperature)
        top = _select_lp(lp, lq, select).topk(k, dim=-1).indices
        parts = []
        for x in (lp, lq):
            head = x.gather(-1, top)
            tail = x.scatter(-1, top, _NEG_INF).logsumexp(-1, keepdim=True)
            parts.append(torch.cat([head, tail], -1))
        pieces.append(elementwise_terms(parts[0], parts[1], kind, beta=beta, alpha=alpha).sum(-1))
    vals = torch.cat(pieces) if pieces else t.new_zeros(0, dtype=torch.float32)
    return _scatter_rows(t.shape[0], rows, vals).reshape(lead)


@dataclass
class HeadTail:
    """Exact split of a divergence into head (top-k tokens by the teacher) and tail contributions.

    ``head[i]`` is ``[...]`` per position for ``ks[i]`` (None = full vocabulary); ``tail = full - head``.
    With a ``token_class`` mask, the ``*_class`` fields hold the part contributed by class tokens only.
    """

    ks: list[int | None]
    full: torch.Tensor
    head: torch.Tensor
    full_class: torch.Tensor | None = None
    head_class: torch.Tensor | None = None

    @property
    def tail(self) -> torch.Tensor:
        return self.full.unsqueeze(0) - self.head

    @property
    def tail_class(self) -> torch.Tensor | None:
        if self.full_class is None or self.head_class is None:
            return None
        return self.full_class.unsqueeze(0) - self.head_class

    def summary(self, mask: torch.Tensor | None = None) -> dict:
        """Totals over (masked) positions: per k, head/tail mass and the tail's share of the full divergence."""
        m = torch.ones_like(self.full, dtype=torch.bool) if mask is None else mask.to(torch.bool)
        full = float(self.full[m].sum())
        out = {"n_positions": int(m.sum()), "full": full, "per_k": []}
        for i, k in enumerate(self.ks):
            head = float(self.head[i][m].sum())
            row = {
                "k": "full" if k is None else k,
                "head": head,
                "tail": full - head,
                "tail_share": (full - head) / full if full > 0 else 0.0,
            }
            if self.head_class is not None and self.full_class is not None:
                fc, hc = float(self.full_class[m].sum()), float(self.head_class[i][m].sum())
                row.update(
                    {
                        "class_head": hc,
                        "class_tail": fc - hc,
                        "other_head": head - hc,
                        "other_tail": (full - head) - (fc - hc),
                    }
                )
            out["per_k"].append(row)
        if self.full_class is not None:
            fc = float(self.full_class[m].sum())
            out["class_full"] = fc
            out["class_share"] = fc / full if full > 0 else 0.0
        return out


def head_tail(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    kind: str = "forward",
    *,
    ks: Sequence[int | None] = DEFAULT_KS,
    token_class: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    alpha: float = 0.1,
    max_chunk_elems: int | None = None,
) -> HeadTail:
    """Decompose the divergence at each position into its top-k (by teacher probability) head and the tail.

    Answers "how much of the KL signal sits in the tail?" (tail noise): summing a divergence over a large
    top-k mostly adds many small, uninformative tail terms. ``token_class`` is a boolean ``[V]`` mask (e.g.
    frequent/function token ids); the class part of head and full is returned alongside.
    """
    _check(teacher_logits, student_logits, mask, kind, beta, alpha, temperature)
    v = teacher_logits.shape[-1]
    ks = list(ks)
    for k in ks:
        if k is not None and (not isinstance(k, int) or k < 1):
            raise DGError(f"head/tail k={k!r}: expected an integer >= 1 or None (full vocabulary)")
    if token_class is not None and tuple(token_class.shape) != (v,):
        raise DGError(f"token_class mask of shape {tuple(token_class.shape)}: expected ({v},), one flag per token id")
    kmax = min(v, max([k for k in ks if k is not None], default=1))
    lead = teacher_logits.shape[:-1]
    t, s = _rows(teacher_logits), _rows(student_logits)
    rows = _valid_rows(mask, lead, t.device)
    cls = token_class.to(device=t.device, dtype=torch.float32) if token_class is not None else None
    step = auto_chunk_rows(v, max_chunk_elems, t.device)
    fulls, heads, fulls_c, heads_c = [], [], [], []
    for a in range(0, rows.numel(), step):
        idx = rows[a : a + step]
        lp = _log_softmax(t.index_select(0, idx), temperature)
        lq = _log_softmax(s.index_select(0, idx), temperature)
        terms = elementwise_terms(lp, lq, kind, beta=beta, alpha=alpha)
        top = lp.topk(kmax, dim=-1).indices
        cum = terms.gather(-1, top).cumsum(-1)
        full = terms.sum(-1)
        fulls.append(full)
        heads.append(torch.stack([full if k is None or k >= v else cum[:, min(k, kmax) - 1] for k in ks], 0))
        if cls is not None:
            tc = terms * cls
            cum_c = tc.gather(-1, top).cumsum(-1)
            full_c = tc.sum(-1)
            fulls_c.append(full_c)
            heads_c.append(torch.stack([full_c if k is None or k >= v else cum_c[:, min(k, kmax) - 1] for k in ks], 0))
    n = t.shape[0]

    def assemble(parts: list[torch.Tensor], stacked: bool) -> torch.Tensor:
        if not parts:
            shape = (len(ks), 0) if stacked else (0,)
            vals = t.new_zeros(shape, dtype=torch.float32)
        else:
            vals = torch.cat(parts, -1)
        if stacked:
            return _scatter_rows(n, rows, vals.T).T.reshape((len(ks),) + tuple(lead))
        return _scatter_rows(n, rows, vals).reshape(lead)

    return HeadTail(
        ks=ks,
        full=assemble(fulls, False),
        head=assemble(heads, True),
        full_class=assemble(fulls_c, False) if cls is not None else None,
        head_class=assemble(heads_c, True) if cls is not None else None,
    )


def by_position_class(
    values: torch.Tensor, labels: torch.Tensor, token_class: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Split per-position values by whether the realised token at that position is in ``token_class``.

    The other view of "frequent tokens": positions whose target is a function/frequent token vs the rest.
    Returns sums and means for both groups.
    """
    if values.shape != labels.shape:
        raise DGError(f"labels of shape {tuple(labels.shape)}: expected {tuple(values.shape)} like the values")
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    in_cls = token_class.to(torch.bool)[labels.clamp_min(0).long()] & m
    rest = m & ~in_cls
    out = {}
    for name, sel in (("class", in_cls), ("other", rest)):
        n = int(sel.sum())
        total = float(values[sel].sum()) if n else 0.0
        out[f"{name}_sum"] = total
        out[f"{name}_mean"] = total / n if n else 0.0
        out[f"{name}_n"] = n
    return out
