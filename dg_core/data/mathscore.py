"""Final-answer extraction and numeric equivalence for math responses.

Models write answers as ``\\boxed{3/4}``, ``#### 1,234``, "The answer is $12.50.", or just end on a number;
references come as ``72``, ``\\frac{3}{4}``, ``0.75``. Accuracy and the calibration reward ``r_task`` both rest on
this, so equivalence is exact rational arithmetic (``fractions.Fraction``), never string match, and anything
ambiguous (two numbers where one answer was promised, an empty box) scores 0.

Rules decided on real model outputs: thousands grouped with spaces in an answer span (``#### 1 234``) are one
number; a response without a stated answer whose closing sentences offer two numbers as alternatives ("could be
12, or maybe 15") is hedged and gets no answer from the last-number fallback.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(rf"(?<![\w.])-?(?:{_NUM})(?:\s*/\s*-?(?:{_NUM}))?(?![\w])")
_SIGNED = re.compile(rf"^(?P<sign>[-+]?)\s*(?P<num>{_NUM})$")
_UNIT_OK = re.compile(r"^[A-Za-z%°\s.'’/²³]*$")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*)\s*\}\s*\{\s*([^{}]*)\s*\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_ANSWER_IS = re.compile(
    r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<ans>.+?)(?:(?<!\d)\.(?!\d)|\.\s|\n|$)",
    re.IGNORECASE,
)
_HASHES = re.compile(r"####\s*(?P<ans>[^\n]*)")
# "1 234 567" (thousands grouped by spaces, as SI style and many locales write them) inside one answer span
_SPACE_GROUPS = re.compile(r"(?<![\d.,])\d{1,3}(?: \d{3})+(?![\d,]|\.\d{3}\b| \d)")
# words that make two numbers in the closing sentences alternatives rather than a calculation
_HEDGE = re.compile(
    r"\b(?:either|maybe|perhaps|possibly|probably|could\s+be|might\s+be|not\s+sure|unsure)\b"
    r"|\d\s*,?\s+or\s+(?:maybe\s+|perhaps\s+|possibly\s+)?[$€£]?-?\d",
    re.IGNORECASE,
)


def _strip_latex(s: str) -> str:
    """Reduce the LaTeX and typography models wrap numbers in to plain text."""
    s = s.replace("\u2212", "-").replace("\u2013", "-").replace("\u00a0", " ").replace("\u202f", " ")
    s = s.replace("{,}", ",").replace("\\!", "").replace("\\,", "").replace("\\;", " ").replace("\\ ", " ")
    s = s.replace("\\%", "%").replace("\\$", "$").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "°", s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", r" \1", s)
    s = re.sub(r"\\displaystyle", "", s)
    for _ in range(3):
        s = _FRAC.sub(lambda m: f"({m.group(1).strip()})/({m.group(2).strip()})", s)
        s = _FRAC_SHORT.sub(r"\1/\2", s)
    s = re.sub(r"\((-?[\d.,]+)\)/\((-?[\d.,]+)\)", r"\1/\2", s)
    s = s.replace("$", " ").replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    s = s.replace("€", " ").replace("£", " ").replace("¥", " ").replace("**", " ")
    return " ".join(s.split())


def _to_fraction(tok: str) -> Fraction | None:
    m = _SIGNED.match(tok.strip())
    if not m:
        return None
    try:
        value = Fraction(Decimal(m.group("num").replace(",", "")))
    except (InvalidOperation, ValueError):
        return None
    return -value if m.group("sign") == "-" else value


def parse_number(text: str) -> Fraction | None:
    """The one number ``text`` states (``-1,234.5``, ``3/4``, ``\\frac{3}{4}``, ``$12``, ``45%``, ``7 cm``), or None.

    Units and currency around the number are allowed; a second number, or anything else with digits, is not.
    """
    s = _strip_latex(text.replace("\u2009", " ")).strip().rstrip(".").strip()
    s = _SPACE_GROUPS.sub(lambda m: m.group(0).replace(" ", ""), s)
    s = re.sub(r"^[=:]\s*", "", s)
    s = re.sub(r"^\((.*)\)$", r"\1", s).strip()
    m = re.match(rf"^(?P<a>[-+]?\s*(?:{_NUM}))(?:\s*/\s*(?P<b>[-+]?\s*(?:{_NUM})))?(?P<rest>.*)$", s)
    if not m:
        return None
    rest = m.group("rest").strip()
    if rest and not _UNIT_OK.match(rest):
        return None
    a = _to_fraction(m.group("a").replace(" ", ""))
    if a is None:
        return None
    if m.group("b") is not None:
        b = _to_fraction(m.group("b").replace(" ", ""))
        if b is None or b == 0:
            return None
        return a / b
    return a


def _boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def extract_answer(response: str) -> tuple[str | None, str]:
    """The final-answer text of a response and where it came from: boxed, ####, 'answer is', last number."""
    boxed = _boxed(response)
    if boxed:
        return boxed[-1].strip(), "boxed"
    hashes = _HASHES.findall(response)
    if hashes:
        return hashes[-1].strip(), "####"
    stated = list(_ANSWER_IS.finditer(_strip_latex(response)))
    if stated:
        return stated[-1].group("ans").strip(), "answer-is"
    plain = _strip_latex(response)
    nums = _NUM_RE.findall(plain)
    if nums:
        if _hedged(plain):
            return None, "hedged: several candidate numbers and no stated answer"
        return nums[-1].strip(), "last-number"
    return None, "none"


def _hedged(plain: str) -> bool:
    """The last-number fallback's guard: a response whose closing sentences name two different numbers *as
    alternatives* ("It could be 12, or maybe 15.") states no answer, though its last number may be right. A
    calculation ending the text ("12 + 3 = 15.") is not hedged."""
    sentences = [x for x in re.split(r"(?<!\d)[.!?](?!\d)|\n", plain) if x.strip()]
    tail = " ".join(sentences[-2:])
    values = {n.replace(",", "") for n in _NUM_RE.findall(tail)}
    return len(values) >= 2 and bool(_HEDGE.search(tail))


def normalize_expr(text: str) -> str:
    """Canonical text of a non-numeric answer (``\\dfrac{\\sqrt 3}{2}``, ``(1, 2)``) for exact comparison."""
    s = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\(?:text|mathrm|textbf)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("$", "").replace("\u2212", "-")
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    s = "".join(s.split()).rstrip(".")
    return s.lower()


def _split_tuple(text: str) -> list[str] | None:
    s = _strip_latex(text).strip()
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        return [p.strip() for p in s[1:-1].split(",")]
    return None


def answers_equal(predicted: str, reference: str) -> bool:
    """Whether two final answers denote the same value: exact rationals, element-wise tuples, else canonical text."""
    ref_num = parse_number(reference)
    if ref_num is not None:
        pred_num = parse_number(predicted)
        return pred_num is not None and pred_num == ref_num
    ref_t, pred_t = _split_tuple(reference), _split_tuple(predicted)
    if ref_t is not None and pred_t is not None and len(ref_t) == len(pred_t):
        return all(answers_equal(p, r) for p, r in zip(pred_t, ref_t))
    ref_n = normalize_expr(reference)
    return bool(ref_n) and normalize_expr(predicted) == ref_n
