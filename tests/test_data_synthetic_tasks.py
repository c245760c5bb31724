"""Synthetic knowledge QA and instruction families: deterministic, answerable, and strict about their options."""

from __future__ import annotations

import pytest

from dg_core.data import get_task
from dg_core.data.choice import LETTERS
from dg_core.data.constraints import check_all
from dg_core.data.synthetic.instructions import _CONFLICTS, _STRUCTURE
from dg_core.data.synthetic.qa import QASpec, build_world
from dg_core.errors import DGError


def test_qa_deterministic_and_world_fixed_by_world_seed():
    t = get_task("synthetic_qa", hops=2)
    a = [e.to_json() for e in t.generate(150, seed=1)]
    assert a == [e.to_json() for e in get_task("synthetic_qa", hops=2).generate(150, seed=1)]
    assert a != [e.to_json() for e in t.generate(150, seed=2)]
    w0, w1 = build_world(QASpec(world_seed=0)), build_world(QASpec(world_seed=1))
    assert w0 == build_world(QASpec(world_seed=0)) and w0.capitals != w1.capitals


def test_qa_questions_are_answerable_from_context_with_valid_options():
    t = get_task("synthetic_qa", hops=2, n_choices=5, mc_fraction=0.5)
    w = build_world(QASpec(hops=2))
    exs = t.generate(400, seed=0)
    assert {e.meta["format"] for e in exs} == {"mc", "short"} and {e.meta["hops"] for e in exs} == {1, 2}
    for e in exs:
        gold = e.meta.get("answer_text", e.answer)
        if e.choices:
            assert len(e.choices) == 5 and len(set(e.choices)) == 5
            assert e.choices[LETTERS.index(e.answer)] == gold
        # the facts the answer rests on are stated in the prompt
        subj, rel = e.meta["subject"], e.meta["relation"]
        if rel == "born":
            assert f"{subj} was born in {gold}." in e.prompt and w.born[subj] == gold
        if rel == "born_country":
            city = w.born[subj]
            assert f"{subj} was born in {city}." in e.prompt and f"{city} is in {gold}." in e.prompt
        assert t.score(e, e.reference).reward == 1.0
    mc = [e for e in exs if e.choices]
    wrong = [LETTERS[(LETTERS.index(e.answer) + 1) % 5] for e in mc]
    assert all(t.score(e, w_).reward == 0.0 for e, w_ in zip(mc, wrong))


def test_qa_without_context_and_bad_options():
    e = get_task("synthetic_qa", context=False, mc_fraction=0.0).generate(20, seed=0)
    facts = (" was born in ", " is the capital of ", " is based in ", " is in ")
    assert all(x.prompt.endswith("?") and not any(f in x.prompt for f in facts) for x in e)
    assert all(not x.choices for x in e)
    with pytest.raises(DGError, match="hops"):
        get_task("synthetic_qa", hops=3)
    with pytest.raises(DGError, match="n_choices"):
        get_task("synthetic_qa", n_choices=1)
    with pytest.raises(DGError, match="distinct questions"):
        get_task("synthetic_qa", world_size=20).generate(10_000, seed=0)


def test_qa_answer_styles_bare_and_chain_are_correct_and_the_default_is_unchanged():
    """The knowledge family's two styles: the chain writes out exactly the facts the prompt states and the answer
    rests on, then the same final statement as the bare style; both score 1, and without style_mix nothing moves."""
    from dg_core.distill.train_stage import _targets

    opts = {"hops": 2, "mc_fraction": 0.3}
    plain = get_task("synthetic_qa", **opts).generate(200, seed=0)
    t = get_task("synthetic_qa", **opts, style_mix={"bare": 1.0, "chain": 1.0})
    styled = t.generate(200, seed=0)
    assert [e.prompt for e in styled] == [e.prompt for e in plain] and [e.answer for e in styled] == [
        e.answer for e in plain
    ]
    assert {e.meta["style"] for e in styled} == {"bare", "chain"}
    for e in styled:
        refs = e.meta["references"]
        bare, chain = refs["bare"], refs["chain"]
        assert chain.endswith(" " + bare) and t.score(e, bare).reward == 1.0 and t.score(e, chain).reward == 1.0
        facts = chain[: -len(bare) - 1].split(". ")
        assert len(facts) == e.meta["hops"] and all(f.rstrip(".") + "." in e.prompt for f in facts)
        assert e.reference == refs[e.meta["style"]] and _targets(e, "bare,chain") == [bare, chain]
    with pytest.raises(DGError, match="style_mix"):
        get_task("synthetic_qa", style_mix={"terse": 1.0})
    with pytest.raises(DGError, match="style_mix"):
        get_task("synthetic_qa", style_mix={"bare": 0.0})


def test_qa_misleading_styles_end_correct_and_their_steps_point_away_from_the_answer():
    """decoy, retract and noise (written only when style_mix names them, so older datasets keep their bytes): each
    scores 1 and ends in the bare style's final statement, where r_cal's answer span begins; decoy's steps are
    the prompt's facts the answer does not rest on, noise's are true facts the prompt does not state, retract's
    first guess is a wrong answer of the answer's type."""
    from dg_core.data.synthetic.qa import QASpec, build_world

    opts = {"hops": 2, "mc_fraction": 0.3, "distractor_facts": 2}
    base = get_task("synthetic_qa", **opts, style_mix={"bare": 1.0, "chain": 1.0}).generate(200, seed=0)
    assert all(set(e.meta["references"]) == {"bare", "chain"} for e in base)
    mix = {"bare": 1.0, "chain": 1.0, "decoy": 0.0, "retract": 0.0, "noise": 0.0}
    t = get_task("synthetic_qa", **opts, style_mix=mix)
    styled = t.generate(200, seed=0)
    assert [(e.prompt, e.reference) for e in styled] == [(e.prompt, e.reference) for e in base]
    w = build_world(QASpec(**opts))
    kinds = {"city": set(w.cities), "country": set(w.countries), "person": set(w.born)}
    for e in styled:
        refs = e.meta["references"]
        bare = refs["bare"]
        chain_facts = set(refs["chain"][: -len(bare)].split(". "))
        for style in ("decoy", "retract", "noise"):
            ref = refs[style]
            assert ref.endswith(bare) and t.score(e, ref).reward == 1.0, (style, ref)
            assert ref[t.answer_start(e, ref) :] == bare[t.answer_start(e, bare) :]
        decoy = [f for f in refs["decoy"][: -len(bare)].split(". ") if f]
        assert len(decoy) == 2 and all(f.rstrip(".") + "." in e.prompt and f not in chain_facts for f in decoy)
        noise = [f.rstrip(".") + "." for f in refs["noise"][: -len(bare)].split(". ") if f]
        assert len(noise) == e.meta["hops"] and not any(f in e.prompt for f in noise)
        first = t.score(e, refs["retract"].split(" No, ")[0])
        assert first.reward == 0.0 and first.parsed
        if not e.choices:
            kind = next((k for k, names in kinds.items() if e.answer in names), None)
            assert kind is None or first.parsed in kinds[kind]
    with pytest.raises(DGError, match="decoy.*distractor_facts >= 1"):
        get_task("synthetic_qa", distractor_facts=0, style_mix={"bare": 1.0, "decoy": 1.0})


def test_instructions_deterministic_references_pass_and_no_conflicts():
    t = get_task("synthetic_instructions", n_constraints=3)
    exs = t.generate(300, seed=2)
    assert [e.to_json() for e in exs] == [e.to_json() for e in t.generate(300, seed=2)]
    for e in exs:
        kinds = [c["type"] for c in e.constraints]
        assert len(kinds) >= 3 and len(set(kinds)) == len(kinds)
        assert sum(k in _STRUCTURE for k in kinds) <= 1
        assert not any((a, b) in _CONFLICTS for a in kinds for b in kinds)
        assert all(ok for _, ok, _ in check_all(e.reference, e.constraints))
        assert t.score(e, e.reference).reward == 1.0
        assert t.score(e, "").reward == 0.0


def test_instructions_types_knob_and_errors():
    t = get_task("synthetic_instructions", n_constraints=1, types=["bullets"])
    for e in t.generate(5, seed=0):
        assert [c["type"] for c in e.constraints] == ["bullets"]
        assert "bullet points" in e.prompt
    with pytest.raises(DGError, match="types"):
        get_task("synthetic_instructions", types=["haiku"])
    with pytest.raises(DGError, match="n_constraints"):
        get_task("synthetic_instructions", n_constraints=3, types=["bullets", "json"])


@pytest.mark.parametrize(
    ("name", "ints", "bad"),
    [
        ("synthetic_qa", {"world_size": 300, "hops": 2, "distractor_facts": 1, "n_choices": 4}, "world_size"),
        ("synthetic_instructions", {"n_constraints": 2}, "n_constraints"),
    ],
)
def test_integral_float_options_and_budget_accepted_as_kfp_passes_them(name, ints, bad):
    """Through KFP a dict's numbers are doubles (world_size 300 arrives as 300.0): every family takes them back as
    ints, and the task budget too; a fractional value is still refused by name."""
    as_kfp = get_task(name, **{k: float(v) for k, v in ints.items()}, max_new_tokens=96.0)
    assert as_kfp.max_new_tokens == 96
    assert as_kfp.generate(20, seed=0) == get_task(name, **ints).generate(20, seed=0)
    with pytest.raises(DGError, match=bad):
        get_task(name, **{**ints, bad: ints[bad] + 0.5})
