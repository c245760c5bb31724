"""Verifiable instruction constraints (IFEval-style), each a pure check of the response text.

A constraint is a dict ``{"type": <name>, ...params}``; :data:`CHECKS` maps each type to its check, which
returns ``(ok, reason)``. :func:`validate_constraint` rejects unknown types and bad parameters up front so a
malformed dataset row fails in prep, not in the middle of calibration.

Types: ``lowercase``, ``uppercase``, ``min_words``/``max_words`` (n), ``sentences`` (min, max),
``include`` (words), ``forbid`` (words), ``bullets`` (n: exactly n lines starting with ``*`` or ``-``),
``json`` (keys: a JSON object with at least these keys), ``starts_with``/``ends_with`` (text), ``no_commas``,
``paragraphs`` (n: blocks separated by a blank line), ``max_chars`` (n), ``quoted`` (whole reply in "...").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

Check = Callable[[str, dict[str, Any]], tuple[bool, str]]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*", text)


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if _words(s)])


def _bullets(text: str) -> int:
    return len([ln for ln in text.splitlines() if re.match(r"^\s*[*-]\s+\S", ln)])


def _check_json(text: str, p: dict[str, Any]) -> tuple[bool, str]:
    body = text.strip()
    m = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    if m:
        body = m.group(1)
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return False, "not valid JSON"
    if not isinstance(obj, dict):
        return False, "JSON is not an object"
    missing = [k for k in p.get("keys", []) if k not in obj]
    return (not missing, f"JSON lacks keys {missing}" if missing else "JSON object with the keys")


CHECKS: dict[str, Check] = {
    "lowercase": lambda t, p: (t == t.lower() and any(c.isalpha() for c in t), "all lowercase"),
    "uppercase": lambda t, p: (t == t.upper() and any(c.isalpha() for c in t), "all uppercase"),
    "min_words": lambda t, p: (len(_words(t)) >= p["n"], f"{len(_words(t))} words (min {p['n']})"),
    "max_words": lambda t, p: (0 < len(_words(t)) <= p["n"], f"{len(_words(t))} words (max {p['n']})"),
    "sentences": lambda t, p: (
        p.get("min", 1) <= _sentences(t) <= p.get("max", 10**9),
        f"{_sentences(t)} sentences (want {p.get('min', 1)}..{p.get('max', 'any')})",
    ),
    "include": lambda t, p: (
        all(_has_word(t, w) for w in p["words"]),
        f"missing {[w for w in p['words'] if not _has_word(t, w)]}",
    ),
    "forbid": lambda t, p: (
        not any(_has_word(t, w) for w in p["words"]),
        f"uses forbidden {[w for w in p['words'] if _has_word(t, w)]}",
    ),
    "bullets": lambda t, p: (_bullets(t) == p["n"], f"{_bullets(t)} bullets (want {p['n']})"),
    "json": _check_json,
    "starts_with": lambda t, p: (t.strip().lower().startswith(p["text"].lower()), f"starts with {p['text']!r}?"),
    "ends_with": lambda t, p: (t.strip().lower().endswith(p["text"].lower()), f"ends with {p['text']!r}?"),
    "no_commas": lambda t, p: ("," not in t, "no commas"),
    "paragraphs": lambda t, p: (
        len([b for b in re.split(r"\n\s*\n", t.strip()) if b.strip()]) == p["n"],
        f"paragraphs (want {p['n']})",
    ),
    "max_chars": lambda t, p: (0 < len(t.strip()) <= p["n"], f"{len(t.strip())} chars (max {p['n']})"),
    "quoted": lambda t, p: (
        len(t.strip()) >= 2 and t.strip()[0] == '"' and t.strip()[-1] == '"',
        "wrapped in double quotes",
    ),
}

_PARAMS: dict[str, dict[str, type]] = {
    "min_words": {"n": int},
    "max_words": {"n": int},
    "bullets": {"n": int},
    "paragraphs": {"n": int},
    "max_chars": {"n": int},
    "include": {"words": list},
    "forbid": {"words": list},
    "starts_with": {"text": str},
    "ends_with": {"text": str},
}


def validate_constraint(c: Any) -> None:
    """Raise ``ValueError`` naming what is wrong with one constraint dict."""
    if not isinstance(c, dict) or "type" not in c:
        raise ValueError(f"constraint {c!r}: expected an object with a 'type'")
    kind = c["type"]
    if kind not in CHECKS:
        raise ValueError(f"constraint type {kind!r}: expected one of {sorted(CHECKS)}")
    for name, tp in _PARAMS.get(kind, {}).items():
        v = c.get(name)
        if not isinstance(v, tp) or isinstance(v, bool) or (tp is list and not all(isinstance(x, str) for x in v)):
            raise ValueError(f"constraint {kind}: parameter {name!r} got {v!r}, expected {tp.__name__}")
        if tp is int and v < 0:
            raise ValueError(f"constraint {kind}: parameter {name!r} got {v}, expected >= 0")
    if kind == "json" and not all(isinstance(k, str) for k in c.get("keys", [])):
        raise ValueError("constraint json: parameter 'keys' must be a list of strings")
    if kind == "sentences" and not any(k in c for k in ("min", "max")):
        raise ValueError("constraint sentences: expected 'min' and/or 'max'")


def check_all(text: str, constraints: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(type, ok, reason) for every constraint."""
    return [(c["type"], *CHECKS[c["type"]](text, c)) for c in constraints]


def describe(c: dict[str, Any]) -> str:
    """The instruction sentence for a constraint (used by the synthetic generator)."""
    kind = c["type"]
    return {
        "lowercase": lambda: "Use only lowercase letters.",
        "uppercase": lambda: "Use only capital letters.",
        "min_words": lambda: f"Use at least {c['n']} words.",
        "max_words": lambda: f"Use at most {c['n']} words.",
        "sentences": lambda: (
            f"Write exactly {c['min']} sentences."
            if c.get("min") == c.get("max")
            else f"Write {c.get('min', 1)} to {c.get('max', 'any number of')} sentences."
        ),
        "include": lambda: (
            f"Include the word{'s' if len(c['words']) > 1 else ''} " + ", ".join(f"'{w}'" for w in c["words"]) + "."
        ),
        "forbid": lambda: (
            f"Do not use the word{'s' if len(c['words']) > 1 else ''} " + ", ".join(f"'{w}'" for w in c["words"]) + "."
        ),
        "bullets": lambda: f"Answer with exactly {c['n']} bullet points (* item).",
        "json": lambda: "Answer in JSON with keys " + ", ".join(c.get("keys", [])) + ".",
        "starts_with": lambda: f"Start with '{c['text']}'.",
        "ends_with": lambda: f"End with '{c['text']}'.",
        "no_commas": lambda: "Do not use commas.",
        "paragraphs": lambda: f"Write {c['n']} paragraphs separated by a blank line.",
        "max_chars": lambda: f"Use at most {c['n']} characters.",
        "quoted": lambda: "Wrap your whole answer in double quotes.",
    }[kind]()
