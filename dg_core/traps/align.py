"""Across-tokenizer scoring and alignment: compare models that do not share a vocabulary.

Two tools, both working on *text* and character offsets rather than token ids:

- :func:`sequence_logprob` — log p(response | prompt) under one model with its **own** tokenizer. The text
  ``prompt + response`` is tokenized once (as the model would see it); the response tokens are those whose
  character span overlaps the response (a token straddling the boundary counts as response: it cannot be
  split, and its probability is conditioned only on prompt tokens). Because every model scores the same
  characters, scores of different models are comparable without any token alignment; this is what the
  calibration reward r_cal = log q(y|x) − log π0(y|x) needs.
- :func:`align_tokens` — groups tokens of two tokenizations of the same text into spans whose boundaries
  coincide (merging tokens until both sides end at the same character), and :func:`aligned_span_logprobs`
  compares the two models' log-probabilities span by span. Summed over spans of a sample drawn from one
  model, the span log-ratio is an unbiased estimate of the sequence-level KL, decomposed along the text.

Models are any causal LM returning ``.logits`` (HF ``AutoModelForCausalLM``); tokenizers must be "fast"
(Rust ``tokenizers``) so that character offsets are available.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dg_core.errors import DGError


@dataclass
class TokenScores:
    """One text scored by one model: per-token ids, character offsets and log p(token | preceding tokens).

    ``logprobs[i]`` is NaN for a token nothing precedes (the first token when no BOS is available).
    Special tokens (zero-width offsets) are kept with their offsets so positions line up with ``ids``.
    """

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    logprobs: torch.Tensor
    entropies: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def _norm_mode(normalize: bool | str) -> str:
    if normalize is False or normalize is None or normalize == "none":
        return "none"
    if normalize is True or normalize == "token":
        return "token"
    if normalize == "char":
        return "char"
    raise DGError(f"normalize={normalize!r}: expected False/'none', True/'token' or 'char'")


def _max_positions(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _encode(tokenizer, text: str, add_bos: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenize as the model would see the text; with ``add_bos`` make sure a BOS (or EOS) token leads it."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise DGError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets ({e}); expected a fast tokenizer"
        ) from None
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if add_bos and (not offsets or offsets[0][1] > offsets[0][0]):
        ctx = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if ctx is not None:
            ids = [ctx] + ids
            offsets = [(0, 0)] + offsets
    return ids, offsets


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def score_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    with_entropy: bool = False,
    requires_grad: bool = False,
    add_bos: bool = True,
) -> list[TokenScores]:
    """Per-token log-probabilities of each text under ``model`` (right-padded batches, own tokenizer).

    ``add_bos``: when the tokenizer does not itself start the text with a special token (GPT-2 style), prepend
    its BOS (or EOS) so every character is scored under the same kind of context, whatever the prompt.
    With ``with_entropy`` also returns each position's predictive entropy (of the next token).
    """
    if batch_size < 1:
        raise DGError(f"batch_size={batch_size}: expected an integer >= 1")
    device = _model_device(model)
    limit = _max_positions(model)
    encoded = [_encode(tokenizer, t, add_bos) for t in texts]
    for i, (ids, _) in enumerate(encoded):
        if limit is not None and len(ids) > limit:
            raise DGError(
                f"text {i} is {len(ids)} tokens under {type(tokenizer).__name__}: expected at most {limit} "
                "(the model's max positions); shorten prompts/responses"
            )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[TokenScores] = []
    ctx = torch.enable_grad() if requires_grad else torch.no_grad()
    with ctx:
        for a in range(0, len(texts), batch_size):
            chunk = encoded[a : a + batch_size]
            width = max(1, max(len(ids) for ids, _ in chunk))
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, _) in enumerate(chunk):
                input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attn[r, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)
            targets = input_ids[:, 1:].to(device)
            tok_lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            ent = -(logp.exp() * logp).sum(-1) if with_entropy else None
            for r, (ids, offs) in enumerate(chunk):
                n = len(ids)
                nan = torch.full((1,), float("nan"), device=device)
                lp = torch.cat([nan, tok_lp[r, : max(0, n - 1)]])[:n]
                e = None
                if ent is not None:
                    e = ent[r, :n].detach().cpu()  # e[i]: entropy of the prediction made after token i
                out.append(TokenScores(texts[a + r], ids, offs, lp if requires_grad else lp.detach().cpu(), e))
    return out


def response_token_mask(offsets: Sequence[tuple[int, int]], start: int) -> list[bool]:
    """Which tokens belong to the response that starts at character ``start`` (overlap rule, no zero-width)."""
    return [e > s and e > start for s, e in offsets]


def sequence_logprob(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    normalize: bool | str = False,
    batch_size: int = 8,
    append_eos: bool = False,
    add_bos: bool = True,
    requires_grad: bool = False,
) -> torch.Tensor:
    """log p(response | prompt) for each pair, under the model's own tokenizer: ``[N]`` float32.

    ``normalize``: False/'none' (sum), True/'token' (mean per response token of *this* tokenizer) or 'char'
    (per response character: comparable across tokenizers). ``append_eos`` also scores the end of sequence.
    ``add_bos`` conditions every text on a leading BOS/EOS (see :func:`score_texts`), so that
    log p(a+b) = log p(a) + log p(b | a) holds whenever a ends on a token boundary.
    An empty response scores 0 (−inf would poison group statistics; the task scorer judges empty answers).
    """
    mode = _norm_mode(normalize)
    if len(prompts) != len(responses):
        raise DGError(f"sequence_logprob: got {len(prompts)} prompts and {len(responses)} responses, expected equal")
    for name, seq in (("prompt", prompts), ("response", responses)):
        for i, x in enumerate(seq):
            if not isinstance(x, str):
                raise DGError(f"sequence_logprob: {name} {i} is {type(x).__name__}, expected str")
    texts = [p + r for p, r in zip(prompts, responses)]
    scores = score_texts(model, tokenizer, texts, batch_size=batch_size, requires_grad=requires_grad, add_bos=add_bos)
    eos_lp: list[torch.Tensor] | None = None
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise DGError(f"append_eos=True but tokenizer {type(tokenizer).__name__} has no eos_token; expected one")
        eos_lp = _eos_logprobs(model, tokenizer, scores, batch_size, requires_grad)
    vals = []
    for i, (p, r, sc) in enumerate(zip(prompts, responses, scores)):
        sel = torch.tensor(response_token_mask(sc.offsets, len(p)), dtype=torch.bool)
        lp = sc.logprobs[sel.to(sc.logprobs.device)]
        if torch.isnan(lp).any():
            raise DGError(
                f"sequence_logprob: response {i} starts the text and tokenizer {type(tokenizer).__name__} has no "
                "bos/eos token to condition it on (or add_bos=False); expected a non-empty prompt or bos/eos"
            )
        total = lp.sum()
        n_tok = int(sel.sum())
        if eos_lp is not None:
            total = total + eos_lp[i]
            n_tok += 1
        if not r and eos_lp is None:
            total = total * 0.0
        if mode == "token":
            total = total / max(1, n_tok)
        elif mode == "char":
            total = total / max(1, len(r))
        vals.append(total.float())
    if not vals:
        return torch.zeros(0)
    return torch.stack(vals)


def _eos_logprobs(model, tokenizer, scores: list[TokenScores], batch_size: int, requires_grad: bool):
    """log p(eos | whole text) per scored text (one extra forward on text + eos)."""
    eos = tokenizer.eos_token_id
    device = _model_device(model)
    out = []
    ctx = torch.enable_grad() if requires_grad else torch.no_grad()
    with ctx:
        for a in range(0, len(scores), batch_size):
            chunk = [sc.ids + [eos] for sc in scores[a : a + batch_size]]
            width = max(len(c) for c in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, c in enumerate(chunk):
                ids[r, : len(c)] = torch.tensor(c)
                attn[r, : len(c)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
            for r, c in enumerate(chunk):
                out.append(torch.log_softmax(logits[r, len(c) - 2], -1)[eos])
    return out


# ----------------------------------------------------------------------------------------------- alignment
@dataclass(frozen=True)
class AlignedSpan:
    """A character span ``[start, end)`` and the token positions of each tokenization that make it up."""

    start: int
    end: int
    a: tuple[int, ...]
    b: tuple[int, ...]


def align_tokens(
    offsets_a: Sequence[tuple[int, int]], offsets_b: Sequence[tuple[int, int]], *, text_len: int | None = None
) -> list[AlignedSpan]:
    """Group two tokenizations of the same text into the finest spans on which both agree.

    A character position is a shared cut when no token of either side strictly crosses it. Tokens are put in
    the segment between consecutive shared cuts that holds their start; a segment with tokens on only one side
    (e.g. a whitespace token the other tokenizer leaves out of its offsets) is merged into its neighbour, so
    every returned span has tokens on both sides. Zero-width (special) tokens are ignored.
    """
    a = [(i, s, e) for i, (s, e) in enumerate(offsets_a) if e > s]
    b = [(i, s, e) for i, (s, e) in enumerate(offsets_b) if e > s]
    if not a or not b:
        return []
    n = text_len if text_len is not None else max(max(e for _, _, e in a), max(e for _, _, e in b))
    crossed = [0] * (n + 2)
    for _, s, e in a + b:  # positions s+1 .. e-1 lie strictly inside a token
        if e - s > 1:
            crossed[s + 1] += 1
            crossed[e] -= 1
    cuts, run = [], 0
    for c in range(n + 1):
        run += crossed[c]
        if run == 0:
            cuts.append(c)
    segs: dict[int, tuple[list[int], list[int]]] = {}
    for side, toks in ((0, a), (1, b)):
        for i, s, _ in toks:
            seg = bisect.bisect_right(cuts, s) - 1
            segs.setdefault(seg, ([], []))[side].append(i)
    order = sorted(segs)
    bounds = {k: (cuts[k], cuts[k + 1] if k + 1 < len(cuts) else n) for k in order}
    spans: list[list] = []  # [start, end, a_ids, b_ids]
    pending: list | None = None
    for k in order:
        ia, ib = segs[k]
        s, e = bounds[k]
        if pending is not None:
            pending[1] = e
            pending[2] += ia
            pending[3] += ib
        else:
            pending = [s, e, list(ia), list(ib)]
        if pending[2] and pending[3]:
            spans.append(pending)
            pending = None
    if pending is not None:  # a one-sided tail: merge into the last complete span
        if spans:
            spans[-1][1] = pending[1]
            spans[-1][2] += pending[2]
            spans[-1][3] += pending[3]
        else:
            return []
    for sp in spans:  # token ends may run past the next shared cut (merged segments); widen to cover them
        sp[1] = max([sp[1]] + [offsets_a[i][1] for i in sp[2]] + [offsets_b[i][1] for i in sp[3]])
    return [AlignedSpan(s, e, tuple(sorted(ia)), tuple(sorted(ib))) for s, e, ia, ib in spans]


@dataclass
class SpanComparison:
    """Aligned-span log-probabilities of one response under two models (``lp_a``, ``lp_b`` per span)."""

    spans: list[AlignedSpan]
    lp_a: torch.Tensor
    lp_b: torch.Tensor
    texts: list[str]

    @property
    def log_ratio(self) -> torch.Tensor:
        """log p_a(span) − log p_b(span): on samples from model a, its mean is the per-span KL(a ‖ b)."""
        return self.lp_a - self.lp_b


def aligned_span_logprobs(
    model_a: torch.nn.Module,
    tokenizer_a,
    model_b: torch.nn.Module,
    tokenizer_b,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    add_bos: bool = True,
) -> list[SpanComparison]:
    """Compare two models with different tokenizers span by span over each response.

    Each model scores ``prompt + response`` with its own tokenizer; the response tokens of both are aligned on
    character offsets (:func:`align_tokens`) and each span's log-probability is the sum over its tokens.
    """
    if len(prompts) != len(responses):
        raise DGError(f"aligned_span_logprobs: got {len(prompts)} prompts and {len(responses)} responses")
    texts = [p + r for p, r in zip(prompts, responses)]
    sa = score_texts(model_a, tokenizer_a, texts, batch_size=batch_size, add_bos=add_bos)
    sb = score_texts(model_b, tokenizer_b, texts, batch_size=batch_size, add_bos=add_bos)
    out = []
    for p, x, y in zip(prompts, sa, sb):
        start = len(p)
        offs_a = [(s, e) if m else (0, 0) for (s, e), m in zip(x.offsets, response_token_mask(x.offsets, start))]
        offs_b = [(s, e) if m else (0, 0) for (s, e), m in zip(y.offsets, response_token_mask(y.offsets, start))]
        spans = align_tokens(offs_a, offs_b, text_len=len(x.text))
        lp_a = torch.stack([x.logprobs[list(sp.a)].sum() for sp in spans]) if spans else torch.zeros(0)
        lp_b = torch.stack([y.logprobs[list(sp.b)].sum() for sp in spans]) if spans else torch.zeros(0)
        out.append(SpanComparison(spans, lp_a, lp_b, [x.text[sp.start : sp.end] for sp in spans]))
    return out
