"""Dataset adapters: each maps one source's real field layout to :class:`Example` rows.

| format      | source (hub id)                      | fields read                                                     |
|-------------|--------------------------------------|-----------------------------------------------------------------|
| gsm8k       | openai/gsm8k                         | question, answer ("... #### 72"; ``<<48/2=24>>`` notes removed)  |
| bigmath     | SynthLabsAI/Big-Math-RL-Verified     | problem, answer, source, domain, llama8b_solve_rate             |
|             | open-r1/Big-Math-RL-Verified-Processed | prompt, solution (the final answer), level configs            |
| csqa        | tau/commonsense_qa                   | id, question, choices{label, text}, answerKey, question_concept |
| mmlu_pro    | TIGER-Lab/MMLU-Pro                   | question_id, question, options, answer, answer_index, cot_content, category, src |
| supergpqa   | m-a-p/SuperGPQA                      | uuid, question, options, answer, answer_letter, discipline, field, subfield, difficulty |
| dolly       | databricks/databricks-dolly-15k      | instruction, context, response, category                        |
| alpaca      | tatsu-lab/alpaca (and look-alikes)   | instruction, input, output                                      |
| sharegpt    | Vicuna/ShareGPT conversations        | id, conversations[{from: human|gpt, value}] (first turn pair)   |
| vicuna      | Vicuna bench questions               | question_id, category, turns (first turn; no reference)         |
| generic     | your own data                        | see below                                                       |

**Generic schema** (one JSON object per row): ``prompt`` (required, the question text), ``answer`` (the gold
answer the scorer checks: a number, an option letter, a short text; optional for open instructions),
``reference`` (a good response to train on, optional), ``choices`` (list of option texts; ``answer`` is then the
letter A, B, ... or the option text), ``constraints`` (verifiable constraints, see ``dg_core.data.constraints``),
``id`` (optional; a content hash otherwise); every other field is kept under ``meta``.

An adapter raises :class:`RowError` naming the field when a row does not fit; prep counts and reports those.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dg_core.data.choice import LETTERS
from dg_core.data.example import Example, content_id
from dg_core.data.tasks import RowError
from dg_core.errors import DGError


def _str(row: dict[str, Any], field: str, *, required: bool = True) -> str:
    if field not in row or row[field] is None:
        if required:
            raise RowError(field, "missing")
        return ""
    v = row[field]
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise RowError(field, f"got {type(v).__name__}, expected a string")
    s = str(v)
    if required and not s.strip():
        raise RowError(field, "empty, expected text")
    return s


def _list_of_str(row: dict[str, Any], field: str) -> list[str]:
    v = row.get(field)
    if v is None:
        raise RowError(field, "missing")
    if hasattr(v, "tolist"):  # numpy arrays from parquet
        v = v.tolist()
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise RowError(field, f"got {type(v).__name__}, expected a list of strings")
    return [str(x) for x in v]


def _id(row: dict[str, Any], field: str | None, *parts: Any) -> str:
    if field and row.get(field) not in (None, ""):
        return str(row[field])
    return content_id(*parts)


def _meta(row: dict[str, Any], *fields: str) -> dict[str, Any]:
    out = {}
    for f in fields:
        if f in row and row[f] is not None:
            v = row[f]
            out[f] = v.tolist() if hasattr(v, "tolist") else v
    return out


def _letter(answer: str, choices: list[str], field: str) -> str:
    """An option letter from a letter or the option's text."""
    a = answer.strip()
    if len(a) == 1 and a.upper() in LETTERS[: len(choices)]:
        return a.upper()
    if a in choices:
        return LETTERS[choices.index(a)]
    raise RowError(field, f"got {answer!r}, expected an option letter {LETTERS[0]}..{LETTERS[len(choices) - 1]}")


# ------------------------------------------------------------------------------------------- math


def gsm8k(row: dict[str, Any]) -> Example:
    q = _str(row, "question")
    sol = _str(row, "answer")
    if "####" not in sol:
        raise RowError("answer", "no '#### <answer>' marker, expected GSM8K's solution format")
    final = sol.rsplit("####", 1)[1].strip().replace(",", "")
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", final):
        raise RowError("answer", f"final answer {final!r} after '####' is not a number")
    reference = re.sub(r"<<[^<>]*>>", "", sol).strip()
    return Example(id=_id(row, None, "gsm8k", q), prompt=q, reference=reference, answer=final)


def bigmath(row: dict[str, Any]) -> Example:
    if "problem" in row:
        q, ans = _str(row, "problem"), _str(row, "answer")
    else:  # open-r1's processed variant: prompt + solution (the final answer)
        q, ans = _str(row, "prompt"), _str(row, "solution")
    return Example(
        id=_id(row, None, "bigmath", q),
        prompt=q,
        reference="",
        answer=ans.strip(),
        meta=_meta(row, "source", "domain", "llama8b_solve_rate", "level"),
    )


# --------------------------------------------------------------------------------- multiple choice


def csqa(row: dict[str, Any]) -> Example:
    q = _str(row, "question")
    ch = row.get("choices")
    if not isinstance(ch, dict) or "text" not in ch or "label" not in ch:
        raise RowError("choices", "expected {label: [...], text: [...]}")
    texts = list(ch["text"].tolist() if hasattr(ch["text"], "tolist") else ch["text"])
    labels = list(ch["label"].tolist() if hasattr(ch["label"], "tolist") else ch["label"])
    if len(texts) != len(labels) or len(texts) < 2:
        raise RowError("choices", f"{len(labels)} labels vs {len(texts)} texts, expected equal and >= 2")
    if labels != list(LETTERS[: len(labels)]):
        raise RowError("choices", f"labels {labels}, expected A, B, C, ...")
    key = _str(row, "answerKey")
    if key not in labels:
        raise RowError("answerKey", f"got {key!r}, expected one of {labels}")
    return Example(
        id=_id(row, "id", "csqa", q),
        prompt=q,
        reference=f"The answer is ({key}).",
        answer=key,
        choices=[str(t) for t in texts],
        meta=_meta(row, "question_concept"),
    )


def mmlu_pro(row: dict[str, Any]) -> Example:
    q = _str(row, "question")
    options = _list_of_str(row, "options")
    if len(options) < 2 or any(not o.strip() for o in options):
        raise RowError("options", f"{len(options)} options (or an empty one), expected at least 2 non-empty")
    letter = _letter(_str(row, "answer"), options, "answer")
    idx = row.get("answer_index")
    if idx is not None and (
        isinstance(idx, bool) or not isinstance(idx, numbers.Integral) or LETTERS[int(idx) : int(idx) + 1] != letter
    ):
        raise RowError("answer_index", f"got {idx!r}, which disagrees with answer {letter}")
    cot = _str(row, "cot_content", required=False).strip()
    cot = re.sub(r"^A:\s*", "", cot)
    return Example(
        id=_id(row, "question_id", "mmlu_pro", q),
        prompt=q,
        reference=cot or f"The answer is ({letter}).",
        answer=letter,
        choices=options,
        meta=_meta(row, "category", "src"),
    )


def supergpqa(row: dict[str, Any]) -> Example:
    q = _str(row, "question")
    options = _list_of_str(row, "options")
    if len(options) < 2:
        raise RowError("options", f"{len(options)} options, expected at least 2")
    letter = _letter(_str(row, "answer_letter"), options, "answer_letter")
    text = _str(row, "answer", required=False)
    if text and text.strip() != options[LETTERS.index(letter)].strip():
        raise RowError("answer", f"{text[:40]!r} is not option {letter}")
    return Example(
        id=_id(row, "uuid", "supergpqa", q),
        prompt=q,
        reference=f"The answer is ({letter}).",
        answer=letter,
        choices=options,
        meta=_meta(row, "discipline", "field", "subfield", "difficulty", "is_calculation"),
    )


# ------------------------------------------------------------------------------------ instructions


def dolly(row: dict[str, Any]) -> Example:
    instr = _str(row, "instruction")
    ctx = _str(row, "context", required=False).strip()
    prompt = f"{instr}\n\n{ctx}" if ctx else instr
    return Example(
        id=_id(row, None, "dolly", prompt),
        prompt=prompt,
        reference=_str(row, "response").strip(),
        meta=_meta(row, "category"),
    )


def alpaca(row: dict[str, Any]) -> Example:
    instr = _str(row, "instruction")
    inp = _str(row, "input", required=False).strip()
    prompt = f"{instr}\n\n{inp}" if inp else instr
    return Example(id=_id(row, None, "alpaca", prompt), prompt=prompt, reference=_str(row, "output").strip())


def sharegpt(row: dict[str, Any]) -> Example:
    conv = row.get("conversations")
    if hasattr(conv, "tolist"):
        conv = conv.tolist()
    if not isinstance(conv, list) or not conv:
        raise RowError("conversations", "missing or empty, expected [{from, value}, ...]")
    turns = [(str(t.get("from", "")), t.get("value")) for t in conv if isinstance(t, dict)]
    if len(turns) != len(conv) or any(not isinstance(v, str) for _, v in turns):
        raise RowError("conversations", "expected every turn to be {from: ..., value: <text>}")
    if turns[0][0] not in ("human", "user"):
        raise RowError("conversations", f"first turn is from {turns[0][0]!r}, expected 'human'")
    reply = turns[1][1] if len(turns) > 1 and turns[1][0] in ("gpt", "assistant", "chatgpt") else ""
    prompt = turns[0][1].strip()
    if not prompt:
        raise RowError("conversations", "first human turn is empty")
    return Example(id=_id(row, "id", "sharegpt", prompt), prompt=prompt, reference=reply.strip())


def vicuna(row: dict[str, Any]) -> Example:
    turns = _list_of_str(row, "turns")
    if not turns or not turns[0].strip():
        raise RowError("turns", "empty, expected at least one question turn")
    return Example(id=_id(row, "question_id", "vicuna", turns[0]), prompt=turns[0].strip(), meta=_meta(row, "category"))


# ------------------------------------------------------------------------------------------ generic

_GENERIC = {"id", "prompt", "answer", "reference", "choices", "constraints"}


def generic(row: dict[str, Any]) -> Example:
    prompt = _str(row, "prompt")
    choices = _list_of_str(row, "choices") if row.get("choices") is not None else []
    answer = _str(row, "answer", required=False)
    if choices:
        answer = _letter(answer, choices, "answer")
    cons = row.get("constraints") or []
    if hasattr(cons, "tolist"):
        cons = cons.tolist()
    if not isinstance(cons, list) or not all(isinstance(c, dict) for c in cons):
        raise RowError("constraints", "expected a list of {type: ..., ...} objects")
    meta = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in row.items() if k not in _GENERIC}
    return Example(
        id=_id(row, "id", "generic", prompt, choices),
        prompt=prompt,
        reference=_str(row, "reference", required=False),
        answer=answer.strip(),
        choices=choices,
        constraints=[dict(c) for c in cons],
        meta=meta,
    )


# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Adapter:
    name: str
    fn: Callable[[dict[str, Any]], Example]
    task: str
    signature: tuple[str, ...]  # fields that identify the layout (auto-detection)
    hub_id: str = ""


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("gsm8k", gsm8k, "math", ("question", "answer"), "openai/gsm8k"),
        Adapter("bigmath", bigmath, "math", ("problem", "answer"), "SynthLabsAI/Big-Math-RL-Verified"),
        Adapter("csqa", csqa, "qa", ("question", "choices", "answerKey"), "tau/commonsense_qa"),
        Adapter("mmlu_pro", mmlu_pro, "qa", ("question", "options", "answer_index"), "TIGER-Lab/MMLU-Pro"),
        Adapter("supergpqa", supergpqa, "qa", ("question", "options", "answer_letter"), "m-a-p/SuperGPQA"),
        Adapter("dolly", dolly, "open_ended", ("instruction", "response"), "databricks/databricks-dolly-15k"),
        Adapter("alpaca", alpaca, "open_ended", ("instruction", "output"), "tatsu-lab/alpaca"),
        Adapter("sharegpt", sharegpt, "open_ended", ("conversations",)),
        Adapter("vicuna", vicuna, "open_ended", ("turns",)),
        Adapter("generic", generic, "qa", ("prompt",)),
    )
}
# Most specific layouts first, so e.g. MMLU-Pro is not taken for generic QA.
_DETECT_ORDER = (
    "csqa",
    "mmlu_pro",
    "supergpqa",
    "dolly",
    "alpaca",
    "sharegpt",
    "vicuna",
    "bigmath",
    "gsm8k",
    "generic",
)


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise DGError(f"unknown dataset format {name!r}: expected auto or one of {', '.join(ADAPTERS)}")
    return ADAPTERS[name]


def detect_format(rows: list[dict[str, Any]], where: str) -> Adapter:
    """The adapter whose signature fields the first rows carry; fails naming the fields seen."""
    for row in rows[:5]:
        if not isinstance(row, dict):
            continue
        for name in _DETECT_ORDER:
            if all(f in row for f in ADAPTERS[name].signature):
                if name == "bigmath" and "problem" not in row:
                    continue
                return ADAPTERS[name]
        if "prompt" in row and "solution" in row:
            return ADAPTERS["bigmath"]
    seen = sorted(rows[0]) if rows and isinstance(rows[0], dict) else []
    raise DGError(
        f"{where}: cannot tell the dataset format from fields {seen}; set format= one of {', '.join(ADAPTERS)}"
    )
