"""Which option a response picked, in the many ways models write it, and short-answer matching.

Accepted forms: a bare letter (``B``, ``(B)``, ``B.``, ``**B**``), ``\\boxed{B}``, "The answer is (B)",
"Answer: B. Paris", "the correct option is B", a capital letter named as the verdict inside a sentence ("I think
B is correct", "I'd go with C"), the option's text itself, or its text inside an answer statement.
Ambiguity scores 0: two different letters where one was promised ("A or B"), a letter whose attached text is
another option's, several option texts, a letter that is not an option. Scanning for any capital letter anywhere
is deliberately not done: "A" is also an English article.
"""

from __future__ import annotations

import re
import string
import unicodedata

LETTERS = string.ascii_uppercase

_ANSWER_SPAN = re.compile(
    r"(?:final\s+answer|correct\s+answer|the\s+answer|answer|correct\s+(?:option|choice)|best\s+(?:option|choice))"
    r"\s*(?:is|:|=|would\s+be|should\s+be)\s*:?\s*(?P<span>[^\n]*)",
    re.IGNORECASE,
)
_LEAD_LETTER = re.compile(
    r"^(?:[Oo]ption|[Cc]hoice)?\s*[\(\[]?(?P<l>[A-Za-z])[\)\]]?(?=$|[\s.:,;)!])(?P<rest>.*)$", re.S
)
_PAREN_LETTER = re.compile(r"\((?P<l>[A-Z])\)")
# a capital option letter named as the verdict inside a sentence, without brackets: "I think B is correct",
# "so I'd go with C", "option D is the right one"
_VERDICT_LETTER = re.compile(
    r"(?:\b(?:go(?:ing)?\s+with|choose|chose|pick|select|opt\s+for)\s+(?:option\s+|choice\s+)?(?P<a>[A-Z])\b(?!\s+(?:is|are)\s+(?:not|wrong|incorrect)))"
    r"|(?:\b(?:[Oo]ption\s+|[Cc]hoice\s+)?(?P<b>[A-Z])\s+(?:is|seems|looks)\s+(?:to\s+be\s+)?(?:the\s+)?"
    r"(?:correct|right|best|answer)\b)"
)


def normalize_text(text: str) -> str:
    """Lowercase, strip accents, punctuation, articles and extra spaces: how short answers are compared."""
    s = unicodedata.normalize("NFKD", text)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower()
    s = re.sub(r"[^\w\s]", " ", s)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _clean(text: str) -> str:
    s = text.replace("**", "").replace("__", "").replace("`", "")
    s = re.sub(r"\\(?:boxed|text|textbf|mathrm)\s*\{([^{}]*)\}", r"\1", s)
    return s.replace("$", "").strip()


def _last_answer_span(text: str) -> re.Match | None:
    """The last "answer is" statement, also when an earlier one on the same line is taken back ("The answer is A.
    No, the answer is B."): the span runs to the end of the line, so plain ``finditer`` would stop at the first."""
    last, pos = None, 0
    while (m := _ANSWER_SPAN.search(text, pos)) is not None:
        last, pos = m, m.start() + 1
    return last


def _sentence(span: str) -> str:
    """The answer statement up to the end of its sentence."""
    m = re.match(r"^(.*?)(?:\.\s|\.$|;|$)", span.strip())
    return (m.group(1) if m else span).strip()


def _text_matches(text: str, choices: list[str]) -> list[int]:
    """Indices of options whose (normalized) text occurs as whole words in ``text``; nested texts keep the longest."""
    norm = f" {normalize_text(text)} "
    hits = [i for i, c in enumerate(choices) if normalize_text(c) and f" {normalize_text(c)} " in norm]
    return [
        i for i in hits if not any(j != i and normalize_text(choices[i]) in normalize_text(choices[j]) for j in hits)
    ]


def _resolve(span: str, choices: list[str]) -> tuple[int | None, str]:
    """Turn an answer span ("(B) Paris", "Paris", "B or C") into an option index, or explain why not."""
    span = _clean(span).strip().strip("\"'").strip()
    if not span:
        return None, "empty answer"
    exact = [i for i, c in enumerate(choices) if normalize_text(c) == normalize_text(span)]
    if len(exact) == 1:
        return exact[0], "option text"
    m = _LEAD_LETTER.match(span)
    if m and (
        m.group("l").isupper() or len(span.strip(" .()[]")) == 1 or span.lower().startswith(("option", "choice"))
    ):
        letter = m.group("l").upper()
        rest = m.group("rest").strip(" .:)-")
        others = re.findall(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])", rest)
        if re.match(r"^(?:or|and|/|,)\b", rest.strip(), re.IGNORECASE) or any(o != letter for o in others[:1]):
            return None, f"ambiguous: more than one option letter in {span[:30]!r}"
        idx = LETTERS.index(letter)
        if idx >= len(choices):
            return None, f"letter {letter} is not an option (A-{LETTERS[len(choices) - 1]})"
        if rest:
            named = _text_matches(rest, choices)
            if named and idx not in named:
                return None, f"ambiguous: letter {letter} but the text names option {LETTERS[named[0]]}"
        return idx, "letter"
    named = _text_matches(span, choices)
    if len(named) == 1:
        return named[0], "option text"
    if len(named) > 1:
        return None, "ambiguous: several option texts"
    return None, f"no option in {span[:30]!r}"


def parse_choice(response: str, choices: list[str]) -> tuple[int | None, str]:
    """The option index a response chose (or None) and how it was read."""
    text = _clean(response)
    if not text:
        return None, "empty response"
    boxed = re.findall(r"\\boxed\s*\{([^{}]*)\}", response)
    if boxed:
        return _resolve(boxed[-1], choices)
    span = _last_answer_span(text)
    if span:
        return _resolve(_sentence(span.group("span")), choices)
    # a letter named as the verdict ("I think B is correct") outranks option texts mentioned in the reasoning
    verdicts = {m.group("a") or m.group("b") for m in _VERDICT_LETTER.finditer(text)} - {"I"}
    if len(verdicts) == 1:
        return _resolve(verdicts.pop(), choices)
    if len(verdicts) > 1:
        return None, "ambiguous: several option letters named as the answer"
    first = text.splitlines()[0].strip()
    idx, how = _resolve(first if len(text.splitlines()) > 1 else text, choices)
    if idx is not None or how.startswith(("ambiguous", "letter")):
        return idx, how
    parens = set(_PAREN_LETTER.findall(text))
    if len(parens) == 1:
        return _resolve(f"({parens.pop()})", choices)
    if len(parens) > 1:
        return None, "ambiguous: several option letters"
    named = _text_matches(text, choices)
    if len(named) == 1:
        return named[0], "option text"
    return None, "ambiguous: several option texts" if named else "no option found"


def parse_short_answer(response: str) -> str:
    """The answer text of a short-answer response: an "answer is" statement if any, else the first line."""
    text = _clean(response)
    span = _last_answer_span(text)
    if span:
        return _sentence(span.group("span"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0].strip().rstrip(".").strip() if lines else ""
