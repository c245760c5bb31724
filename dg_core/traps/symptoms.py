"""Student symptoms of a failed distillation: overconfidence, self-correction collapse, local decoding degradation.

The paper finds that distillation traps show up in students as *overconfident hallucinations* (sure and wrong),
*self-correction collapse* (a wrong step in the prefix is never repaired) and *local decoding degradation*
(repetition loops, low diversity, runs to the length limit). These measures apply to any student, distilled
or not, so the same numbers can compare students of an original and of a calibrated teacher.

The text-only measures (:func:`loop_period`, :func:`distinct_n`, :func:`degradation`, :func:`ece`,
:func:`reliability`) are pure; :func:`overconfidence` and :func:`self_correction` drive a model through
:mod:`dg_core.base.generate` and score answers with the task's own (strict) scorer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dg_core.base.align import sequence_logprob
from dg_core.base.generate import generate_tokens
from dg_core.errors import DGError

# ----------------------------------------------------------------------------------------------- text measures


def loop_period(text: str, *, max_period: int = 24, min_repeats: int = 3, min_chars: int = 8) -> int | None:
    """The period of a repetition loop the text *ends* in, or None.

    A loop is a unit of 1..``max_period`` characters repeated at least ``min_repeats`` times back to back at the
    end, covering at least ``min_chars`` characters (``"#21 #21 #21 "`` or ``"aaaaaaaa"``). Degenerate decoding
    loops until the length limit, so the end of the text is where to look.
    """
    s = text.rstrip()
    best = None
    for p in range(1, min(max_period, len(s) // max(1, min_repeats)) + 1):
        unit = s[-p:]
        reps = 1
        while reps * p + p <= len(s) and s[-(reps + 1) * p : -reps * p] == unit:
            reps += 1
        if reps >= min_repeats and reps * p >= min_chars:
            best = p
            break
    return best


def _ngrams(items: Sequence[Any], n: int) -> list[tuple]:
    return [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]


def distinct_n(texts: Sequence[str], n: int, *, unit: str = "word") -> float:
    """Distinct-n: unique n-grams / all n-grams across ``texts`` (words or characters). 1.0 when there are none."""
    grams: list[tuple] = []
    for t in texts:
        items = t.split() if unit == "word" else list(t)
        grams += _ngrams(items, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def repeated_ngram_rate(text: str, n: int = 4) -> float:
    """Share of character n-grams in one text that already occurred earlier in it (0 = no repetition)."""
    grams = _ngrams(list(text), n)
    if not grams:
        return 0.0
    seen: set[tuple] = set()
    rep = 0
    for g in grams:
        rep += g in seen
        seen.add(g)
    return rep / len(grams)


def degradation(texts: Sequence[str], finished: Sequence[bool] | None = None, **loop_kw: Any) -> dict[str, Any]:
    """Local decoding degradation of a set of responses: loop rate, truncation rate, distinct-n, repetition.

    ``finished[i]`` is whether response i ended with EOS (False = cut at the length limit: truncated).
    """
    if finished is not None and len(finished) != len(texts):
        raise DGError(f"degradation: {len(texts)} texts but {len(finished)} finished flags, expected equal")
    n = len(texts)
    periods = [loop_period(t, **loop_kw) for t in texts]
    out = {
        "n": n,
        "loop_rate": sum(p is not None for p in periods) / n if n else 0.0,
        "truncation_rate": (sum(not f for f in finished) / n if n else 0.0) if finished is not None else None,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "distinct_char_4": distinct_n(texts, 4, unit="char"),
        "repeated_4gram_rate": sum(repeated_ngram_rate(t) for t in texts) / n if n else 0.0,
        "mean_chars": sum(len(t) for t in texts) / n if n else 0.0,
        "loop_examples": [t[-60:] for t, p in zip(texts, periods) if p is not None][:3],
    }
    return out


def reliability(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> dict[str, list]:
    """Equal-width confidence bins: mean confidence, accuracy and count per non-empty bin (a calibration diagram)."""
    if len(confidence) != len(correct):
        raise DGError(f"reliability: {len(confidence)} confidences but {len(correct)} outcomes, expected equal")
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(n_bins)]
    for c, y in zip(confidence, correct):
        if not 0.0 <= c <= 1.0:
            raise DGError(f"reliability: confidence {c} outside [0, 1]")
        bins[min(n_bins - 1, int(c * n_bins))].append((c, bool(y)))
    rows = {"lo": [], "hi": [], "confidence": [], "accuracy": [], "count": []}
    for i, b in enumerate(bins):
        if not b:
            continue
        rows["lo"].append(i / n_bins)
        rows["hi"].append((i + 1) / n_bins)
        rows["confidence"].append(sum(c for c, _ in b) / len(b))
        rows["accuracy"].append(sum(y for _, y in b) / len(b))
        rows["count"].append(len(b))
    return rows


def ece(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> float:
    """Expected calibration error: count-weighted mean |accuracy − confidence| over equal-width bins."""
    r = reliability(confidence, correct, n_bins)
    total = sum(r["count"])
    if not total:
        return 0.0
    return sum(n * abs(a - c) for n, a, c in zip(r["count"], r["accuracy"], r["confidence"])) / total


# ----------------------------------------------------------------------------------------------- corruptions
_STEP = re.compile(r"=\s*(-?\d+)")


def inject_wrong_step(reference: str) -> tuple[str, str] | None:
    """(clean prefix, corrupted prefix) cut right after the first intermediate result ``=<n>`` of a trace.

    The corrupted prefix states ``n+1`` instead of ``n``; a student that self-corrects still reaches the right
    final answer. None when the trace has no intermediate result before its final answer.
    """
    final = reference.rfind("#")
    for m in _STEP.finditer(reference):
        if final != -1 and m.end() > final:
            break
        value = int(m.group(1))
        cut = m.end()
        return reference[:cut], reference[: m.start(1)] + str(value + 1)
    return None


def corrupt_answer(reference: str, answer: str) -> str | None:
    """The reference with its final answer replaced by a wrong one (integer + 1, or the next option letter)."""
    if not answer or answer not in reference:
        return None
    if re.fullmatch(r"-?\d+", answer):
        wrong = str(int(answer) + 1)
    elif re.fullmatch(r"[A-J]", answer):
        wrong = "ABCDEFGHIJ"[("ABCDEFGHIJ".index(answer) + 1) % 10]
    else:
        return None
    i = reference.rfind(answer)
    return reference[:i] + wrong + reference[i + len(answer) :]


# ----------------------------------------------------------------------------------------------- model-driven
@dataclass
class Answers:
    """Greedy responses of a model to a set of examples, with the task's verdicts."""

    texts: list[str]
    finished: list[bool]
    parsed: list[str | None]
    correct: list[bool]


def answer(model, tokenizer, task, examples, *, max_new_tokens: int, batch_size: int, seed: int = 0) -> Answers:
    """Greedy answers and their scores (the accuracy every other measure conditions on)."""

    prompts = [task.prompt(e, tokenizer) for e in examples]
    ro = generate_tokens(
        model, tokenizer, prompts, n=1, max_new_tokens=max_new_tokens, do_sample=False, batch_size=batch_size, seed=seed
    )
    scores = task.score_batch(examples, ro.texts)
    return Answers(ro.texts, ro.finished, [s.parsed for s in scores], [s.correct for s in scores])


def overconfidence(
    model,
    tokenizer,
    task,
    examples,
    greedy: Answers,
    *,
    method: str = "consistency",
    n_samples: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    n_bins: int = 10,
    high: float = 0.8,
) -> dict[str, Any]:
    """Confidence of the model in its greedy answers, against their correctness.

    ``consistency``: the share of ``n_samples`` sampled answers that agree with the greedy answer (answer-level
    confidence; needs no access to how the answer is phrased; 0 when the greedy response states no answer). ``token``: the geometric-mean token probability
    of the greedy response. Reports ECE, the reliability diagram, mean confidence on wrong and right answers and
    the rate of wrong answers given with confidence >= ``high`` (overconfident hallucinations).
    """

    if method not in ("consistency", "token"):
        raise DGError(f"confidence method {method!r}: expected 'consistency' or 'token'")
    prompts = [task.prompt(e, tokenizer) for e in examples]
    if method == "consistency":
        if n_samples < 1:
            raise DGError(f"confidence_samples={n_samples}: expected >= 1 for the consistency method")
        ro = generate_tokens(
            model,
            tokenizer,
            prompts,
            n=n_samples,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=batch_size,
            seed=seed,
        )
        nested = ro.nested_texts()
        conf = []
        for e, g, samples in zip(examples, greedy.parsed, nested):
            parsed = [s.parsed for s in task.score_batch([e] * len(samples), samples)]
            # no parsed greedy answer = no answer to be confident in (None never "agrees")
            conf.append(sum(p is not None and p == g for p in parsed) / len(parsed))
    else:
        lp = sequence_logprob(
            model, tokenizer, prompts, greedy.texts, normalize="token", batch_size=batch_size, append_eos=True
        )
        conf = [float(torch.exp(x).clamp(0, 1)) for x in lp]
    correct = greedy.correct
    wrong = [c for c, y in zip(conf, correct) if not y]
    right = [c for c, y in zip(conf, correct) if y]
    return {
        "method": method,
        "n": len(conf),
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "ece": ece(conf, correct, n_bins),
        "mean_confidence": sum(conf) / len(conf) if conf else 0.0,
        "mean_confidence_wrong": sum(wrong) / len(wrong) if wrong else None,
        "mean_confidence_right": sum(right) / len(right) if right else None,
        "overconfident_wrong_rate": sum(c >= high for c in wrong) / len(conf) if conf else 0.0,
        "high": high,
        "reliability": reliability(conf, correct, n_bins),
    }


def self_correction(
    model,
    tokenizer,
    task,
    examples,
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Recovery after a wrong intermediate step is injected into the response prefix.

    For each example whose reference has an intermediate result, the model continues (greedily) once from the
    clean prefix and once from the corrupted one (see :func:`inject_wrong_step`); the full response (prefix +
    continuation) is scored. ``recovery_rate`` is accuracy from corrupted prefixes, ``clean_rate`` from clean
    ones; their ratio says how much of its ability the model keeps when its own context is wrong.
    """

    rows = []
    for e in examples:
        cut = inject_wrong_step(e.reference)
        if cut is not None:
            rows.append((e, *cut))
    if not rows:
        return {"n": 0, "recovery_rate": None, "clean_rate": None, "ratio": None, "examples": []}
    base = [task.prompt(e, tokenizer) for e, _, _ in rows]
    out = {}
    for name, idx in (("clean", 1), ("corrupted", 2)):
        prefixes = [r[idx] for r in rows]
        ro = generate_tokens(
            model,
            tokenizer,
            [b + p for b, p in zip(base, prefixes)],
            n=1,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            batch_size=batch_size,
            seed=seed,
        )
        full = [p + t for p, t in zip(prefixes, ro.texts)]
        out[name] = (full, [s.correct for s in task.score_batch([r[0] for r in rows], full)])
    clean = sum(out["clean"][1]) / len(rows)
    rec = sum(out["corrupted"][1]) / len(rows)
    return {
        "n": len(rows),
        "recovery_rate": rec,
        "clean_rate": clean,
        "ratio": rec / clean if clean > 0 else None,
        "examples": [{"corrupted_prefix": r[2], "response": t} for r, t in zip(rows[:3], out["corrupted"][0][:3])],
    }


def wrong_trace_preference(
    model, tokenizer, task, examples, *, batch_size: int = 16, extra_pairs: Sequence[tuple[Any, str, str]] = ()
) -> dict[str, Any]:
    """How strongly a model prefers incorrect traces over correct ones (per-character log-likelihood).

    Pairs are (reference, reference with a wrong final answer) from ``examples``, plus any ``extra_pairs``
    of (example, correct response, wrong response) e.g. from teacher samples. Reports the share of pairs where
    the wrong trace is more likely and the mean margin log p(wrong) − log p(correct) per character (> 0: prefers
    wrong). Per-character normalisation keeps tokenizers comparable.
    """

    pairs: list[tuple[Any, str, str]] = []
    for e in examples:
        bad = corrupt_answer(e.reference, e.answer)
        if bad is None or not e.reference:
            continue
        if task.score(e, e.reference).correct and not task.score(e, bad).correct:
            pairs.append((e, e.reference, bad))
    pairs += list(extra_pairs)
    if not pairs:
        return {"n_pairs": 0, "prefers_wrong": None, "margin_per_char": None}
    prompts = [task.prompt(e, tokenizer) for e, _, _ in pairs]
    good = sequence_logprob(
        model, tokenizer, prompts, [g for _, g, _ in pairs], normalize="char", batch_size=batch_size, append_eos=True
    )
    bad = sequence_logprob(
        model, tokenizer, prompts, [b for _, _, b in pairs], normalize="char", batch_size=batch_size, append_eos=True
    )
    margin = bad - good
    return {
        "n_pairs": len(pairs),
        "prefers_wrong": float((margin > 0).float().mean()),
        "margin_per_char": float(margin.mean()),
    }
