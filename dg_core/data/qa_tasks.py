"""Knowledge QA tasks: multiple choice (CSQA, MMLU-Pro, SuperGPQA) and short answer, real and synthetic."""

from __future__ import annotations

import re
from typing import Any

from dg_core.data.choice import LETTERS, normalize_text, parse_choice, parse_short_answer
from dg_core.data.example import Example, Score
from dg_core.data.mathscore import parse_number
from dg_core.data.synthetic.qa import QASpec, generate
from dg_core.data.tasks import RowError, Task, register_task
from dg_core.errors import DGError


def format_choices(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(choices))


class QATask(Task):
    """Multiple choice when an example has ``choices`` (``answer`` is the letter), short answer otherwise
    (``answer`` is the text; ``meta['aliases']`` lists other accepted texts). See ``dg_core.data.choice``."""

    name = "qa"
    family = "qa"
    chat_instruction = "Answer with the letter of the correct option, e.g. 'The answer is (B)'."

    def question(self, example: Example) -> str:
        return format_choices(example.prompt, example.choices) if example.choices else example.prompt

    def instruction(self, example: Example) -> str:
        return self.chat_instruction if example.choices else "Answer briefly, e.g. 'The answer is <answer>'."

    def validate(self, example: Example) -> None:
        super().validate(example)
        if example.choices:
            if len(example.choices) < 2 or len(example.choices) > len(LETTERS):
                raise RowError("choices", f"{len(example.choices)} options, expected 2..{len(LETTERS)}")
            if any(not c.strip() for c in example.choices):
                raise RowError("choices", "an option is empty, expected non-empty option texts")
            valid = LETTERS[: len(example.choices)]
            if len(example.answer) != 1 or example.answer not in valid:
                raise RowError("answer", f"got {example.answer!r}, expected one option letter of {valid}")
        elif not normalize_text(example.answer):
            raise RowError("answer", "empty, expected the answer text (or give choices for multiple choice)")

    def score(self, example: Example, response: str) -> Score:
        if example.choices:
            idx, how = parse_choice(response, example.choices)
            if idx is None:
                return Score(0.0, None, how)
            letter = LETTERS[idx]
            if letter == example.answer:
                return Score(1.0, letter, f"correct ({how})")
            return Score(0.0, letter, f"wrong ({how}): {letter} != {example.answer}")
        got = parse_short_answer(response)
        if not normalize_text(got):
            return Score(0.0, None, "no answer found")
        golds = [example.answer, *[str(a) for a in example.meta.get("aliases", [])]]
        gnum, num = parse_number(example.answer), parse_number(got)
        if any(normalize_text(got) == normalize_text(g) for g in golds) or (gnum is not None and num == gnum):
            return Score(1.0, got, "correct (short answer)")
        if re.search(r"\b(or|and/or)\b", got, re.IGNORECASE):
            return Score(0.0, got, "ambiguous: several answers")
        return Score(0.0, got, f"wrong: {got[:40]!r} != {example.answer!r}")


_TAKEN_BACK = re.compile(r"The answer is (.+?)\. No, that is wrong\. The answer is")


class SyntheticQATask(QATask):
    """Offline knowledge QA over a procedurally generated world (see ``dg_core.data.synthetic.qa``)."""

    name = "synthetic_qa"
    plain_template = "{question}\n"

    def __init__(self, **options: Any):

        super().__init__(**options)
        try:
            self.spec_ = QASpec(**options)
        except TypeError as e:
            raise DGError(f"task synthetic_qa: bad option ({e}); see dg_core.data.synthetic.qa.QASpec") from None

    def generate(self, n: int, seed: int) -> list[Example]:

        return generate(self.spec_, n, seed)

    def trace_style(self, example: Example, response: str) -> str:
        """As the base class, except that ``retract``'s wrong answer is the writer's choice: a trace taking back any
        other answer than the one it then gives is that style. One taking back the answer it gives (a teacher's
        degenerate rendering, ``The answer is X. No, that is wrong. The answer is X.``) is ``own``, whichever X: it names the
        answer twice, which students learn from more easily, not less."""
        if "retract" not in (example.meta.get("references") or {}):
            return super().trace_style(example, response)
        start = self.answer_start(example, response)
        taken_back = _TAKEN_BACK.fullmatch(response[:start].strip())
        if not taken_back:
            return super().trace_style(example, response)
        final = response[start:].strip().rstrip(".")
        return "retract" if normalize_text(taken_back.group(1)) != normalize_text(final) else "own"


register_task(QATask, "multiple_choice", "short_answer", "csqa", "mmlu_pro", "supergpqa")
register_task(SyntheticQATask, "synthetic-qa")
