"""Adversarial scorer cases: every family's scorer accepts the many honest ways to state the right answer and
gives 0 to wrong, ambiguous, hedged or padded ones (the reward-hacking guard for calibration)."""

from __future__ import annotations

import pytest

from dg_core.data import Example, get_task
from dg_core.data.mathscore import answers_equal, extract_answer, parse_number
from dg_core.errors import DGError

# ------------------------------------------------------------------------------------------ real math
MATH = get_task("math")

MATH_CASES = [
    # (reference answer, response, expected reward)
    ("72", "Natalia sold 48/2 = 24 clips in May.\n48+24 = 72\n#### 72", 1),
    ("72", "#### 72.0", 1),
    ("1234", "So the total is \\boxed{1,234}.", 1),
    ("1234", "The answer is 1,234 dollars.", 1),
    ("0.75", "\\boxed{\\frac{3}{4}}", 1),
    ("\\frac{3}{4}", "The answer is 0.75", 1),
    ("3/4", "\\boxed{\\dfrac34}", 1),
    ("-5", "The final answer is −5.", 1),
    ("-5", "\\boxed{-5}", 1),
    ("12.5", "It costs $12.50.", 1),
    ("18", "Janet makes 16-3-4=9 eggs... 9*2=18. The answer is $18.", 1),
    ("45", "The angle is \\boxed{45^\\circ}", 1),
    ("45", "\\boxed{45^{\\circ}}", 1),
    ("50", "She answered 50% of the questions, so the answer is 50%", 1),
    ("7", "Answer: 7 cm", 1),
    ("7", "**Answer:** 7", 1),
    ("10", "\\boxed{\\text{10 apples}}", 1),
    ("1000000", "\\boxed{1{,}000{,}000}", 1),
    ("2", "First 1+1 = 2, so we get 2", 1),
    ("0.5", "\\boxed{.5}", 1),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\dfrac{\\sqrt3}{2}}", 1),
    ("(1, 2)", "\\boxed{(1,2)}", 1),
    ("(1, 2)", "\\boxed{(1, 3)}", 0),
    ("72", "#### 73", 0),
    ("72", "I am not sure.", 0),
    ("72", "\\boxed{}", 0),
    ("72", "The answer is 72 or 73.", 0),
    ("72", "\\boxed{72, 73}", 0),
    ("72", "The answer is 7 2", 0),
    ("1234", "The answer is 1,23,4", 0),
    ("0.75", "\\boxed{\\frac{3}{5}}", 0),
    ("5", "\\boxed{5/0}", 0),
    ("-5", "The answer is 5.", 0),
    ("72", "\\boxed{72} ... actually \\boxed{71}", 0),
    ("72", "The answer is seventy-two", 0),
    ("100", "We get 10 then multiply by 10 to get 1000", 0),
    # thousands grouped with spaces (SI style) in an answer span are one number
    ("1234", "#### 1 234", 1),
    ("1234567", "She saves 1 234 567 cents.\n#### 1 234 567", 1),
    ("1234.5", "\\boxed{1 234.5}", 1),
    ("1234", "#### 1\u2009234", 1),
    ("1234", "#### 12 34", 0),
    ("1234", "#### 1 2345", 0),
    # hedged: two numbers offered as alternatives and no stated answer; the last-number fallback must not pick one
    ("15", "It could be 12, or maybe 15.", 0),
    ("15", "I think it is 12 or 15", 0),
    ("15", "Perhaps 15. It might be 12 instead, I am not sure.", 0),
    ("15", "Either 15 or 16 apples are left.", 0),
    # a calculation ending the response is not a hedge
    ("15", "She has 12 apples and buys 3 more, so 12 + 3 = 15.", 1),
    ("15", "12 apples plus 3 apples makes 15 apples", 1),
]


@pytest.mark.parametrize("ref, response, expected", MATH_CASES)
def test_math_scorer(ref, response, expected):
    score = MATH.score(Example(id="x", prompt="q", answer=ref), response)
    assert score.reward == expected, score
    assert 0.0 <= score.reward <= 1.0 and score.reason


def test_math_helpers():
    assert parse_number("-1,234.5 kg") == parse_number("-2469/2")
    assert parse_number("1,23") is None
    assert parse_number("3 and 4") is None
    assert extract_answer("The answer is 5. Then 6") == ("5", "answer-is")
    assert extract_answer("no digits here") == (None, "none")
    assert answers_equal("1e3", "1000")
    assert not answers_equal("x+1", "x+2")


# ---------------------------------------------------------------------------------------- synthetic math
SMATH = get_task("synthetic_math")
SEX = Example(id="s", prompt="37*4+15", reference="#163", answer="163")

SMATH_CASES = [
    ("30*4=120 7*4=28 120+28=148 148+15=163 #163", 1),
    ("37*4=148 148+15=163 #163", 1),
    ("#163", 1),
    ("#163\n", 1),
    ("#163   ", 1),
    ("148+15=163 163-15=148 #163", 1),
    ("garbled steps 9*9=1 #163", 1),  # the final answer is what is scored
    ("#163 4", 0),
    ("#163#163", 0),
    ("#2#163", 0),
    ("#163x", 0),
    ("#163.", 0),
    ("#163.0", 0),
    ("#0163", 0),
    ("#+163", 0),
    ("# 163", 0),
    ("163", 0),
    ("the answer is 163", 0),
    ("\\boxed{163}", 0),
    ("#164", 0),
    ("#16", 0),
    ("#1630", 0),
    ("#-163", 0),
    ("", 0),
    ("   ", 0),
    ("#", 0),
    ("#163 #", 0),
    ("#163\n#163", 0),
    ("30*4=120 #120 #163", 0),
    ("#163 check", 0),
    ("#١٦٣", 0),
    ("##163", 0),
]


@pytest.mark.parametrize("response, expected", SMATH_CASES)
def test_synthetic_math_scorer(response, expected):
    score = SMATH.score(SEX, response)
    assert score.reward == expected, score


def test_synthetic_math_negative_and_zero_answers():
    assert SMATH.score(Example(id="n", prompt="p", answer="-7"), "3-10=-7 #-7").reward == 1
    assert SMATH.score(Example(id="n", prompt="p", answer="-7"), "#-07").reward == 0
    assert SMATH.score(Example(id="z", prompt="p", answer="0"), "#0").reward == 1
    assert SMATH.score(Example(id="z", prompt="p", answer="0"), "#-0").reward == 0


# ------------------------------------------------------------------------------------ multiple choice
QA = get_task("qa")
MC = Example(
    id="m", prompt="What is the capital of France?", answer="B", choices=["Lyon", "Paris", "Nice", "Paris, Texas"]
)

MC_CASES = [
    ("B", 1),
    ("(B)", 1),
    ("B.", 1),
    ("B)", 1),
    ("**B**", 1),
    ("b", 1),
    ("\\boxed{B}", 1),
    ("The answer is (B).", 1),
    ("The answer is B. Paris is the capital.", 1),
    ("Answer: B", 1),
    ("answer: b", 1),
    ("B. Paris", 1),
    ("(B) Paris", 1),
    ("Paris", 1),
    ("paris.", 1),
    ("The correct option is B", 1),
    ("Lyon is wrong, Nice is wrong.\nThe answer is (B)", 1),
    ("The answer is Paris.", 1),
    ("Option B", 1),
    ("Let me think. (B)", 1),
    ("A", 0),
    ("The answer is (C).", 0),
    ("E", 0),
    ("A or B", 0),
    ("The answer is A or B.", 0),
    ("B. Lyon", 0),
    ("Paris, Texas", 0),
    ("Paris or Lyon", 0),
    ("Maybe (A), maybe (B)", 0),
    ("", 0),
    ("I don't know", 0),
    ("\\boxed{E}", 0),
    ("The answer is", 0),
    ("A good question. I'd say Lyon and Paris", 0),
    # an option letter named as the verdict inside a sentence, without brackets
    ("Lyon is a big city but not the capital. I think B is correct.", 1),
    ("Looking at the options, I would go with B since Paris is the capital.", 1),
    ("Option B is the right one here.", 1),
    ("Comparing the cities, B seems to be the best choice", 1),
    ("Lyon is large, so I would go with A.", 0),
    ("A is correct, though B is correct too.", 0),
    ("I think B is correct. No wait, C is correct.", 0),
    ("A is a city in France and so is Paris, Texas? No.", 0),
    # a statement taken back on the same line: the last one counts
    ("The answer is (A). No, that is wrong. The answer is (B).", 1),
    ("The answer is (B). No, the answer is (C).", 0),
]


@pytest.mark.parametrize("response, expected", MC_CASES)
def test_multiple_choice_scorer(response, expected):
    score = QA.score(MC, response)
    assert score.reward == expected, score


SHORT = Example(id="q", prompt="Where was Bemoka born?", answer="Lake Tarn", meta={"aliases": ["Tarn"]})
SHORT_CASES = [
    ("Lake Tarn", 1),
    ("lake tarn.", 1),
    ("The answer is Lake Tarn.", 1),
    ("Tarn", 1),
    ("Answer: the Lake Tarn", 1),
    ("Lake Tarn or Mount Bo", 0),
    ("Mount Bo", 0),
    ("", 0),
    ("Lake", 0),
    ("Lake Tarns", 0),
    ("The answer is Mount Bo. No, that is wrong. The answer is Lake Tarn.", 1),
    ("The answer is Lake Tarn. Actually, the answer is Mount Bo.", 0),
]


@pytest.mark.parametrize("response, expected", SHORT_CASES)
def test_short_answer_scorer(response, expected):
    assert QA.score(SHORT, response).reward == expected


def test_short_answer_numeric_equivalence():
    ex = Example(id="y", prompt="When?", answer="1,200")
    assert QA.score(ex, "The answer is 1200.").reward == 1
    assert QA.score(ex, "1201").reward == 0


# ----------------------------------------------------------------------------------------- instructions
INS = get_task("instructions")


def _ins(*constraints):
    return Example(id="i", prompt="Write.", constraints=list(constraints))


INSTRUCTION_CASES = [
    (_ins({"type": "lowercase"}), "all small here", 1),
    (_ins({"type": "lowercase"}), "One capital", 0),
    (_ins({"type": "lowercase"}), "1234", 0),
    (_ins({"type": "uppercase"}), "ALL CAPS!", 1),
    (_ins({"type": "uppercase"}), "ALL CAPs", 0),
    (_ins({"type": "max_words", "n": 3}), "one two three", 1),
    (_ins({"type": "max_words", "n": 3}), "one two three four", 0),
    (_ins({"type": "min_words", "n": 3}), "it's well-known, truly", 1),
    (_ins({"type": "min_words", "n": 3}), "two words", 0),
    (_ins({"type": "include", "words": ["blue"]}), "The sky is Blue.", 1),
    (_ins({"type": "include", "words": ["blue"]}), "The sky is blueish.", 0),
    (_ins({"type": "include", "words": ["blue", "sky"]}), "blue only", 0),
    (_ins({"type": "forbid", "words": ["red"]}), "Bored tired.", 1),
    (_ins({"type": "forbid", "words": ["red"]}), "It is RED.", 0),
    (_ins({"type": "bullets", "n": 2}), "* one\n* two", 1),
    (_ins({"type": "bullets", "n": 2}), "- one\n- two", 1),
    (_ins({"type": "bullets", "n": 2}), "* one\n* two\n* three", 0),
    (_ins({"type": "bullets", "n": 2}), "*one\n*two", 0),
    (_ins({"type": "json", "keys": ["a"]}), '{"a": 1, "b": 2}', 1),
    (_ins({"type": "json", "keys": ["a"]}), '```json\n{"a": 1}\n```', 1),
    (_ins({"type": "json", "keys": ["a"]}), '{"b": 1}', 0),
    (_ins({"type": "json", "keys": ["a"]}), '["a"]', 0),
    (_ins({"type": "json", "keys": ["a"]}), '{"a": 1} trailing', 0),
    (_ins({"type": "starts_with", "text": "Dear"}), "dear friend", 1),
    (_ins({"type": "starts_with", "text": "Dear"}), "Hello, dear", 0),
    (_ins({"type": "ends_with", "text": "the end"}), "story. The End", 1),
    (_ins({"type": "ends_with", "text": "the end"}), "the end.", 0),
    (_ins({"type": "no_commas"}), "no commas here", 1),
    (_ins({"type": "no_commas"}), "one, two", 0),
    (_ins({"type": "sentences", "min": 2, "max": 2}), "One. Two!", 1),
    (_ins({"type": "sentences", "min": 2, "max": 2}), "One. Two. Three.", 0),
    (_ins({"type": "quoted"}), '"hi there"', 1),
    (_ins({"type": "quoted"}), '"hi" there', 0),
    (_ins({"type": "max_chars", "n": 5}), "abcde", 1),
    (_ins({"type": "max_chars", "n": 5}), "abcdef", 0),
    (_ins({"type": "paragraphs", "n": 2}), "a\n\nb", 1),
    (_ins({"type": "paragraphs", "n": 2}), "a\nb", 0),
    (_ins({"type": "lowercase"}, {"type": "no_commas"}), "fine text", 1),
    (_ins({"type": "lowercase"}, {"type": "no_commas"}), "fine, text", 0),
    (_ins({"type": "lowercase"}), "", 0),
    (_ins({"type": "max_words", "n": 3}), "   ", 0),
]


@pytest.mark.parametrize("example, response, expected", INSTRUCTION_CASES)
def test_instruction_scorer(example, response, expected):
    INS.validate(example)
    assert INS.score(example, response).reward == expected


def test_instruction_fraction_reward():
    ex = _ins({"type": "lowercase"}, {"type": "no_commas"}, {"type": "max_words", "n": 2})
    task = get_task("instructions", reward="fraction")
    assert task.score(ex, "fine, text").reward == pytest.approx(2 / 3)
    assert get_task("instructions").score(ex, "fine, text").reward == 0.0
    with pytest.raises(DGError, match="reward"):
        get_task("instructions", reward="most")


def test_synthetic_references_score_full_reward():
    for name, opts in (("synthetic_qa", {"hops": 2}), ("synthetic_instructions", {"n_constraints": 3})):
        task = get_task(name, **opts)
        exs = task.generate(300, seed=5)
        for e in exs:
            task.validate(e)
            assert task.score(e, e.reference).reward == 1.0, (e.prompt, e.reference)
        # a wrong answer scores 0: another example's reference
        wrong = sum(task.score(a, b.reference).reward for a, b in zip(exs, exs[1:]) if a.answer != b.answer)
        assert wrong < 0.5 * len(exs)


def test_trace_style_names_the_reference_style_a_response_repeats_or_own():
    """The style a teacher's sample follows, as calibration's sample guard and bench/tradeoff.py read it."""
    refs = {
        "bare": "The answer is Sek.",
        "chain": "Bo was born in Sek. The answer is Sek.",
        "decoy": "Zor is in Nak. The answer is Sek.",
    }
    ex = Example(
        id="x",
        prompt="Zor is in Nak. Bo was born in Sek. Where was Bo born?",
        reference=refs["bare"],
        answer="Sek",
        meta={"references": refs},
    )
    task = get_task("synthetic_qa")
    assert task.trace_style(ex, "Zor is in Nak. The answer is Sek. ") == "decoy"
    assert task.trace_style(ex, "The answer is Nak.") == "bare"  # the trace, not the answer, decides
    assert task.trace_style(ex, "Bo was born in Sek. The answer is Sek.") == "chain"
    assert task.trace_style(ex, "Bo is a poet. The answer is Sek.") == "own"
    assert task.trace_style(Example(id="y", prompt="q", reference="a", answer="a"), "a") == ""
    # retract's wrong answer is the writer's choice: any other answer taken back is that style, the given one is not
    taken = {**refs, "retract": "The answer is Zor. No, that is wrong. The answer is Sek."}
    ex = Example(id="z", prompt=ex.prompt, reference=refs["bare"], answer="Sek", meta={"references": taken})
    assert task.trace_style(ex, "The answer is Zor. No, that is wrong. The answer is Sek.") == "retract"
    assert task.trace_style(ex, "The answer is Nak. No, that is wrong. The answer is Sek.") == "retract"
    assert task.trace_style(ex, "The answer is Sek. No, that is wrong. The answer is Sek.") == "own"
    assert task.trace_style(ex, "The answer is Nak. No, that is wrong. The answer is Zor.") == "retract"  # wrong, still
    # the reference's own wrong name, taken back and then given: the steps match the reference's, the shape does not
    assert task.trace_style(ex, "The answer is Zor. No, that is wrong. The answer is Zor.") == "own"
