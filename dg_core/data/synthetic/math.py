"""Offline synthetic arithmetic with several valid solution styles.

A problem is a product followed by a chain of additions/subtractions, e.g. ``37*4+15``. Every reference ends in
one marked final answer ``#163``; the styles differ in how much of the work they spell out:

- ``decomposed``: place-value partial products and one small operation per step
  (``30*4=120 7*4=28 120+28=148 148+15=163 #163``). Each step is a single-digit fact or a short addition, so a
  small model can imitate it.
- ``compact``: one big jump per operator (``37*4=148 148+15=163 #163``): the multi-digit product is done
  "mentally".
- ``compressed``: the answer only (``#163``): everything mental; hard for a small student.
- ``checked``: decomposed steps plus a redundant check of the last step (``... 148+15=163 163-15=148 #163``).

A capable teacher learns them all; a small student learns ``decomposed`` far more easily than ``compressed``.
That gap is the room calibration has to make a teacher easy or hard to imitate while it stays correct.

With ``instructed`` > 0 that share of problems carries an instruction after the expression (``7*8+34 show steps``
or ``7*8+34 answer only``) and only the style it asks for as reference: the instruction channel a prompt attack
uses (an attacker who knows the defence asks the teacher to show its work; see ``Task.ask``).
Texts are short on purpose: the toy models are character level and every character costs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from dg_core.data.example import Example, content_id
from dg_core.errors import DGError
from dg_core.utils import integral_ints

STYLES = ("decomposed", "compact", "compressed", "checked")
#: The instruction channel: what a prompt may ask for, and the one reference style that obeys it.
INSTRUCTIONS = {"show steps": "decomposed", "answer only": "compressed"}

_WORDS = [
    ("{a} boxes hold {b} pens each", "pens"),
    ("{a} rows have {b} seats each", "seats"),
    ("{a} bags hold {b} eggs each", "eggs"),
]


@dataclass(frozen=True)
class MathSpec:
    """Difficulty and style knobs of the synthetic math family (all seeded; see module docstring)."""

    a_digits: int = 2
    b_digits: int = 1
    terms: int = 1
    term_digits: int = 2
    ops: str = "+"
    style_mix: dict[str, float] = field(default_factory=lambda: {"decomposed": 1.0})
    wording: str = "expr"
    instructed: float = 0.0

    def __post_init__(self) -> None:
        integral_ints(self)
        for name in ("a_digits", "b_digits", "term_digits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 6:
                raise DGError(f"synthetic_math option '{name}': got {v!r}, expected an integer 1..6")
        if not isinstance(self.terms, int) or not 0 <= self.terms <= 8:
            raise DGError(f"synthetic_math option 'terms': got {self.terms!r}, expected an integer 0..8")
        if not self.ops or set(self.ops) - set("+-"):
            raise DGError(f"synthetic_math option 'ops': got {self.ops!r}, expected a non-empty mix of '+' and '-'")
        if not self.style_mix:
            raise DGError("synthetic_math option 'style_mix': empty, expected weights such as {decomposed: 1}")
        for s, w in self.style_mix.items():
            if s not in STYLES:
                raise DGError(f"synthetic_math option 'style_mix': unknown style {s!r}, expected one of {list(STYLES)}")
            if not isinstance(w, (int, float)) or w < 0:
                raise DGError(f"synthetic_math option 'style_mix.{s}': got {w!r}, expected a weight >= 0")
        if sum(self.style_mix.values()) <= 0:
            raise DGError("synthetic_math option 'style_mix': all weights are 0, expected at least one > 0")
        if not isinstance(self.instructed, (int, float)) or not 0.0 <= self.instructed <= 1.0:
            raise DGError(f"synthetic_math option 'instructed': got {self.instructed!r}, expected a share 0..1")
        if self.wording not in ("expr", "words"):
            raise DGError(f"synthetic_math option 'wording': got {self.wording!r}, expected 'expr' or 'words'")

    def n_problems(self) -> int:
        """How many distinct problems these knobs allow (before the ± choices)."""
        a = 9 * 10 ** (self.a_digits - 1)
        b = 8 if self.b_digits == 1 else 9 * 10 ** (self.b_digits - 1)
        c = 9 * 10 ** (self.term_digits - 1)
        return a * b * c**self.terms


def _rand_int(rng: random.Random, digits: int, low1: int = 1) -> int:
    if digits == 1:
        return rng.randint(low1, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _parts(n: int) -> list[int]:
    """Non-zero place-value parts, most significant first: 307 -> [300, 7]."""
    s = str(n)
    return [int(d) * 10 ** (len(s) - 1 - i) for i, d in enumerate(s) if d != "0"]


def solve(a: int, b: int, terms: list[tuple[str, int]]) -> dict[str, str]:
    """All reference styles for ``a*b`` followed by ``terms`` (op, value), each ending in ``#<answer>``."""
    product = a * b
    steps: list[str] = []
    partials = [pa * pb for pa in _parts(a) for pb in _parts(b)]
    steps += [f"{pa}*{pb}={pa * pb}" for pa in _parts(a) for pb in _parts(b)]
    acc = partials[0]
    for p in partials[1:]:
        steps.append(f"{acc}+{p}={acc + p}")
        acc += p
    assert acc == product
    chain: list[str] = []
    total = product
    last = None
    for op, v in terms:
        new = total + v if op == "+" else total - v
        chain.append(f"{total}{op}{v}={new}")
        last = (total, op, v, new)
        total = new
    mark = f"#{total}"
    if last is None:
        check = f"{total}/{b}={a}" if b else ""
    else:
        before, op, v, after = last
        check = f"{after}{'-' if op == '+' else '+'}{v}={before}"
    return {
        "decomposed": " ".join(steps + chain + [mark]),
        "compact": " ".join([f"{a}*{b}={product}"] + chain + [mark]),
        "compressed": mark,
        "checked": " ".join(steps + chain + [check, mark]),
    }


def _wording(spec: MathSpec, rng: random.Random, a: int, b: int, terms: list[tuple[str, int]]) -> str:
    if spec.wording == "expr":
        return f"{a}*{b}" + "".join(f"{op}{v}" for op, v in terms)
    tmpl, unit = _WORDS[rng.randrange(len(_WORDS))]
    text = tmpl.format(a=a, b=b)
    for op, v in terms:
        text += f", {'add' if op == '+' else 'take away'} {v}"
    return f"{text[0].upper()}{text[1:]}. How many {unit}?"


def generate(spec: MathSpec, n: int, seed: int) -> list[Example]:
    """``n`` distinct problems, deterministic in (spec, n, seed); the reference style is drawn from the mix."""
    if n > spec.n_problems() // 2:
        raise DGError(
            f"synthetic_math: n={n} is too many distinct problems for these digits/terms "
            f"(at most {spec.n_problems() // 2}); raise a_digits/term_digits/terms"
        )
    rng = random.Random(f"synthetic_math:{seed}")
    styles = sorted(s for s, w in spec.style_mix.items() if w > 0)
    weights = [spec.style_mix[s] for s in styles]
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        a = _rand_int(rng, spec.a_digits)
        b = _rand_int(rng, spec.b_digits, low1=2)
        terms: list[tuple[str, int]] = []
        total = a * b
        for _ in range(spec.terms):
            v = _rand_int(rng, spec.term_digits)
            op = spec.ops[rng.randrange(len(spec.ops))]
            if op == "-" and v > total:
                op = "+"
            terms.append((op, v))
            total = total + v if op == "+" else total - v
        key = f"{a}*{b}" + "".join(f"{op}{v}" for op, v in terms)
        if key in seen:
            continue
        seen.add(key)
        prompt = _wording(spec, rng, a, b, terms)
        refs = solve(a, b, terms)
        style = rng.choices(styles, weights)[0]
        meta: dict = {"style": style, "references": refs, "expr": key}
        if spec.instructed and rng.random() < spec.instructed:  # no draw at 0: older datasets stay byte-identical
            asked = sorted(INSTRUCTIONS)[rng.randrange(len(INSTRUCTIONS))]
            style = INSTRUCTIONS[asked]
            prompt = f"{prompt} {asked}"
            meta = {"style": style, "references": {style: refs[style]}, "expr": key, "instruction": asked}
        out.append(
            Example(
                id=content_id("synthetic_math", key, *([meta["instruction"]] if "instruction" in meta else [])),
                prompt=prompt,
                reference=refs[style],
                answer=str(total),
                meta=meta,
            )
        )
    return out
