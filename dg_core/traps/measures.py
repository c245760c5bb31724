"""Trap measures for a (teacher, student-or-proxy, dataset) triple: tail noise, off-policy instability, the gap.

Comparing next-token distributions of two models needs positions where both predict "what comes after the
same characters", over a common set of outcomes:

- **positions**: both models score the same ``prompt + response`` with their own tokenizers (the layout of
  :mod:`dg_core.base.generate`); a response character offset where *both* tokenizations start a token is a matched
  position, and each model's distribution there is read at its preceding token.
- **outcomes**: tokens whose surface string exists in both vocabularies (:func:`shared_vocab`), plus one
  "other" bucket holding each model's mass on everything else. With one tokenizer the shared vocabulary is the
  whole vocabulary and the bucket is empty, so this is the exact token-level divergence; across tokenizers it
  is the divergence on the common surface forms (the exact-match part of GOLD/ULD-style cross-tokenizer KD).

What is measured (per matched position, aggregated in :class:`PositionTable` and summarised by the functions
below):

- *tail noise*: the head/tail split of forward and reverse KL for k in {1, 5, 20, 100, full}, by token class
  (frequent/function tokens vs the rest), and the teacher's own probability mass outside its top-k;
- *off-policy instability*: divergences and teacher entropy on teacher-generated vs student-generated
  prefixes, binned by prefix length;
- *teacher–student gap*: sequence log-likelihood gap on teacher samples (a sequence-level forward-KL
  estimate), aligned-span reverse KL on student samples (a sequence-level reverse-KL estimate, decomposed over
  spans where both tokenizations agree), accuracy gap.

Over 500 lines: the three traps share the matched-position and shared-vocabulary machinery above; split, each would re-import most of it.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dg_core.base import kl
from dg_core.base.align import _model_device, aligned_span_logprobs, encode_pair, sequence_logprob
from dg_core.errors import DGError

# ----------------------------------------------------------------------------------------------- vocabularies


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table (byte-level BPE token strings -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_strings(tokenizer) -> list[str | None]:
    """The surface string of every token id (None for special tokens and partial UTF-8 byte tokens)."""
    n = len(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    dec = type(getattr(backend, "decoder", None)).__name__ if backend is not None else ""
    table = _byte_decoder() if dec == "ByteLevel" else None
    out: list[str | None] = []
    for i, t in enumerate(toks):
        if i in special or t is None:
            out.append(None)
            continue
        if table is not None:
            try:
                out.append(bytes(table[c] for c in t).decode("utf-8"))
            except (KeyError, UnicodeDecodeError):
                out.append(None)
        elif dec == "Metaspace":
            out.append(t.replace("\u2581", " "))
        else:
            out.append(tokenizer.convert_tokens_to_string([t]))
    return out


EOS = "<eos>"


@dataclass
class SharedVocab:
    """Token ids of both tokenizers with the same surface string (index s in 0..S-1), plus both EOS tokens as the
    outcome ``EOS``; index S is the "other" bucket."""

    teacher_ids: torch.Tensor
    student_ids: torch.Tensor
    strings: list[str]
    identical: bool
    teacher_vocab: int
    student_vocab: int

    @property
    def size(self) -> int:
        return len(self.strings)

    def teacher_index(self) -> dict[int, int]:
        return {int(t): s for s, t in enumerate(self.teacher_ids.tolist())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_shared": self.size,
            "identical": self.identical,
            "teacher_vocab": self.teacher_vocab,
            "student_vocab": self.student_vocab,
            "teacher_coverage": self.size / max(1, self.teacher_vocab),
            "student_coverage": self.size / max(1, self.student_vocab),
        }


def shared_vocab(teacher_tokenizer, student_tokenizer) -> SharedVocab:
    """Map the two vocabularies onto their common surface strings (identical tokenizers: the whole vocabulary)."""
    ta, sb = token_strings(teacher_tokenizer), token_strings(student_tokenizer)
    identical = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    first_b: dict[str, int] = {}
    for j, s in enumerate(sb):
        if s is not None and s not in first_b:
            first_b[s] = j
    t_ids, s_ids, strings, seen = [], [], [], set()
    for i, s in enumerate(ta):
        if s is None or s in seen or s not in first_b:
            continue
        seen.add(s)
        t_ids.append(i)
        s_ids.append(first_b[s])
        strings.append(s)
    if not strings:
        raise DGError("teacher and student tokenizers share no token strings: expected some common surface forms")
    if teacher_tokenizer.eos_token_id is not None and student_tokenizer.eos_token_id is not None:
        t_ids.append(int(teacher_tokenizer.eos_token_id))  # "stop here" is an outcome both models share
        s_ids.append(int(student_tokenizer.eos_token_id))
        strings.append(EOS)
    return SharedVocab(
        torch.tensor(t_ids, dtype=torch.long),
        torch.tensor(s_ids, dtype=torch.long),
        strings,
        identical,
        len(teacher_tokenizer),
        len(student_tokenizer),
    )


def project(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``[M, V] -> [M, S+1]`` on the shared ids plus one bucket with all remaining mass."""
    lp = torch.log_softmax(logits.float(), -1)
    ids = ids.to(lp.device)
    head = lp.index_select(-1, ids)
    rest = lp.index_fill(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([head, rest], -1)


def frequent_class(shared: SharedVocab, texts: Sequence[str], tokenizer, n_frequent: int = 50) -> torch.Tensor:
    """Boolean ``[S+1]`` mask of "frequent/function" outcomes: the ``n_frequent`` shared tokens seen most often in
    ``texts`` (teacher tokenization) plus shared tokens made only of whitespace/punctuation. The bucket is not."""
    counts: Counter = Counter()
    for t in texts:
        counts.update(tokenizer(t, add_special_tokens=False)["input_ids"])
    index = shared.teacher_index()
    mask = torch.zeros(shared.size + 1, dtype=torch.bool)
    ranked = [index[t] for t, _ in counts.most_common() if t in index]
    for s in ranked[:n_frequent]:
        mask[s] = True
    for s, string in enumerate(shared.strings):
        if string and all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in string):
            mask[s] = True
    return mask


# ----------------------------------------------------------------------------------------------- positions
@dataclass
class PositionTable:
    """Per-position measurements over a set of (prompt, response) texts.

    Matched positions (both models predict the token starting at the same character): ``sample``, ``prefix``
    (response characters before it), ``forward``/``reverse`` KL on the shared outcomes, ``ht_forward`` /
    ``ht_reverse`` head/tail splits, ``student_entropy``. All teacher response positions: ``t_sample``,
    ``t_prefix``, ``t_entropy`` and ``t_tail_mass[k]`` (teacher mass outside its own top-k, native vocabulary).
    """

    ks: list[int | None]
    sample: torch.Tensor
    prefix: torch.Tensor
    forward: torch.Tensor
    reverse: torch.Tensor
    ht_forward: kl.HeadTail
    ht_reverse: kl.HeadTail
    student_entropy: torch.Tensor
    t_sample: torch.Tensor
    t_prefix: torch.Tensor
    t_entropy: torch.Tensor
    t_tail_mass: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.forward.numel())


def _forward_logits(model, tokenizer, encoded: list[tuple[list[int], Any, Any]]) -> list[torch.Tensor]:
    """Logits ``[n_i, V]`` of each encoded sequence (one right-padded batch)."""
    device = _model_device(model)
    width = max(1, max(len(e[0]) for e in encoded))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    att = torch.zeros_like(ids)
    for r, (x, _, _) in enumerate(encoded):
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        att[r, : len(x)] = 1
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float().cpu()
    return [logits[r, : len(x)] for r, (x, _, _) in enumerate(encoded)]


def _starts(offsets, resp, end: int) -> dict[int, int]:
    """Response character offset -> index of the first token starting there (predicted at index - 1).

    An appended EOS (zero-width at the end of the text) counts as starting at ``end``: the prediction after the
    whole response is where a model decides to stop, or to go on.
    """
    out: dict[int, int] = {}
    for i, ((a, b), r) in enumerate(zip(offsets, resp)):
        if not r or i == 0 or a in out:
            continue
        if b > a or (a == b == end and i == len(offsets) - 1):
            out[a] = i
    return out


def compare_positions(
    teacher,
    teacher_tokenizer,
    student,
    student_tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    shared: SharedVocab,
    *,
    token_class: torch.Tensor | None = None,
    ks: Sequence[int | None] = kl.DEFAULT_KS,
    finished: Sequence[bool] | None = None,
    student_prompts: Sequence[str] | None = None,
    batch_size: int = 8,
) -> PositionTable:
    """Measure both models' next-token distributions along each response (see module docstring).

    ``student_prompts`` gives the student its own prompt texts (e.g. its chat template) for the same responses;
    positions are matched on offsets into the response, so the prompts may differ.
    ``finished[i]`` (default: all True) says response i ended with EOS, so the position after it (predicting EOS)
    is measured too; for a response cut at the length limit it is not.
    """
    if len(prompts) != len(responses):
        raise DGError(f"compare_positions: {len(prompts)} prompts but {len(responses)} responses")
    finished = [True] * len(prompts) if finished is None else list(finished)
    s_prompts = list(prompts) if student_prompts is None else list(student_prompts)
    if len(s_prompts) != len(prompts):
        raise DGError(f"compare_positions: {len(prompts)} prompts but {len(s_prompts)} student prompts")
    if len(finished) != len(prompts):
        raise DGError(f"compare_positions: {len(prompts)} prompts but {len(finished)} finished flags")
    ks = list(ks)
    native_ks = [k for k in ks if k is not None]
    cols: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("sample", "prefix", "t_sample", "t_prefix", "t_ent", "t_tail", "s_ent")
    }
    tl_rows: list[torch.Tensor] = []
    sl_rows: list[torch.Tensor] = []
    ht_parts: dict[str, list[kl.HeadTail]] = {"forward": [], "reverse": []}
    div_parts: dict[str, list[torch.Tensor]] = {"forward": [], "reverse": []}

    def flush() -> None:
        if not tl_rows:
            return
        tp = project(torch.stack(tl_rows), shared.teacher_ids)
        sp = project(torch.stack(sl_rows), shared.student_ids)
        for kind in ("forward", "reverse"):
            div_parts[kind].append(kl.token_divergence(tp, sp, kind))
            ht_parts[kind].append(kl.head_tail(tp, sp, kind, ks=ks, token_class=token_class))
        cols["s_ent"].append(kl.token_entropy(torch.stack(sl_rows)))
        tl_rows.clear()
        sl_rows.clear()

    for a in range(0, len(prompts), batch_size):
        ps, rs = prompts[a : a + batch_size], responses[a : a + batch_size]
        fs = finished[a : a + batch_size]
        enc_t = [encode_pair(teacher_tokenizer, p, r, append_eos=f) for p, r, f in zip(ps, rs, fs)]
        enc_s = [
            encode_pair(student_tokenizer, p, r, append_eos=f) for p, r, f in zip(s_prompts[a : a + batch_size], rs, fs)
        ]
        lt = _forward_logits(teacher, teacher_tokenizer, enc_t)
        ls = _forward_logits(student, student_tokenizer, enc_s)
        for r, p in enumerate(ps):
            # keys: character offsets into the response (each side's prompt may differ)
            cut, cut_s = len(p), len(s_prompts[a + r])
            st = {c - cut: i for c, i in _starts(enc_t[r][1], enc_t[r][2], cut + len(rs[r])).items()}
            ss = {c - cut_s: i for c, i in _starts(enc_s[r][1], enc_s[r][2], cut_s + len(rs[r])).items()}
            t_pos = sorted(st)
            if t_pos:
                rows = torch.tensor([st[c] - 1 for c in t_pos])
                logits = lt[r].index_select(0, rows)
                cols["t_sample"].append(torch.full((len(t_pos),), a + r, dtype=torch.long))
                cols["t_prefix"].append(torch.tensor(t_pos, dtype=torch.long))
                cols["t_ent"].append(kl.token_entropy(logits))
                probs = torch.softmax(logits, -1)
                top = probs.topk(min(max(native_ks, default=1), probs.shape[-1]), -1).values.cumsum(-1)
                tail = [1.0 - top[:, min(k, top.shape[-1]) - 1] for k in native_ks]
                cols["t_tail"].append(torch.stack(tail, -1).clamp_min(0.0) if tail else torch.zeros(len(t_pos), 0))
            both = sorted(set(st) & set(ss))
            for c in both:
                tl_rows.append(lt[r][st[c] - 1])
                sl_rows.append(ls[r][ss[c] - 1])
            cols["sample"].append(torch.full((len(both),), a + r, dtype=torch.long))
            cols["prefix"].append(torch.tensor(both, dtype=torch.long))
        flush()

    def cat(name: str, empty_shape=(0,), dtype=torch.float32) -> torch.Tensor:
        return torch.cat(cols[name]) if cols[name] else torch.zeros(empty_shape, dtype=dtype)

    def cat_ht(parts: list[kl.HeadTail]) -> kl.HeadTail:
        if not parts:
            z = torch.zeros(0)
            zh = torch.zeros(len(ks), 0)
            return kl.HeadTail(
                ks, z, zh, z if token_class is not None else None, zh if token_class is not None else None
            )
        return kl.HeadTail(
            ks,
            torch.cat([h.full for h in parts]),
            torch.cat([h.head for h in parts], -1),
            torch.cat([h.full_class for h in parts]) if token_class is not None else None,
            torch.cat([h.head_class for h in parts], -1) if token_class is not None else None,
        )

    return PositionTable(
        ks=ks,
        sample=cat("sample", dtype=torch.long),
        prefix=cat("prefix", dtype=torch.long),
        forward=torch.cat(div_parts["forward"]) if div_parts["forward"] else torch.zeros(0),
        reverse=torch.cat(div_parts["reverse"]) if div_parts["reverse"] else torch.zeros(0),
        ht_forward=cat_ht(ht_parts["forward"]),
        ht_reverse=cat_ht(ht_parts["reverse"]),
        student_entropy=cat("s_ent"),
        t_sample=cat("t_sample", dtype=torch.long),
        t_prefix=cat("t_prefix", dtype=torch.long),
        t_entropy=cat("t_ent"),
        t_tail_mass=cat("t_tail", (0, len(native_ks))),
    )


# ----------------------------------------------------------------------------------------------- summaries
def _mean(x: torch.Tensor) -> float | None:
    return float(x.float().mean()) if x.numel() else None


def tail_noise(
    table: PositionTable,
    *,
    k_mass: int = 5,
    mass_threshold: float = 0.2,
    share_k: int = 20,
    share_threshold: float = 0.5,
    min_tail_kl: float = 0.05,
) -> dict[str, Any]:
    """Tail noise on teacher samples: how much KL signal and teacher mass sit outside the top-k.

    Flagged when the teacher's mean mass outside its top-``k_mass`` exceeds ``mass_threshold`` or when more than
    ``share_threshold`` of the forward KL comes from outside the top-``share_k`` *and* that tail part is at least
    ``min_tail_kl`` nats per position (a large share of a negligible divergence is not a trap).
    """
    native = [k for k in table.ks if k is not None]
    mass = {str(k): _mean(table.t_tail_mass[:, i]) for i, k in enumerate(native)}
    out: dict[str, Any] = {
        "n_positions": table.n,
        "teacher_entropy": _mean(table.t_entropy),
        "teacher_tail_mass": mass,
        "forward": table.ht_forward.summary(),
        "reverse": table.ht_reverse.summary(),
    }
    why = []
    m = mass.get(str(k_mass))
    if m is not None and m > mass_threshold:
        why.append(f"teacher mass outside top-{k_mass} is {m:.2f} > {mass_threshold}")
    fwd = out["forward"]
    row = next((r for r in fwd["per_k"] if r["k"] == share_k), None)
    if row is not None and table.n:
        per_pos_tail = row["tail"] / table.n
        if row["tail_share"] > share_threshold and per_pos_tail >= min_tail_kl:
            why.append(
                f"{row['tail_share']:.0%} of forward KL ({per_pos_tail:.3f} nats/token) is outside top-{share_k}"
            )
    out["flag"] = bool(why)
    out["why"] = "; ".join(why)
    return out


def _bins(prefix: torch.Tensor, n_bins: int, max_prefix: int) -> torch.Tensor:
    width = max(1, math.ceil((max_prefix + 1) / n_bins))
    return (prefix // width).clamp_max(n_bins - 1), width


def _binned(values: torch.Tensor, prefix: torch.Tensor, n_bins: int, max_prefix: int) -> list[float | None]:
    idx, _ = _bins(prefix, n_bins, max_prefix)
    return [_mean(values[idx == b]) for b in range(n_bins)]


def _slope(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None


def off_policy(
    teacher_prefixes: PositionTable,
    student_prefixes: PositionTable,
    *,
    n_bins: int = 8,
    ratio_threshold: float = 2.0,
    entropy_threshold: float = 0.5,
) -> dict[str, Any]:
    """Divergence and teacher entropy on teacher-generated (off-policy) vs student-generated (on-policy) prefixes.

    Flagged when reverse KL on student prefixes is more than ``ratio_threshold`` times that on teacher prefixes,
    or when the teacher's entropy along student prefixes exceeds that along its own by more than
    ``entropy_threshold`` nats: the teacher's signal is unreliable exactly where on-policy KD would query it.
    """
    tp, sp = teacher_prefixes, student_prefixes
    maxp = int(max([0] + [int(x.max()) for x in (tp.prefix, sp.prefix, tp.t_prefix, sp.t_prefix) if x.numel()]))
    _, width = _bins(torch.zeros(1, dtype=torch.long), n_bins, maxp)
    centers = [(b + 0.5) * width for b in range(n_bins)]
    out: dict[str, Any] = {"bin_width_chars": width, "bin_centers": centers}
    for name, t in (("teacher_prefixes", tp), ("student_prefixes", sp)):
        out[name] = {
            "n_positions": t.n,
            "forward_kl": _mean(t.forward),
            "reverse_kl": _mean(t.reverse),
            "teacher_entropy": _mean(t.t_entropy),
            "reverse_kl_by_prefix": _binned(t.reverse, t.prefix, n_bins, maxp),
            "forward_kl_by_prefix": _binned(t.forward, t.prefix, n_bins, maxp),
            "teacher_entropy_by_prefix": _binned(t.t_entropy, t.t_prefix, n_bins, maxp),
        }
        out[name]["teacher_entropy_slope"] = _slope(centers, out[name]["teacher_entropy_by_prefix"])
    rk_t, rk_s = out["teacher_prefixes"]["reverse_kl"], out["student_prefixes"]["reverse_kl"]
    e_t, e_s = out["teacher_prefixes"]["teacher_entropy"], out["student_prefixes"]["teacher_entropy"]
    out["reverse_kl_ratio"] = rk_s / rk_t if rk_t and rk_s is not None else None
    out["entropy_increase"] = e_s - e_t if e_t is not None and e_s is not None else None
    why = []
    if out["reverse_kl_ratio"] is not None and out["reverse_kl_ratio"] > ratio_threshold:
        why.append(f"reverse KL on student prefixes is {out['reverse_kl_ratio']:.1f}x that on teacher prefixes")
    if out["entropy_increase"] is not None and out["entropy_increase"] > entropy_threshold:
        why.append(f"teacher entropy rises by {out['entropy_increase']:.2f} nats on student prefixes")
    out["flag"] = bool(why)
    out["why"] = "; ".join(why)
    return out


def gap(
    teacher,
    teacher_tokenizer,
    student,
    student_tokenizer,
    teacher_samples: tuple[Sequence[str], Sequence[str]],
    student_samples: tuple[Sequence[str], Sequence[str]],
    *,
    teacher_accuracy: float | None = None,
    student_accuracy: float | None = None,
    student_prompts: Sequence[str] | None = None,
    batch_size: int = 8,
    accuracy_threshold: float = 0.2,
    loglik_threshold: float = 0.5,
) -> dict[str, Any]:
    """Teacher–student gap: how far the student is from the teacher, measured three ways.

    - ``seq_loglik_gap_per_char``: mean of [log p_T(y|x) − log p_S(y|x)] / |y| over teacher samples y (each
      model with its own tokenizer): a per-character estimate of sequence-level KL(teacher ‖ student).
    - ``aligned_reverse_kl_per_span``/``_per_seq``: on student samples, log p_S − log p_T summed over spans where
      both tokenizations agree (:func:`dg_core.base.align.aligned_span_logprobs`): estimates of reverse KL.
    - ``accuracy_gap``: teacher minus student accuracy.

    ``teacher_samples``/``student_samples`` are (prompts, responses) pairs with prompts in the teacher's format;
    ``student_prompts`` optionally gives the student's own prompt texts for the teacher samples.
    Flagged when the accuracy gap exceeds ``accuracy_threshold`` or the loglik gap exceeds ``loglik_threshold``.
    """
    tps, trs = list(teacher_samples[0]), list(teacher_samples[1])
    sps, srs = list(student_samples[0]), list(student_samples[1])
    keep = [i for i, r in enumerate(trs) if r]
    out: dict[str, Any] = {"n_teacher_samples": len(keep), "n_student_samples": sum(1 for r in srs if r)}
    if keep:
        p_t = [tps[i] for i in keep]
        p_s = [student_prompts[i] for i in keep] if student_prompts is not None else p_t
        r = [trs[i] for i in keep]
        lt = sequence_logprob(teacher, teacher_tokenizer, p_t, r, batch_size=batch_size, append_eos=True)
        ls = sequence_logprob(student, student_tokenizer, p_s, r, batch_size=batch_size, append_eos=True)
        chars = torch.tensor([float(len(x)) for x in r])
        out["seq_loglik_gap"] = float((lt - ls).mean())
        out["seq_loglik_gap_per_char"] = float(((lt - ls) / chars).mean())
        out["teacher_loglik_per_char"] = float((lt / chars).mean())
        out["student_loglik_per_char"] = float((ls / chars).mean())
    else:
        out.update(seq_loglik_gap=None, seq_loglik_gap_per_char=None)
    keep_s = [i for i, r in enumerate(srs) if r]
    if keep_s:
        comps = aligned_span_logprobs(
            student,
            student_tokenizer,
            teacher,
            teacher_tokenizer,
            [sps[i] for i in keep_s],
            [srs[i] for i in keep_s],
            batch_size=batch_size,
        )
        spans = [c.log_ratio for c in comps if c.log_ratio.numel()]
        allr = torch.cat(spans) if spans else torch.zeros(0)
        out["aligned_reverse_kl_per_span"] = _mean(allr)
        out["aligned_reverse_kl_per_seq"] = _mean(torch.stack([s.sum() for s in spans])) if spans else None
        out["n_aligned_spans"] = int(allr.numel())
    else:
        out.update(aligned_reverse_kl_per_span=None, aligned_reverse_kl_per_seq=None, n_aligned_spans=0)
    out["teacher_accuracy"] = teacher_accuracy
    out["student_accuracy"] = student_accuracy
    out["accuracy_gap"] = (
        teacher_accuracy - student_accuracy if teacher_accuracy is not None and student_accuracy is not None else None
    )
    why = []
    if out["accuracy_gap"] is not None and out["accuracy_gap"] > accuracy_threshold:
        why.append(f"accuracy gap {out['accuracy_gap']:.2f} > {accuracy_threshold}")
    g = out.get("seq_loglik_gap_per_char")
    if g is not None and g > loglik_threshold:
        why.append(f"teacher samples are {g:.2f} nats/char less likely under the student")
    out["flag"] = bool(why)
    out["why"] = "; ".join(why)
    return out
