"""Tasks: how to prompt for an example and how to score a response to it.

A task's ``score`` is both evaluation accuracy and calibration's ``r_task``, so scorers are strict: a response
earns reward only for one clearly stated, correct answer (a junk suffix after the answer, two different answers,
or an empty box earn 0). Tasks are looked up by name with :func:`get_task`; a prep artifact records the name and
options of its task so :func:`dg_core.data.task_of` rebuilds the same one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from dg_core.data.example import Example, Score
from dg_core.data.mathscore import answers_equal, extract_answer
from dg_core.data.synthetic.math import MathSpec, generate
from dg_core.errors import DGError


class RowError(ValueError):
    """A row that cannot become a valid example: names the offending field and what was expected."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"field '{field}': {reason}")
        self.field = field
        self.reason = reason


class Task:
    """Base class. Subclasses set ``name``/``family`` and implement :meth:`score` (and :meth:`validate`)."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: Plain-text prompt used when the tokenizer has no chat template (the zoo's tiny models).
    plain_template: ClassVar[str] = "Question: {question}\nAnswer: "
    #: Appended to the question inside a chat template, telling a real model how to state its answer.
    chat_instruction: ClassVar[str] = ""
    #: Response token budget a stage uses when its ``max_new_tokens`` is 0: what an answer in this task needs
    #: (a real model reasoning through a math problem writes hundreds of tokens; the zoo answers in a few dozen).
    max_new_tokens: ClassVar[int] = 64

    def __init__(self, **options: Any):
        self.options = dict(options)

    def spec(self) -> dict[str, Any]:
        """Name + options: enough for ``get_task(**spec)`` to rebuild this task (stored in ``dataset.json``)."""
        return {"name": self.name, "options": dict(self.options)}

    def question(self, example: Example) -> str:
        """The question text shown to the model (multiple-choice tasks add the lettered options)."""
        return example.prompt

    def instruction(self, example: Example) -> str:
        """How a chat model should state its answer (added inside the chat template only)."""
        return self.chat_instruction

    def ask(self, example: Example, request: str) -> Example:
        """The example with ``request`` added to its question: what a prompt attack sends the teacher (e.g. "show
        your work"), while its student still trains on the plain question."""
        return replace(example, prompt=f"{example.prompt} {request}")

    def prompt(self, example: Example, tokenizer: Any = None) -> str:
        """The exact text a model is conditioned on: its chat template when it has one, else plain text."""
        question = self.question(example)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            instruction = self.instruction(example)
            content = f"{question}\n\n{instruction}" if instruction else question
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            if not isinstance(text, str):
                raise DGError(f"task {self.name}: the tokenizer's chat template did not return text")
            return text
        return self.plain_template.format(question=question)

    def score(self, example: Example, response: str) -> Score:  # pragma: no cover - abstract
        raise NotImplementedError

    def answer_start(self, example: Example, response: str) -> int:
        """Where the stated answer begins in ``response`` (the whitespace before it included, so a BPE tokenizer
        sees `` Sek`` as it would in the whole text); 0 when no answer is found. r_cal's ``span='answer'``
        scores only ``response[start:]``, after the prompt and the response before it."""
        parsed = self.score(example, response).parsed
        at = response.rfind(parsed) if parsed else -1
        return _back_over_space(response, at) if at > 0 else 0

    def trace_style(self, example: Example, response: str) -> str:
        """Which of the example's reference styles ``response`` follows: the one whose steps (everything before the
        stated answer) its own repeat exactly, else ``own`` (steps of the model's making). What a teacher's samples
        are, as calibration sees them; '' when the example carries no reference styles."""
        refs = example.meta.get("references") or {}
        if not refs:
            return ""
        trace = response[: self.answer_start(example, response)].strip()
        return next((k for k, r in sorted(refs.items()) if r[: self.answer_start(example, r)].strip() == trace), "own")

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Score]:
        """Score many responses (reward-model tasks override this to batch the model)."""
        if len(examples) != len(responses):
            raise DGError(f"score_batch: {len(examples)} examples but {len(responses)} responses")
        return [self.score(e, r) for e, r in zip(examples, responses)]

    def validate(self, example: Example) -> None:
        """Raise :class:`RowError` when an example cannot be scored by this task (prep rejects it)."""
        if not example.prompt.strip():
            raise RowError("prompt", "empty, expected the question text")

    def generate(self, n: int, seed: int) -> list[Example]:
        """Synthetic tasks: ``n`` examples, deterministic in (options, n, seed)."""
        raise DGError(f"task '{self.name}' is not synthetic: load it from a dataset source instead")


def _back_over_space(text: str, at: int) -> int:
    while at > 0 and text[at - 1].isspace():
        at -= 1
    return at


# --------------------------------------------------------------------------------------------- math


class MathTask(Task):
    """Real math data (GSM8K, BigMath): final numeric answer by equivalence, see ``dg_core.data.mathscore``."""

    name = "math"
    family = "math"
    chat_instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    max_new_tokens = 512

    def validate(self, example: Example) -> None:
        super().validate(example)
        if not example.answer.strip():
            raise RowError("answer", "empty, expected the final answer")

    def score(self, example: Example, response: str) -> Score:

        parsed, how = extract_answer(response)
        if parsed is None or not parsed.strip():
            return Score(0.0, None, "no final answer found")
        if answers_equal(parsed, example.answer):
            return Score(1.0, parsed, f"correct ({how})")
        return Score(0.0, parsed, f"wrong ({how}): {parsed!r} != {example.answer!r}")


_SYNTH_ANSWER = re.compile(r"#(-?\d+)")


class SyntheticMathTask(Task):
    """Offline multi-step arithmetic with several solution styles (see ``dg_core.data.synthetic.math``).

    Scoring is strict: the response must end with exactly one marker ``#<n>`` (trailing whitespace allowed),
    ``n`` written canonically. Anything after the marker, a second marker or ``#007`` scores 0: the guard against
    calibration learning to append junk a small proxy finds unlikely.
    """

    name = "synthetic_math"
    family = "math"
    plain_template = "{question}\n"
    chat_instruction = "Show your steps and end with #<answer>, e.g. #42."

    def __init__(self, **options: Any):

        super().__init__(**options)
        try:
            self.spec_ = MathSpec(**options)
        except TypeError as e:
            raise DGError(f"task synthetic_math: bad option ({e}); see dg_core.data.synthetic.math.MathSpec") from None

    def generate(self, n: int, seed: int) -> list[Example]:

        return generate(self.spec_, n, seed)

    def ask(self, example: Example, request: str) -> Example:
        """A request replaces the problem's own instruction (``instructed`` datasets) rather than adding a second."""
        own = example.meta.get("instruction")
        if own and example.prompt.endswith(f" {own}"):
            example = replace(example, prompt=example.prompt[: -len(own) - 1])
        return super().ask(example, request)

    def answer_start(self, example: Example, response: str) -> int:
        """The last ``#`` marker (the answer is the marker and its number)."""
        return _back_over_space(response, max(0, response.rfind("#")))

    def validate(self, example: Example) -> None:
        super().validate(example)
        if not re.fullmatch(r"-?(0|[1-9]\d*)", example.answer):
            raise RowError("answer", f"got {example.answer!r}, expected an integer")

    def score(self, example: Example, response: str) -> Score:
        text = response.rstrip()
        marks = list(_SYNTH_ANSWER.finditer(text))
        if not marks:
            return Score(0.0, None, "no final answer marker #<n>")
        last = marks[-1]
        if last.end() != len(text):
            return Score(0.0, last.group(1), f"text after the final answer: {text[last.end() :][:20]!r}")
        if text.count("#") > 1:
            return Score(0.0, last.group(1), "more than one answer marker")
        got = last.group(1)
        if not re.fullmatch(r"-?(0|[1-9]\d*)", got) or got == "-0":
            return Score(0.0, got, f"non-canonical number {got!r}")
        if got == example.answer:
            return Score(1.0, got, "correct")
        return Score(0.0, got, f"wrong: {got} != {example.answer}")


# ----------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Task]] = {}
_ALIASES: dict[str, str] = {}
_FAMILY_MODULES: list[str] = ["dg_core.data.qa_tasks", "dg_core.data.instruction_tasks"]


def register_task(cls: type[Task], *aliases: str) -> type[Task]:
    """Make a task class available to :func:`get_task` under its ``name`` and any aliases."""
    _REGISTRY[cls.name] = cls
    for a in aliases:
        _ALIASES[a] = cls.name
    return cls


register_task(MathTask, "gsm8k", "bigmath")
register_task(SyntheticMathTask, "synthetic-math")


def _load_builtin() -> None:
    # Other families live in their own modules; importing them registers them.
    import importlib

    for mod in _FAMILY_MODULES:
        importlib.import_module(mod)


def task_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """The task called ``name`` (or an alias such as ``gsm8k``), built with ``options``. Every task takes
    ``instruction``: the text appended to the question inside a chat template (replacing the task's default), and
    ``max_new_tokens``: the task's response budget (replacing the class default)."""
    _load_builtin()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise DGError(f"unknown task {name!r}: expected one of {', '.join(sorted(_REGISTRY) + sorted(_ALIASES))}")
    instruction = options.pop("instruction", None)
    if instruction is not None and not isinstance(instruction, str):
        raise DGError(f"task option 'instruction': got {instruction!r}, expected the text to append to the question")
    budget = options.pop("max_new_tokens", None)
    if isinstance(budget, float) and budget.is_integer():  # through KFP a dict's numbers are doubles
        budget = int(budget)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise DGError(f"task option 'max_new_tokens': got {budget!r}, expected a positive number of tokens")
    task = _REGISTRY[key](**options)
    if budget is not None:
        task.max_new_tokens = budget
        task.options = {**task.options, "max_new_tokens": budget}
    if instruction is not None:  # every task: how a chat model is told to state its answer ('' for none)
        task.chat_instruction = instruction
        task.options = {**task.options, "instruction": instruction}
    return task
