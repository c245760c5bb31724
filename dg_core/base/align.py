"""Across-tokenizer scoring and alignment: compare models that do not share a vocabulary.

Two tools, both working on *text* and character offsets rather than token ids:

- :func:`sequence_logprob` — log p(response | prompt) under one model with its **own** tokenizer. By default
  the pair is tokenized the way :mod:`dg_core.base.generate` samples and trains (prompt and response encoded
  separately), so the score is the probability the model gives its own sample; ``layout="joint"`` instead
  tokenizes ``prompt + response`` once and finds the response tokens by character offsets. Every model scores
  the same characters, so scores of different models are comparable without any token alignment; this is what
  the calibration reward r_cal = log q(y|x) − log π0(y|x) needs.
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

from dg_core.base.generate import prompt_adds_special_tokens
from dg_core.base.logprobs import token_logprobs
from dg_core.base.modelinfo import model_name
from dg_core.errors import DGError


@dataclass
class TokenScores:
    """One (prompt, response) scored by one model: token ids, character offsets into ``prompt + response``,
    which tokens belong to the response, and log p(token | preceding tokens).

    ``logprobs[i]`` is NaN for a token nothing precedes (the first token when no BOS is prepended).
    Special tokens have zero-width offsets; an appended EOS sits at ``(len(text), len(text))``.
    ``entropies[i]`` (optional) is the entropy of the prediction made *at* token i (for token i+1).
    """

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    response: list[bool]
    logprobs: torch.Tensor
    entropies: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


LAYOUTS = ("separate", "joint")


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


def _offsets(tokenizer, text: str, *, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    if not text:
        enc = tokenizer(text, add_special_tokens=special)
        return list(enc["input_ids"]), [(0, 0)] * len(enc["input_ids"])
    try:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    except (NotImplementedError, ValueError, TypeError) as e:
        raise DGError(
            f"tokenizer {type(tokenizer).__name__} gives no character offsets ({e}); expected a fast tokenizer"
        ) from None
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode_pair(
    tokenizer,
    prompt: str,
    response: str,
    *,
    layout: str = "separate",
    append_eos: bool = False,
    add_bos: bool | None = None,
) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    """Token ids, character offsets (into ``prompt + response``) and response flags for one pair.

    ``separate`` (default) follows :mod:`dg_core.base.generate`: the prompt is encoded on its own with the
    tokenizer's special-token convention and the response on its own without special tokens, which is how
    models are sampled and trained here, so the score is the probability the model actually assigns to its
    own sample. ``joint`` encodes ``prompt + response`` as one text and marks the tokens overlapping the response
    (a token straddling the boundary counts as response: it cannot be split). ``add_bos``: None prepends BOS
    (or EOS) only when the first token would otherwise be unscored (empty prompt); True whenever the text does
    not already start with a special token; False never.
    """
    if layout not in LAYOUTS:
        raise DGError(f"layout={layout!r}: expected one of {', '.join(LAYOUTS)}")

    cut = len(prompt)
    special = prompt_adds_special_tokens(tokenizer)
    if layout == "separate":
        p_ids, p_offs = _offsets(tokenizer, prompt, special=special)
        r_ids, r_offs = _offsets(tokenizer, response, special=False)
        ids = p_ids + r_ids
        offs = p_offs + [(a + cut, b + cut) if b > a else (cut, cut) for a, b in r_offs]
        resp = [False] * len(p_ids) + [True] * len(r_ids)
    else:
        ids, offs = _offsets(tokenizer, prompt + response, special=special)
        resp = [b > a and b > cut for a, b in offs]
    starts_special = bool(offs) and offs[0][1] <= offs[0][0] and not resp[0]
    needs = not ids or resp[0]
    if (add_bos is None and needs) or (add_bos is True and not starts_special):
        ctx = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if ctx is not None:
            ids, offs, resp = [ctx] + ids, [(0, 0)] + offs, [False] + resp
    if append_eos:
        if tokenizer.eos_token_id is None:
            raise DGError(f"append_eos=True but tokenizer {type(tokenizer).__name__} has no eos_token; expected one")
        end = len(prompt) + len(response)
        ids, offs, resp = ids + [tokenizer.eos_token_id], offs + [(end, end)], resp + [True]
    return ids, offs, resp


def _per_row(flag: bool | Sequence[bool], n: int, name: str) -> list[bool]:
    if isinstance(flag, bool):
        return [flag] * n
    flags = [bool(f) for f in flag]
    if len(flags) != n:
        raise DGError(f"{name}: {len(flags)} flags for {n} pairs, expected one per pair")
    return flags


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def score_pairs(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    layout: str = "separate",
    append_eos: bool | Sequence[bool] = False,
    add_bos: bool | None = None,
    batch_size: int = 8,
    with_entropy: bool = False,
    requires_grad: bool = False,
) -> list[TokenScores]:
    """Per-token log-probabilities of each ``prompt + response`` under ``model`` (right-padded batches).

    See :func:`encode_pair` for ``layout``/``append_eos``/``add_bos``; ``append_eos`` may also be one flag per
    pair (a sample cut off at its token budget has no end to score). With ``with_entropy`` also returns each
    position's predictive entropy.
    """
    if batch_size < 1:
        raise DGError(f"batch_size={batch_size}: expected an integer >= 1")
    if len(prompts) != len(responses):
        raise DGError(f"got {len(prompts)} prompts and {len(responses)} responses, expected equal counts")
    for name, seq in (("prompt", prompts), ("response", responses)):
        for i, x in enumerate(seq):
            if not isinstance(x, str):
                raise DGError(f"{name} {i} is {type(x).__name__}, expected str")
    eos_flags = _per_row(append_eos, len(prompts), "append_eos")
    device = _model_device(model)
    limit = _max_positions(model)
    encoded = [
        encode_pair(tokenizer, p, r, layout=layout, append_eos=e, add_bos=add_bos)
        for p, r, e in zip(prompts, responses, eos_flags)
    ]
    for i, (ids, _, _) in enumerate(encoded):
        if limit is not None and len(ids) > limit:
            raise DGError(
                f"text {i} is {len(ids)} tokens under model {model_name(model, tokenizer)}'s tokenizer: expected at "
                f"most {limit} (the model's max positions); shorten prompts/responses"
            )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[TokenScores] = []
    ctx = torch.enable_grad() if requires_grad else torch.no_grad()
    with ctx:
        for a in range(0, len(encoded), batch_size):
            chunk = encoded[a : a + batch_size]
            width = max(1, max(len(ids) for ids, _, _ in chunk))
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (ids, _, _) in enumerate(chunk):
                input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                attn[r, : len(ids)] = 1
            scored = token_logprobs(model, input_ids, attn, with_entropy=with_entropy)
            tok_lp = scored.logprobs
            ent = scored.entropy
            nan = torch.full((1,), float("nan"), device=device)
            for r, (ids, offs, resp) in enumerate(chunk):
                n = len(ids)
                lp = torch.cat([nan, tok_lp[r, : max(0, n - 1)]])[:n]
                # entropy of the prediction made at token i; the last token's (after the text) is not needed
                e = (
                    torch.cat([ent[r, : max(0, n - 1)].detach().cpu(), torch.full((1,), float("nan"))])[:n]
                    if ent is not None
                    else None
                )
                text = prompts[a + r] + responses[a + r]
                out.append(TokenScores(text, ids, offs, resp, lp if requires_grad else lp.detach().cpu(), e))
    return out


def sequence_logprob(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    normalize: bool | str = False,
    batch_size: int = 8,
    layout: str = "separate",
    append_eos: bool | Sequence[bool] = False,
    add_bos: bool | None = None,
    requires_grad: bool = False,
) -> torch.Tensor:
    """log p(response | prompt) for each pair, under the model's own tokenizer: ``[N]`` float32.

    ``normalize``: False/'none' (sum), True/'token' (mean per response token of *this* tokenizer) or 'char'
    (per response character: comparable across tokenizers). ``append_eos`` also scores the end of sequence
    (what a sample that stopped did). ``layout``/``add_bos``: see :func:`encode_pair`. An empty response without
    EOS scores 0 (−inf would poison group statistics; the task scorer judges empty answers).
    """
    mode = _norm_mode(normalize)
    scores = score_pairs(
        model,
        tokenizer,
        prompts,
        responses,
        layout=layout,
        append_eos=append_eos,
        add_bos=add_bos,
        batch_size=batch_size,
        requires_grad=requires_grad,
    )
    vals = []
    for i, (r, sc) in enumerate(zip(responses, scores)):
        sel = torch.tensor(sc.response, dtype=torch.bool, device=sc.logprobs.device)
        lp = sc.logprobs[sel]
        if torch.isnan(lp).any():
            raise DGError(
                f"sequence_logprob: response {i} starts the text and tokenizer {type(tokenizer).__name__} has no "
                "bos/eos token to condition it on; expected a non-empty prompt, a bos/eos token, or add_bos=None"
            )
        total = lp.sum()
        n_tok = int(sel.sum())
        if mode == "token":
            total = total / max(1, n_tok)
        elif mode == "char":
            total = total / max(1, len(r))
        vals.append(total.float())
    if not vals:
        return torch.zeros(0)
    return torch.stack(vals)


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
    layout: str = "separate",
) -> list[SpanComparison]:
    """Compare two models with different tokenizers span by span over each response.

    Each model scores ``prompt + response`` with its own tokenizer; the response tokens of both are aligned on
    character offsets (:func:`align_tokens`) and each span's log-probability is the sum over its tokens.
    """
    sa = score_pairs(model_a, tokenizer_a, prompts, responses, batch_size=batch_size, layout=layout)
    sb = score_pairs(model_b, tokenizer_b, prompts, responses, batch_size=batch_size, layout=layout)
    out = []
    for x, y in zip(sa, sb):
        offs_a = [o if m else (0, 0) for o, m in zip(x.offsets, x.response)]
        offs_b = [o if m else (0, 0) for o, m in zip(y.offsets, y.response)]
        spans = align_tokens(offs_a, offs_b, text_len=len(x.text))
        lp_a = torch.stack([x.logprobs[list(sp.a)].sum() for sp in spans]) if spans else torch.zeros(0)
        lp_b = torch.stack([y.logprobs[list(sp.b)].sum() for sp in spans]) if spans else torch.zeros(0)
        out.append(SpanComparison(spans, lp_a, lp_b, [x.text[sp.start : sp.end] for sp in spans]))
    return out
