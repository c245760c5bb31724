"""Synthetic math family: deterministic by seed, every style correct and ending in one marker, knobs work."""

from __future__ import annotations

import re

import pytest

from dg_core.data import Example, get_task, load_split, task_of
from dg_core.data.artifact import write_manifest
from dg_core.data.example import write_jsonl
from dg_core.data.synthetic.math import STYLES, MathSpec, generate, solve
from dg_core.errors import DGError

STEP = re.compile(r"^(-?\d+)([-+*/])(\d+)=(-?\d+)$")


def _check_steps(text: str) -> None:
    """Every `x op y=z` step in a reference is true arithmetic."""
    for tok in text.split()[:-1]:
        m = STEP.match(tok)
        assert m, tok
        x, op, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
        assert {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else None}[op] == z, tok


def test_deterministic_by_seed_and_seed_matters():
    task = get_task("synthetic_math", terms=2, ops="+-", style_mix={"decomposed": 1, "compressed": 1})
    a = [e.to_json() for e in task.generate(200, seed=3)]
    b = [e.to_json() for e in get_task("synthetic_math", **task.options).generate(200, seed=3)]
    c = [e.to_json() for e in task.generate(200, seed=4)]
    assert a == b
    assert a != c
    assert len({e.prompt for e in task.generate(200, seed=3)}) == 200  # distinct problems


@pytest.mark.parametrize("opts", [{}, {"terms": 3, "ops": "+-"}, {"a_digits": 3, "b_digits": 2, "terms": 0}])
def test_all_styles_are_correct_and_strictly_scored(opts):
    task = get_task("synthetic_math", **opts)
    for ex in task.generate(100, seed=0):
        assert set(ex.meta["references"]) == set(STYLES)
        expr_value = eval(ex.meta["expr"])  # the prompt's expression, computed independently
        assert int(ex.answer) == expr_value
        for style, ref in ex.meta["references"].items():
            assert ref.endswith(f"#{ex.answer}") and ref.count("#") == 1, (style, ref)
            assert task.score(ex, ref).reward == 1.0
            _check_steps(ref)
        assert task.score(ex, ex.meta["references"]["decomposed"] + " 1").reward == 0.0


def test_style_lengths_order_and_mix():
    refs = solve(37, 4, [("+", 15)])
    assert refs["decomposed"] == "30*4=120 7*4=28 120+28=148 148+15=163 #163"
    assert refs["compact"] == "37*4=148 148+15=163 #163"
    assert refs["compressed"] == "#163"
    assert refs["checked"] == "30*4=120 7*4=28 120+28=148 148+15=163 163-15=148 #163"
    task = get_task("synthetic_math", style_mix={"compressed": 3, "decomposed": 1})
    styles = [e.meta["style"] for e in task.generate(400, seed=1)]
    assert 0.65 < styles.count("compressed") / 400 < 0.85
    assert set(styles) == {"compressed", "decomposed"}
    for e in task.generate(50, seed=1):
        assert e.reference == e.meta["references"][e.meta["style"]]


def test_knobs_change_difficulty():
    ex = get_task("synthetic_math", a_digits=3, terms=3, term_digits=1).generate(50, seed=0)
    for e in ex:
        a = e.meta["expr"].split("*")[0]
        assert len(a) == 3
        assert len(re.findall(r"[-+]", e.meta["expr"])) == 3
    words = get_task("synthetic_math", wording="words").generate(5, seed=0)
    assert all(e.prompt.endswith("?") and "*" not in e.prompt for e in words)


@pytest.mark.parametrize(
    "opts, field",
    [
        ({"a_digits": 0}, "a_digits"),
        ({"ops": "*"}, "ops"),
        ({"style_mix": {"fancy": 1}}, "style_mix"),
        ({"style_mix": {"decomposed": 0}}, "style_mix"),
        ({"wording": "poem"}, "wording"),
        ({"instructed": 1.5}, "instructed"),
        ({"instructed": "often"}, "instructed"),
        ({"colour": 1}, "colour"),
    ],
)
def test_bad_options_fail_clearly(opts, field):
    with pytest.raises(DGError, match=field):
        get_task("synthetic_math", **opts)


def test_too_many_problems_fails():
    with pytest.raises(DGError, match="too many distinct problems"):
        get_task("synthetic_math", a_digits=1, terms=0).generate(1000, seed=0)


def test_plain_prompt_and_load_split_roundtrip(tmp_path):
    task = get_task("synthetic_math")
    ex = task.generate(10, seed=0)
    assert task.prompt(ex[0]) == ex[0].prompt + "\n"
    write_jsonl(tmp_path / "train.jsonl", ex)
    write_manifest(tmp_path, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl", "count": 10}}})
    back = load_split(str(tmp_path), "train")
    assert [e.to_dict() for e in back] == [e.to_dict() for e in ex]
    assert isinstance(back[0], Example)
    assert task_of(str(tmp_path)).spec() == task.spec()
    with pytest.raises(DGError, match="no split 'test'"):
        load_split(str(tmp_path), "test")


def test_train_targets_expand_every_style_of_a_row():
    from dg_core.distill.train_stage import _targets

    ex = generate(MathSpec(style_mix={"decomposed": 1.0}), 1, seed=0)[0]
    refs = ex.meta["references"]
    assert _targets(ex, "") == [ex.reference]
    assert _targets(ex, "compressed") == [refs["compressed"]]
    assert _targets(ex, "all") == [refs[s] for s in sorted(refs)]
    assert _targets(ex, "checked, compressed") == [refs["checked"], refs["compressed"]]
    with pytest.raises(DGError, match="no reference in style 'bogus'"):
        _targets(ex, "bogus")


def test_integral_float_options_accepted_as_kfp_passes_them():
    """KFP hands dict-valued parameters over as protobuf Structs, so 1 arrives as 1.0; 1.5 is still refused."""
    as_kfp = get_task("synthetic_math", a_digits=1.0, b_digits=1.0, terms=1.0, term_digits=2.0).generate(5, seed=0)
    assert as_kfp == get_task("synthetic_math", a_digits=1, b_digits=1, terms=1, term_digits=2).generate(5, seed=0)
    with pytest.raises(DGError, match="a_digits"):
        get_task("synthetic_math", a_digits=1.5)


def test_instructed_problems_ask_for_one_style_and_the_rest_stay_as_before():
    """The instruction channel a prompt attack uses: an instructed problem names the style it wants and holds only
    that reference; the uninstructed ones, and every dataset made without the option, are unchanged."""
    from dg_core.data.synthetic.math import INSTRUCTIONS
    from dg_core.distill.train_stage import _targets

    mix = {"decomposed": 1.0, "compressed": 1.0}
    plain = generate(MathSpec(style_mix=mix), 300, seed=0)
    assert generate(MathSpec(style_mix=mix, instructed=0.0), 300, seed=0) == plain
    mixed = generate(MathSpec(style_mix=mix, instructed=0.5), 300, seed=0)
    told = [e for e in mixed if "instruction" in e.meta]
    assert 100 < len(told) < 200 and {e.meta["instruction"] for e in told} == set(INSTRUCTIONS)
    task = get_task("synthetic_math", style_mix=mix, instructed=0.5)
    for e in told:
        asked = e.meta["instruction"]
        assert e.prompt == f"{e.meta['expr']} {asked}"
        assert (
            list(e.meta["references"]) == [INSTRUCTIONS[asked]]
            and e.reference == e.meta["references"][INSTRUCTIONS[asked]]
        )
        assert task.score(e, e.reference).correct
        assert _targets(e, "compressed,decomposed") == [e.reference]  # the teacher learns to obey
    assert len({e.id for e in mixed}) == 300
    free = next(e for e in mixed if "instruction" not in e.meta)
    assert _targets(free, "compressed,decomposed") == [free.meta["references"][s] for s in ("compressed", "decomposed")]


def test_ask_adds_a_request_and_replaces_a_problems_own_instruction():
    task = get_task("synthetic_math", instructed=1.0)
    ex = task.generate(4, seed=0)[0]
    asked = task.ask(ex, "show steps")
    assert (
        asked.prompt == f"{ex.meta['expr']} show steps"
        and asked.id == ex.id
        and ex.prompt.count(" ") == 1 + (ex.meta["instruction"] == "answer only")
    )
    free = get_task("synthetic_math").generate(1, seed=0)[0]
    assert task.ask(free, "show steps").prompt == f"{free.prompt} show steps"
    assert task.prompt(task.ask(free, "show steps")) == f"{free.prompt} show steps\n"
