"""Offline instruction-following prompts with verifiable constraints, and a reference that satisfies them.

Each prompt asks for a short text on a topic under ``n_constraints`` constraints drawn from ``types`` (see
``dg_core.data.constraints``); incompatible pairs (JSON and bullets, lowercase and uppercase...) are never drawn
together. The reference is built to satisfy every constraint, so SFT on references teaches the format and the
constraint scorer gives it reward 1.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from dg_core.data.constraints import CHECKS, _words, check_all, describe
from dg_core.data.example import Example, content_id
from dg_core.errors import DGError
from dg_core.utils import integral_ints

TOPICS: dict[str, list[str]] = {
    "cats": ["cats", "purr", "nap", "soft", "fur", "play", "milk", "paws"],
    "rain": ["rain", "clouds", "wet", "drops", "grey", "puddles", "cool", "storm"],
    "bread": ["bread", "flour", "oven", "warm", "crust", "yeast", "bake", "salt"],
    "boats": ["boats", "sail", "sea", "wind", "waves", "deck", "port", "rope"],
    "trees": ["trees", "leaves", "roots", "green", "shade", "bark", "tall", "birds"],
    "music": ["music", "songs", "drums", "notes", "loud", "dance", "band", "tune"],
    "snow": ["snow", "cold", "white", "ice", "winter", "sled", "flakes", "quiet"],
    "books": ["books", "pages", "read", "story", "ink", "shelf", "tales", "quiet"],
}
DEFAULT_TYPES = (
    "lowercase",
    "uppercase",
    "max_words",
    "min_words",
    "include",
    "forbid",
    "bullets",
    "json",
    "starts_with",
    "ends_with",
    "no_commas",
    "max_chars",
    "quoted",
    "sentences",
)
_STRUCTURE = {"bullets", "json", "sentences", "quoted"}
_CONFLICTS = {
    ("lowercase", "uppercase"),
    ("json", "uppercase"),
    ("json", "starts_with"),
    ("json", "ends_with"),
    ("json", "no_commas"),
    ("quoted", "starts_with"),
    ("quoted", "ends_with"),
}


@dataclass(frozen=True)
class InstructionSpec:
    """Knobs: how many constraints per prompt and which types may be drawn."""

    n_constraints: int = 2
    types: tuple[str, ...] = field(default=DEFAULT_TYPES)

    def __post_init__(self) -> None:
        integral_ints(self)
        object.__setattr__(self, "types", tuple(self.types))
        unknown = [t for t in self.types if t not in CHECKS or t in ("paragraphs",)]
        if unknown:
            raise DGError(
                f"synthetic_instructions option 'types': unknown {unknown}, expected from {list(DEFAULT_TYPES)}"
            )
        if not isinstance(self.n_constraints, int) or not 1 <= self.n_constraints <= min(5, len(self.types)):
            raise DGError(
                f"synthetic_instructions option 'n_constraints': got {self.n_constraints!r}, "
                f"expected 1..{min(5, len(self.types))}"
            )


def _compatible(kinds: list[str], new: str) -> bool:
    if new in _STRUCTURE and any(k in _STRUCTURE for k in kinds):
        return False
    return not any((a, new) in _CONFLICTS or (new, a) in _CONFLICTS for a in kinds)


def _draw(spec: InstructionSpec, rng: random.Random) -> list[str]:
    for _ in range(100):
        kinds: list[str] = []
        pool = list(spec.types)
        rng.shuffle(pool)
        for k in pool:
            if len(kinds) < spec.n_constraints and _compatible(kinds, k):
                kinds.append(k)
        if len(kinds) == spec.n_constraints:
            return kinds
    raise DGError(f"synthetic_instructions: cannot draw {spec.n_constraints} compatible constraints from {spec.types}")


def _build(topic: str, kinds: list[str], rng: random.Random) -> tuple[str, list[dict]]:
    bank = [w for w in TOPICS[topic] if w != topic]
    rng.shuffle(bank)
    used, spare = bank[:4], bank[4:]
    keyword = used[1]
    cons: list[dict] = []
    if "bullets" in kinds:
        n = rng.randint(2, 3)
        lines = [f"* {topic} {used[i % 4]} {used[(i + 1) % 4]}" for i in range(n)]
        text = "\n".join(lines)
        cons.append({"type": "bullets", "n": n})
    elif "json" in kinds:
        keys = ["topic", "words"]
        text = json.dumps({"topic": topic, "words": used[:3]})
        cons.append({"type": "json", "keys": keys})
    elif "sentences" in kinds:
        n = rng.randint(2, 3)
        text = " ".join(f"{topic} {used[i % 4]} {used[(i + 2) % 4]}." for i in range(n))
        cons.append({"type": "sentences", "min": n, "max": n})
    else:
        text = f"{topic} {used[0]} {used[1]} {used[2]}."
    if "include" in kinds:
        cons.append({"type": "include", "words": [keyword]})
    if "forbid" in kinds:
        cons.append({"type": "forbid", "words": [spare[0]]})
    if "no_commas" in kinds:
        cons.append({"type": "no_commas"})
    if "starts_with" in kinds:
        lead = rng.choice(["so", "well", "yes"])
        text = f"{lead} {text}" if "bullets" not in kinds else f"{lead}\n{text}"
        cons.append({"type": "starts_with", "text": lead})
    if "ends_with" in kinds:
        tail = rng.choice(["the end", "that is all"])
        text = f"{text.rstrip('.')} {tail}" if "bullets" not in kinds else f"{text}\n{tail}"
        cons.append({"type": "ends_with", "text": tail})
    if "uppercase" in kinds:
        text = text.upper()
        cons.append({"type": "uppercase"})
    elif "lowercase" in kinds:
        cons.append({"type": "lowercase"})
    elif "json" not in kinds:
        text = text[0].upper() + text[1:]
    if "quoted" in kinds:
        text = f'"{text}"'
        cons.append({"type": "quoted"})
    n_words = len(_words(text))
    if "max_words" in kinds:
        cons.append({"type": "max_words", "n": n_words + rng.randint(0, 3)})
    if "min_words" in kinds:
        cons.append({"type": "min_words", "n": max(1, n_words - rng.randint(0, 3))})
    if "max_chars" in kinds:
        cons.append({"type": "max_chars", "n": len(text) + rng.randint(0, 10)})
    return text, cons


def generate(spec: InstructionSpec, n: int, seed: int) -> list[Example]:
    """``n`` distinct prompts, deterministic in (spec, n, seed); every reference passes its constraints."""
    rng = random.Random(f"synthetic_instructions:{seed}")
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise DGError(f"synthetic_instructions: cannot make {n} distinct prompts; raise n_constraints or types")
        topic = rng.choice(sorted(TOPICS))
        kinds = _draw(spec, rng)
        text, cons = _build(topic, kinds, rng)
        prompt = f"Write about {topic}. " + " ".join(describe(c) for c in cons)
        if prompt in seen:
            continue
        seen.add(prompt)
        bad = [r for t, ok, r in check_all(text, cons) if not ok]
        assert not bad, (prompt, text, bad)
        out.append(
            Example(
                id=content_id("synthetic_instructions", prompt),
                prompt=prompt,
                reference=text,
                constraints=cons,
                meta={"topic": topic},
            )
        )
    return out
