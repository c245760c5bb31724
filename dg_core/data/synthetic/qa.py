"""Offline knowledge QA over a procedurally generated world of fictional entities.

A world (fixed by ``world_seed``) has countries with cities, people (birthplace, profession) and companies
(founder, headquarters). Questions ask one relation ("Where was Bemoka born?") or chain two ("In which country
was Bemoka born?"), as multiple choice with distractors of the same type (preferring ones the context mentions)
or as short answer. With ``context`` on, the prompt states the needed facts among distractor facts, so held-out
questions are answerable by reading; with it off they test facts memorised from training.

With ``style_mix`` set, every question carries two reference styles (``meta['references']``), as synthetic math's
do: ``bare`` states the answer only (``The answer is Sek.``), ``chain`` first writes out the facts it rests on
(``Sobrude founded Datro Co. Sobrude was born in Sek. The answer is Sek.``). A small student copies a chain of
facts from the context far more easily than it composes two hops in one step: the room the knob needs, in a
knowledge family. Without it the reference is the answer (or letter) alone, as before.

Three more styles are the paper's misleading traces, written only when ``style_mix`` names them (weight 0 keeps
them as references without drawing them): ``decoy`` writes out the context's distractor facts, ``retract`` states
a wrong answer of the right type and takes it back, ``noise`` writes true facts of the world the question does not
touch. All end in the bare style's final statement: the teacher pays nothing for the steps, a student copying them
is pointed away from the answer. Which of them a student learns worst is measured, not assumed
(``bench/style_learnability.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dg_core.data.choice import LETTERS
from dg_core.data.example import Example, content_id
from dg_core.errors import DGError
from dg_core.utils import integral_ints

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "l", "k"]
PROFESSIONS = ["baker", "pilot", "doctor", "farmer", "painter", "sailor", "judge", "miner", "poet", "smith"]
RELATIONS_1 = ("capital", "city_country", "born", "job", "founder", "hq")
RELATIONS_2 = ("born_country", "founder_born", "hq_country")
STYLES = ("bare", "chain", "decoy", "retract", "noise")


@dataclass(frozen=True)
class QASpec:
    """Knobs: world size and seed, hops (1 or 2), multiple-choice share, options, context facts."""

    world_seed: int = 0
    world_size: int = 200
    hops: int = 1
    mc_fraction: float = 0.5
    n_choices: int = 4
    context: bool = True
    distractor_facts: int = 2
    style_mix: dict[str, float] | None = None

    def __post_init__(self) -> None:
        integral_ints(self)
        if self.style_mix is not None:
            if not self.style_mix or set(self.style_mix) - set(STYLES):
                raise DGError(f"synthetic_qa option 'style_mix': got {self.style_mix!r}, expected weights of {STYLES}")
            if any(not isinstance(w, (int, float)) or w < 0 for w in self.style_mix.values()):
                raise DGError(f"synthetic_qa option 'style_mix': got {self.style_mix!r}, expected weights >= 0")
            if sum(self.style_mix.values()) <= 0:
                raise DGError("synthetic_qa option 'style_mix': all weights are 0, expected at least one > 0")
            if "decoy" in self.style_mix and (not self.context or self.distractor_facts < 1):
                raise DGError(
                    "synthetic_qa option 'style_mix': style 'decoy' writes out the context's distractor facts, "
                    f"expected context on and distractor_facts >= 1 (got context={self.context!r}, "
                    f"distractor_facts={self.distractor_facts!r})"
                )
        if not isinstance(self.world_size, int) or not 20 <= self.world_size <= 100_000:
            raise DGError(f"synthetic_qa option 'world_size': got {self.world_size!r}, expected 20..100000")
        if self.hops not in (1, 2):
            raise DGError(f"synthetic_qa option 'hops': got {self.hops!r}, expected 1 or 2")
        if not 0.0 <= self.mc_fraction <= 1.0:
            raise DGError(f"synthetic_qa option 'mc_fraction': got {self.mc_fraction!r}, expected 0..1")
        if not isinstance(self.n_choices, int) or not 2 <= self.n_choices <= 10:
            raise DGError(f"synthetic_qa option 'n_choices': got {self.n_choices!r}, expected 2..10")
        if not isinstance(self.distractor_facts, int) or not 0 <= self.distractor_facts <= 20:
            raise DGError(f"synthetic_qa option 'distractor_facts': got {self.distractor_facts!r}, expected 0..20")


@dataclass
class World:
    countries: list[str]
    cities: dict[str, str]  # city -> country
    capitals: dict[str, str]  # country -> city
    born: dict[str, str]  # person -> city
    job: dict[str, str]  # person -> profession
    founder: dict[str, str]  # company -> person
    hq: dict[str, str]  # company -> city


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        k = rng.randint(*syllables)
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(_CODAS)
        name = name.capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def build_world(spec: QASpec) -> World:
    """The world for ``spec.world_seed`` and ``spec.world_size`` (people); deterministic."""
    rng = random.Random(f"synthetic_qa:world:{spec.world_seed}:{spec.world_size}")
    taken: set[str] = set()
    n_countries = max(4, spec.world_size // 10)
    countries = _names(rng, n_countries, (2, 3), taken)
    cities: dict[str, str] = {}
    capitals: dict[str, str] = {}
    for c in countries:
        cs = _names(rng, 3, (1, 2), taken)
        capitals[c] = cs[0]
        cities.update({x: c for x in cs})
    city_list = sorted(cities)
    people = _names(rng, spec.world_size, (2, 3), taken)
    born = {p: rng.choice(city_list) for p in people}
    job = {p: rng.choice(PROFESSIONS) for p in people}
    companies = [n + " Co" for n in _names(rng, max(4, spec.world_size // 4), (2, 2), taken)]
    founder = {c: rng.choice(people) for c in companies}
    hq = {c: rng.choice(city_list) for c in companies}
    return World(countries, cities, capitals, born, job, founder, hq)


def _fact(kind: str, a: str, b: str) -> str:
    return {
        "capital": f"{b} is the capital of {a}.",
        "city_country": f"{a} is in {b}.",
        "born": f"{a} was born in {b}.",
        "job": f"{a} is a {b}.",
        "founder": f"{b} founded {a}.",
        "hq": f"{a} is based in {b}.",
    }[kind]


def _question(w: World, rel: str, subj: str) -> tuple[str, str, str, list[tuple[str, str, str]]]:
    """(question, answer, answer type, facts needed) for relation ``rel`` of ``subj``."""
    if rel == "capital":
        return f"What is the capital of {subj}?", w.capitals[subj], "city", [("capital", subj, w.capitals[subj])]
    if rel == "city_country":
        return f"Which country is {subj} in?", w.cities[subj], "country", [("city_country", subj, w.cities[subj])]
    if rel == "born":
        return f"Where was {subj} born?", w.born[subj], "city", [("born", subj, w.born[subj])]
    if rel == "job":
        return f"What is {subj}'s job?", w.job[subj], "job", [("job", subj, w.job[subj])]
    if rel == "founder":
        return f"Who founded {subj}?", w.founder[subj], "person", [("founder", subj, w.founder[subj])]
    if rel == "hq":
        return f"Where is {subj} based?", w.hq[subj], "city", [("hq", subj, w.hq[subj])]
    if rel == "born_country":
        city = w.born[subj]
        facts = [("born", subj, city), ("city_country", city, w.cities[city])]
        return f"In which country was {subj} born?", w.cities[city], "country", facts
    if rel == "founder_born":
        p = w.founder[subj]
        return (
            f"Where was the founder of {subj} born?",
            w.born[p],
            "city",
            [("founder", subj, p), ("born", p, w.born[p])],
        )
    if rel == "hq_country":
        city = w.hq[subj]
        facts = [("hq", subj, city), ("city_country", city, w.cities[city])]
        return f"In which country is {subj} based?", w.cities[city], "country", facts
    raise AssertionError(rel)


def _subjects(w: World, rel: str) -> list[str]:
    return sorted(
        {
            "capital": w.capitals,
            "city_country": w.cities,
            "born": w.born,
            "job": w.job,
            "founder": w.founder,
            "hq": w.hq,
            "born_country": w.born,
            "founder_born": w.founder,
            "hq_country": w.hq,
        }[rel]
    )


def _pool(w: World, kind: str) -> list[str]:
    return {
        "city": sorted(w.cities),
        "country": list(w.countries),
        "job": list(PROFESSIONS),
        "person": sorted(w.born),
    }[kind]


def generate(spec: QASpec, n: int, seed: int) -> list[Example]:
    """``n`` distinct questions (relation × subject × format), deterministic in (spec, n, seed)."""
    w = build_world(spec)
    rels = RELATIONS_1 if spec.hops == 1 else RELATIONS_1 + RELATIONS_2
    keys = [(r, s) for r in rels for s in _subjects(w, r)]
    formats = [f for f, share in (("mc", spec.mc_fraction), ("short", 1 - spec.mc_fraction)) if share > 0]
    if n > len(keys) * len(formats):
        raise DGError(
            f"synthetic_qa: n={n} exceeds the {len(keys) * len(formats)} distinct questions of this world; "
            "raise world_size or hops"
        )
    rng = random.Random(f"synthetic_qa:{seed}")
    style_rng = random.Random(f"synthetic_qa:style:{seed}")  # its own stream: the questions are the unstyled ones
    all_facts = (
        [("capital", c, w.capitals[c]) for c in w.countries]
        + [("born", p, w.born[p]) for p in w.born]
        + [("hq", c, w.hq[c]) for c in w.hq]
    )
    seen: set[tuple[str, str, str]] = set()
    out: list[Example] = []
    while len(out) < n:
        rel, subj = keys[rng.randrange(len(keys))]
        fmt = "mc" if rng.random() < spec.mc_fraction else "short"
        if (rel, subj, fmt) in seen:
            continue
        seen.add((rel, subj, fmt))
        question, answer, kind, needed = _question(w, rel, subj)
        context = ""
        mentioned: list[str] = []
        facts: list[tuple[str, str, str]] = []
        if spec.context:
            facts = list(needed)
            while len(facts) < len(needed) + spec.distractor_facts:
                f = all_facts[rng.randrange(len(all_facts))]
                if f not in facts and f[1] != subj:
                    facts.append(f)
            rng.shuffle(facts)
            context = " ".join(_fact(*f) for f in facts) + " "
            mentioned = [x for f in facts for x in f[1:]]
        prompt = context + question
        ex_id = content_id("synthetic_qa", spec.world_seed, spec.world_size, rel, subj, fmt, prompt)
        meta = {"relation": rel, "subject": subj, "hops": 2 if rel in RELATIONS_2 else 1, "format": fmt}
        if fmt == "short":
            if spec.style_mix:
                pool = [x for x in _pool(w, kind) if x != answer]
                wrong = sorted({x for x in mentioned if x in pool}) or pool  # the context's first, as mc's
                steps = _misleading(spec, ex_id, needed, facts, all_facts, wrong)
                ref = _styled(spec, style_rng, meta, needed, answer, steps)
                out.append(Example(id=ex_id, prompt=prompt, reference=ref, answer=answer, meta=meta))
                continue
            out.append(Example(id=ex_id, prompt=prompt, reference=answer, answer=answer, meta=meta))
            continue
        pool = [x for x in _pool(w, kind) if x != answer]
        near = [x for x in dict.fromkeys(mentioned) if x in pool]
        far = [x for x in pool if x not in near]
        rng.shuffle(far)
        distractors = (near + far)[: spec.n_choices - 1]
        choices = distractors + [answer]
        rng.shuffle(choices)
        letter = LETTERS[choices.index(answer)]
        meta["answer_text"] = answer
        ref = letter
        if spec.style_mix:
            wrong = [f"({LETTERS[i]})" for i, c in enumerate(choices) if c != answer]
            steps = _misleading(spec, ex_id, needed, facts, all_facts, wrong)
            ref = _styled(spec, style_rng, meta, needed, f"({letter})", steps)
        out.append(Example(id=ex_id, prompt=prompt, reference=ref, answer=letter, choices=choices, meta=meta))
    return out


def _misleading(spec: QASpec, ex_id: str, needed: list, shown: list, all_facts: list, wrong: list[str]) -> dict:
    """The steps of each misleading style ``style_mix`` names, by style; each draws from its own stream keyed by
    the question, so adding a style moves nothing else."""
    mix = spec.style_mix or {}
    steps: dict[str, str] = {}
    if "decoy" in mix:  # the prompt's facts the answer does not rest on
        steps["decoy"] = " ".join(_fact(*f) for f in shown if f not in needed)
    if "retract" in mix:  # a wrong answer of the right type, taken back
        guess = random.Random(f"synthetic_qa:retract:{ex_id}").choice(wrong)
        steps["retract"] = f"The answer is {guess}. No, that is wrong."
    if "noise" in mix:  # as many true facts as the chain has, none of which the prompt states
        rng, noise = random.Random(f"synthetic_qa:noise:{ex_id}"), []
        while len(noise) < len(needed):
            f = all_facts[rng.randrange(len(all_facts))]
            if f not in shown and f not in noise:
                noise.append(f)
        steps["noise"] = " ".join(_fact(*f) for f in noise)
    return steps


def _styled(spec: QASpec, rng: random.Random, meta: dict, needed: list, stated: str, misleading: dict) -> str:
    """The reference styles into ``meta`` (see module doc); the one drawn from the mix is returned. The misleading
    ones end in the same final statement as ``bare``: a teacher loses nothing by writing their steps."""
    final = f"The answer is {stated}."
    refs = {"bare": final, "chain": " ".join([_fact(*f) for f in needed] + [final])}
    refs.update({style: f"{steps} {final}" for style, steps in misleading.items()})
    meta["references"] = refs
    mix = spec.style_mix or {}
    styles = sorted(k for k, wt in mix.items() if wt > 0)
    meta["style"] = rng.choices(styles, [mix[k] for k in styles])[0]
    return refs[meta["style"]]
