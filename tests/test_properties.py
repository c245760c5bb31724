"""Property tests (hypothesis): arbitrary config text and arbitrary JSONL rows never produce a traceback or an exit
code other than 0 or 2, and a failed run leaves nothing behind where it would have written.

Bounded (a few dozen examples per property, no deadline) so they stay a few seconds each in CI.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dg_core.cli import main
from dg_core.config import load_config
from dg_core.errors import DGError
from dg_core.stages import STAGES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

GATE_KEYS = ["evaluations", "direction", "min_retention", "max_transfer", "min_transfer", "aggregate", "min_seeds"]
GATE_KEYS += ["model", "output", "lora.r", "a.b.c", "", " ", "evaluations.0"]

# YAML-ish scalars and flow values, with the awkward ones boosted
NASTY = st.sampled_from(
    [
        ".nan",
        ".inf",
        "-.inf",
        "1e999",
        "nan",
        "~",
        "null",
        "[",
        "{",
        "]",
        "[[[[",
        "{a: [1, {b: .nan}]}",
        "- x",
        "'",
        '"',
        "!!python/object:os.system",
        "&a [*a]",
        "0x10",
        "1_000",
        "yes",
        "\x00",
        "\ufffd",
        "[" * 3000,
        "{a: " * 200,
        "é",
        "∞",
        "",
    ]
)
VALUE = st.one_of(NASTY, st.text(max_size=40), st.integers().map(str), st.floats().map(repr))
OVERRIDE = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(GATE_KEYS), VALUE), st.text(max_size=30))


@contextlib.contextmanager
def sandbox():
    """A private cwd and store root; yields the folder (everything a run could write lands under it)."""
    old_cwd, old_root = os.getcwd(), os.environ.get("DG_STORE_ROOT")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["DG_STORE_ROOT"] = Path(tmp, "store").as_uri()
        try:
            yield Path(tmp)
        finally:
            os.chdir(old_cwd)
            if old_root is None:
                os.environ.pop("DG_STORE_ROOT", None)
            else:
                os.environ["DG_STORE_ROOT"] = old_root


def tree(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def run_cli(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


def assert_clean(code: int, err: str, before: set[str], after: set[str]) -> None:
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) == 1, err
        assert after == before, f"a failed run wrote {sorted(after - before)}"


@SETTINGS
@given(overrides=st.lists(OVERRIDE, max_size=4))
def test_cli_overrides_exit_0_or_2_and_write_nothing_on_failure(overrides):
    with sandbox() as d:
        before = tree(d)
        code, err = run_cli(["gate", *overrides])
        assert_clean(code, err, before, tree(d))


YAML_TEXT = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda pairs: "\n".join(f"{k}: {v}" for k, v in pairs),
        st.lists(st.tuples(st.sampled_from(GATE_KEYS + ["gate"]), VALUE), max_size=5),
    ),
)


@SETTINGS
@given(content=st.one_of(YAML_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=200)))
def test_cli_yaml_config_exit_0_or_2_and_write_nothing_on_failure(content):
    with sandbox() as d:
        f = d / "c.yaml"
        f.write_bytes(content)
        before = tree(d)
        code, err = run_cli(["gate", "--config", str(f)])
        assert_clean(code, err, before, tree(d))


@SETTINGS
@given(stage=st.sampled_from(sorted(STAGES)), overrides=st.lists(OVERRIDE, max_size=3), text=YAML_TEXT)
def test_every_stage_config_either_builds_or_fails_with_one_line(stage, overrides, text):
    cls = STAGES[stage].load().Config
    with sandbox() as d:
        f = d / "c.yaml"
        f.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(cls, f, overrides, section=stage)
        except DGError as e:
            assert "\n" not in str(e) and str(e).strip()


# ---------------------------------------------------------------------------------------------- JSONL rows

FIELDS = [
    "question",
    "answer",
    "prompt",
    "reference",
    "choices",
    "options",
    "answerKey",
    "answer_index",
    "id",
    "label",
    "text",
    "conversations",
    "from",
    "value",
    "turns",
    "instruction",
    "input",
    "output",
    "response",
    "context",
    "problem",
    "solution",
    "answer_letter",
    "constraints",
    "question_id",
    "uuid",
    "category",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["#### 3", "A", "B", "x << 2*3=6 >> #### 6", ""]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5),
    max_leaves=12,
)
ROW = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)
LINE = st.one_of(
    ROW.map(json.dumps).map(str.encode),
    JSON.map(json.dumps).map(str.encode),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"[" * 5000, b'{"a": ' * 3000, b"\xff\xfe", b"NaN", b'{"question": NaN}']),
)
FORMATS = st.sampled_from(
    ["auto", "gsm8k", "bigmath", "csqa", "mmlu_pro", "supergpqa", "dolly", "alpaca", "sharegpt", "vicuna", "generic"]
)


@SETTINGS
@given(lines=st.lists(LINE, min_size=1, max_size=6), fmt=FORMATS, budget=st.sampled_from(["0", "0.5", "1"]))
def test_prep_on_arbitrary_jsonl_exits_0_or_2_and_publishes_nothing_on_failure(lines, fmt, budget):
    with sandbox() as d:
        src = d / "rows.jsonl"
        src.write_bytes(b"\n".join(lines) + b"\n")
        before = tree(d)
        code, err = run_cli(
            ["prep", f"source={src}", f"format={fmt}", f"max_rejected_fraction={budget}", "splits={all: 1.0}"]
        )
        assert_clean(code, err, before, tree(d))
        if code == 0:
            assert (d / "store" / "datasets" / "rows" / "MANIFEST.json").is_file()


@pytest.mark.parametrize("fmt", ["auto", "generic", "gsm8k"])
def test_prep_property_helpers_see_a_good_row_published(fmt):
    """The property above is not vacuous: a well-formed row does publish."""
    with sandbox() as d:
        src = d / "rows.jsonl"
        src.write_text(json.dumps({"question": "1+2?", "answer": "#### 3", "prompt": "1+2?"}) + "\n")
        if fmt == "generic":
            src.write_text(json.dumps({"prompt": "1+2?", "answer": "3"}) + "\n")
        code, err = run_cli(["prep", f"source={src}", f"format={fmt}", "splits={all: 1.0}"])
        assert code == 0, err
