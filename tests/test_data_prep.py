"""Adapters prep their real-layout fixtures; malformed rows are counted and named; prep is deterministic,
publishes to local and S3 stores, and the CLI runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dg_core import store
from dg_core.config import from_dict
from dg_core.data import get_task, load_split, read_dataset_manifest, task_of
from dg_core.data.prep import Config, assign_split, prepare, run
from dg_core.errors import DGError

FIX = Path(__file__).parent / "fixtures" / "data"

ADAPTER_FIXTURES = [
    # (format, fixture, task, rows, fields whose first-row removal must be named in the error)
    ("gsm8k", "gsm8k.jsonl", "math", 4, "answer"),
    ("bigmath", "bigmath.jsonl", "math", 4, "answer"),
    ("csqa", "csqa.jsonl", "qa", 4, "answerKey"),
    ("mmlu_pro", "mmlu_pro.jsonl", "qa", 3, "options"),
    ("supergpqa", "supergpqa.jsonl", "qa", 3, "answer_letter"),
    ("dolly", "dolly.jsonl", "open_ended", 3, "response"),
    ("alpaca", "alpaca.json", "open_ended", 3, "output"),
    ("sharegpt", "sharegpt.json", "open_ended", 2, "conversations"),
    ("vicuna", "vicuna.jsonl", "open_ended", 2, "turns"),
    ("generic", "generic.jsonl", "qa", 3, "prompt"),
]


def _cfg(**kw) -> Config:
    return from_dict(Config, {"splits": {"train": 0.5, "test": 0.5}, **kw})


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name != "MANIFEST.json"}


@pytest.mark.parametrize("fmt, fixture, task, rows, _field", ADAPTER_FIXTURES)
def test_adapter_preps_its_fixture(tmp_path, fmt, fixture, task, rows, _field):
    m = prepare(_cfg(source=str(FIX / fixture), format=fmt), tmp_path)
    assert m["counts"] == {"rows": rows, "kept": rows, "rejected": 0, "duplicates": 0}
    assert m["task"]["name"] == task and m["format"] == fmt
    assert len(m["source"]["sha256"]) == 64
    exs = load_split(str(tmp_path), "train") + load_split(str(tmp_path), "test")
    assert len(exs) == rows and all(e.prompt for e in exs)
    t = task_of(str(tmp_path))
    for e in exs:
        t.validate(e)
        if task in ("math", "qa") and e.reference:
            assert t.score(e, e.reference).reward == 1.0, (e.reference, e.answer)
    # the same file is recognised without naming its format
    (tmp_path / "auto").mkdir()
    auto = prepare(_cfg(source=str(FIX / fixture)), tmp_path / "auto")
    assert auto["format"] == fmt
    assert _files(tmp_path / "auto") == _files(tmp_path)  # same artifact, byte for byte


def test_adapter_field_mapping_details(tmp_path):
    prepare(_cfg(source=str(FIX / "gsm8k.jsonl"), splits={"all": 1.0}), tmp_path)
    g = {e.answer: e for e in load_split(str(tmp_path), "all")}
    assert set(g) == {"18", "145", "1200", "3"}  # '#### 1,200' -> 1200
    assert "<<" not in g["18"].reference and g["18"].reference.endswith("#### 18")
    d = tmp_path / "m"
    d.mkdir()
    prepare(_cfg(source=str(FIX / "mmlu_pro.jsonl"), splits={"all": 1.0}), d)
    m = {e.id: e for e in load_split(str(d), "all")}
    assert m["71"].answer == "C" and m["71"].choices[2] == "Nitrogen" and m["71"].meta["category"] == "chemistry"
    assert m["71"].reference.startswith("Let's think step by step")
    assert len(m["70"].choices) == 10
    d = tmp_path / "s"
    d.mkdir()
    prepare(_cfg(source=str(FIX / "sharegpt.json"), splits={"all": 1.0}), d)
    s = {e.id: e for e in load_split(str(d), "all")}
    assert (
        s["8xk2Lp1_0"].prompt == "What is a good name for a bakery?"
        and s["8xk2Lp1_0"].reference == "Rise & Shine Bakery."
    )
    d = tmp_path / "i"
    d.mkdir()
    prepare(_cfg(source=str(FIX / "generic_instructions.jsonl"), task="instructions", splits={"all": 1.0}), d)
    ins = load_split(str(d), "all")
    t = task_of(str(d))
    assert all(t.score(e, e.reference).reward == 1.0 for e in ins)
    assert t.score(ins[0], "Tea Is Warm.").reward == 0.0


@pytest.mark.parametrize("fmt, fixture, _task, _rows, field", ADAPTER_FIXTURES)
def test_malformed_row_names_file_row_and_field(tmp_path, fmt, fixture, _task, _rows, field):
    src = FIX / fixture
    if src.suffix == ".json":
        rows = json.loads(src.read_text())
    else:
        rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    del rows[0][field]
    bad = tmp_path / f"bad{src.suffix}"
    bad.write_text(json.dumps(rows) if src.suffix == ".json" else "\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DGError) as e:
        prepare(_cfg(source=str(bad), format=fmt), tmp_path)
    msg = str(e.value)
    assert str(bad) in msg and "row 1" in msg and f"field '{field}'" in msg, msg
    assert "\n" not in msg
    assert not (tmp_path / "dataset.json").exists()


def test_malformed_fixture_fails_or_is_reported(tmp_path):
    src = str(FIX / "gsm8k_malformed.jsonl")
    with pytest.raises(DGError, match=r"gsm8k_malformed.jsonl: 3 of 4 rows malformed .* row 2 field 'answer'"):
        prepare(_cfg(source=src, format="gsm8k"), tmp_path)
    m = prepare(_cfg(source=src, format="gsm8k", max_rejected_fraction=0.8), tmp_path)
    assert m["counts"]["rejected"] == 3 and m["counts"]["kept"] == 1
    by_row = {r["row"]: r for r in m["rejected"]}
    assert by_row[2]["field"] == "answer" and "####" in by_row[2]["reason"]
    assert "invalid JSON" in by_row[3]["reason"]
    assert by_row[4]["field"] == "question" and by_row[4]["reason"] == "missing"


def test_parquet_and_arrow_give_the_same_artifact(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (FIX / "mmlu_pro.jsonl").read_text().splitlines()]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "mmlu.parquet")
    with pa.OSFile(str(tmp_path / "mmlu.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    outs = {}
    for name in ("mmlu_pro.jsonl", "mmlu.parquet", "mmlu.arrow"):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        src = FIX / name if name.endswith("jsonl") else tmp_path / name
        prepare(_cfg(source=str(src), format="mmlu_pro"), d)
        outs[name] = {k: v for k, v in _files(d).items() if k != "dataset.json"}
    assert outs["mmlu_pro.jsonl"] == outs["mmlu.parquet"] == outs["mmlu.arrow"]


def test_same_inputs_byte_identical_and_seed_moves_splits(tmp_path, store_root):
    cfg = {"source": "synthetic", "task": "synthetic_math", "n": 400, "seed": 3, "task_options": {"terms": 2}}
    a = run(from_dict(Config, {**cfg, "output": store.join(store_root, "a")}))
    b = run(from_dict(Config, {**cfg, "output": store.join(store_root, "b")}))
    fa, fb = _files(store.fetch(a["uri"])), _files(store.fetch(b["uri"]))
    assert fa == fb and set(fa) == {"dataset.json", "train.jsonl", "validation.jsonl", "test.jsonl"}
    assert a["splits"] == b["splits"] and sum(a["splits"].values()) == 400
    c = run(from_dict(Config, {**cfg, "seed": 4, "output": store.join(store_root, "c")}))
    assert _files(store.fetch(c["uri"]))["train.jsonl"] != fa["train.jsonl"]
    # held-out problems never appear in train
    train = {e.prompt for e in load_split(a["uri"], "train")}
    assert not train & {e.prompt for e in load_split(a["uri"], "test")}


def test_split_does_not_depend_on_the_key_order_of_the_fractions(store_root):
    # KFP hands a component its dict options in another key order than the YAML: the demo's prep then gave
    # another test split (242 vs 260 problems) from the same fractions, run to run
    cfg = {"source": "synthetic", "task": "synthetic_math", "n": 600, "seed": 0}
    one = {"train": 0.875, "validation": 0.047, "test": 0.078}
    other = {"test": 0.078, "train": 0.875, "validation": 0.047}
    a = run(from_dict(Config, {**cfg, "splits": one, "output": store.join(store_root, "a")}))
    b = run(from_dict(Config, {**cfg, "splits": other, "output": store.join(store_root, "b")}))
    assert a["splits"] == b["splits"]
    assert _files(store.fetch(a["uri"])) == _files(store.fetch(b["uri"]))


def test_split_is_stable_when_rows_are_added(tmp_path):
    splits = {"train": 0.7, "validation": 0.1, "test": 0.2}
    ids = [f"id{i}" for i in range(2000)]
    got = [assign_split(i, 0, splits) for i in ids]
    assert abs(got.count("train") / 2000 - 0.7) < 0.04 and abs(got.count("test") / 2000 - 0.2) < 0.04
    small = prepare(_cfg(source=str(FIX / "csqa.jsonl"), format="csqa"), tmp_path)
    more = tmp_path / "more.jsonl"
    extra = json.loads((FIX / "csqa.jsonl").read_text().splitlines()[0])
    extra.update(id="new-row", question="Where do fish live?")
    more.write_text((FIX / "csqa.jsonl").read_text() + json.dumps(extra) + "\n")
    d = tmp_path / "more"
    d.mkdir()
    big = prepare(_cfg(source=str(more), format="csqa"), d)
    before = {e.id for e in load_split(str(tmp_path), "train")}
    after = {e.id for e in load_split(str(d), "train")}
    assert before <= after and small["counts"]["kept"] + 1 == big["counts"]["kept"]


def test_duplicates_are_counted_not_silently_dropped(tmp_path):
    src = tmp_path / "dup.jsonl"
    lines = (FIX / "gsm8k.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["question"] = "  " + row["question"].upper() + "  "  # same question after normalisation
    src.write_text("\n".join(lines + [json.dumps(row)]) + "\n")
    m = prepare(_cfg(source=str(src), format="gsm8k"), tmp_path)
    assert m["counts"] == {"rows": 5, "kept": 4, "rejected": 0, "duplicates": 1}
    assert m["duplicates"][0]["row"] == 5
    m2 = prepare(_cfg(source=str(src), format="gsm8k", dedupe=False), tmp_path)
    assert m2["counts"]["kept"] == 5


def test_synthetic_families_prep_and_score(tmp_path):
    for name in ("synthetic_qa", "synthetic_instructions"):
        d = tmp_path / name
        d.mkdir()
        m = prepare(_cfg(source="synthetic", task=name, n=120, seed=1), d)
        assert m["counts"]["kept"] == 120
        t = task_of(str(d))
        assert t.name == name
        rows = load_split(str(d), "test")
        assert rows and all(t.score(e, e.reference).reward == 1.0 for e in rows)


def test_config_errors_are_one_line():
    with pytest.raises(DGError, match="fractions sum to 0.9"):
        _cfg(splits={"train": 0.8, "test": 0.1})
    with pytest.raises(DGError, match="format"):
        _cfg(format="csv")
    with pytest.raises(DGError, match="unknown task"):
        prepare(_cfg(source="synthetic", task="poetry"), Path("/nonexistent"))
    with pytest.raises(DGError, match="file not found"):
        prepare(_cfg(source="./missing.jsonl"), Path("/nonexistent"))
    with pytest.raises(DGError, match="HF_HUB_OFFLINE"):
        prepare(_cfg(source="openai/gsm8k"), Path("/nonexistent"))


def test_failed_prep_publishes_nothing(store_root):
    out = store.join(store_root, "datasets", "bad")
    with pytest.raises(DGError):
        run(_cfg(source=str(FIX / "gsm8k_malformed.jsonl"), format="gsm8k", output=out))
    assert not store.is_published(out)


def test_prep_on_s3_store_and_s3_source(s3_store_root, tmp_path):
    st, key = store.open_store(store.join(s3_store_root, "raw", "gsm8k.jsonl"))
    st.put_file(key, FIX / "gsm8k.jsonl")
    res = run(_cfg(source=store.join(s3_store_root, "raw", "gsm8k.jsonl"), format="gsm8k"))
    assert res["uri"].startswith(s3_store_root) and sum(res["splits"].values()) == 4
    assert read_dataset_manifest(res["uri"])["source"]["kind"] == "object"
    rows = load_split(res["uri"], "train") + load_split(res["uri"], "test")
    assert sorted(e.answer for e in rows) == ["1200", "145", "18", "3"]
    assert task_of(res["uri"]).name == "math"
    # a published dataset artifact can itself be a source (re-prep with another split)
    local = tmp_path / "art"
    local.mkdir()
    shutil.copy(FIX / "csqa.jsonl", local / "csqa.jsonl")
    store.publish(local, store.join(s3_store_root, "raw", "csqa"))
    res2 = run(_cfg(source=store.join(s3_store_root, "raw", "csqa"), output=store.join(s3_store_root, "ds", "csqa")))
    assert sum(res2["splits"].values()) == 4 and task_of(res2["uri"]).name == "qa"


def test_cli_prep_local_and_errors(store_root, capsys):
    from dg_core.cli import main

    assert main(["prep", "source=synthetic", "task=synthetic_math", "n=50", "name=tiny"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["uri"] == store.join(store_root, "datasets", "tiny")
    assert sum(summary["splits"].values()) == 50
    assert [e.id for e in load_split(summary["uri"], "train")]
    assert main(["prep", f"source={FIX / 'gsm8k_malformed.jsonl'}", "format=gsm8k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2 field 'answer'" in err[0]


def test_get_task_aliases_and_prompt_with_chat_template():
    from dg_core.models.zoo import build_tokenizer

    assert get_task("gsm8k").name == "math" and get_task("mmlu_pro").name == "qa"
    tok = build_tokenizer("char")
    ex = get_task("synthetic_math").generate(1, 0)[0]
    assert get_task("synthetic_math").prompt(ex, tok) == ex.prompt + "\n"  # no chat template: plain text
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    text = get_task("synthetic_math").prompt(ex, tok)
    assert text.startswith("<user>" + ex.prompt) and text.endswith("<assistant>") and "#<answer>" in text
    mc = get_task("qa")
    from dg_core.data import Example

    q = Example(id="1", prompt="Pick one", choices=["x", "y"], answer="B")
    assert mc.prompt(q) == "Question: Pick one\nA. x\nB. y\nAnswer: "


def test_cli_prep_on_s3_store(s3_store_root, capsys):
    from dg_core.cli import main

    assert main(["prep", "task=synthetic_qa", "n=40", "task_options={hops: 2}", "name=qa"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["uri"] == store.join(s3_store_root, "datasets", "qa") and store.is_published(summary["uri"])
    assert task_of(summary["uri"]).options == {"hops": 2}
    assert sum(len(load_split(summary["uri"], s)) for s in summary["splits"]) == 40


def test_data_file_may_not_leave_the_artifact(store_root, tmp_path):
    """Issue 11 item 10: `data_file=../../../outside.jsonl` read a file outside the artifact as if from it."""
    (tmp_path / "outside.jsonl").write_bytes((FIX / "gsm8k.jsonl").read_bytes())
    art = tmp_path / "a" / "b" / "art"
    art.mkdir(parents=True)
    shutil.copy(FIX / "csqa.jsonl", art / "csqa.jsonl")
    (art / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    uri = store.join(store_root, "raw", "art")
    local = Path(store.fetch(store.publish(art, uri)["uri"]))
    depth = len(local.relative_to(tmp_path).parts)
    out = store.join(store_root, "ds", "x")
    for data_file, words in (
        ("../" * depth + "outside.jsonl", "leaves the artifact"),
        (str(tmp_path / "outside.jsonl"), "leaves the artifact"),
        ("sub/../../outside.jsonl", "leaves the artifact"),
    ):
        with pytest.raises(DGError, match=words):
            run(_cfg(source=uri, data_file=data_file, output=out))
    assert not store.is_published(out)
    # inside the artifact and listed in its manifest: fine
    assert sum(run(_cfg(source=uri, data_file="csqa.jsonl", output=out))["splits"].values()) == 4


def test_data_file_symlink_out_of_a_plain_folder_is_refused(tmp_path):
    (tmp_path / "outside.jsonl").write_bytes((FIX / "gsm8k.jsonl").read_bytes())
    d = tmp_path / "folder"
    d.mkdir()
    (d / "link.jsonl").symlink_to(tmp_path / "outside.jsonl")
    with pytest.raises(DGError, match="resolves outside the artifact"):
        prepare(_cfg(source=str(d), data_file="link.jsonl"), tmp_path / "out")


@pytest.mark.parametrize(
    "splits, words",
    [
        ({"train": float("nan"), "test": 1.0}, "finite number"),
        ({"train": float("inf"), "test": 0.0}, "finite number"),
        ({"train": -0.5, "test": 1.5}, "expected a fraction in [0, 1]"),
        ({"train": 0.5, "test": 0.6}, "fractions sum to 1.1"),
    ],
)
def test_split_fractions_must_be_finite_fractions_summing_to_1(splits, words):
    """Issue 11 item 11: `splits={train: .nan, test: 1.0}` was accepted and gave an empty train split."""
    with pytest.raises(DGError, match=words.replace("[", r"\[")):
        _cfg(splits=splits)
    with pytest.raises(DGError, match="splits"):
        Config(splits=splits)  # built directly too (check() is the last line of defence)


def test_prep_cli_on_the_yaml_form_of_a_nan_split(store_root, capsys):
    from dg_core.cli import main

    assert main(["prep", "splits={train: .nan, test: 1.0}"]) == 2
    assert "'splits.train': got nan" in capsys.readouterr().err
    assert not (Path(store_root[len("file://") :]) / "datasets").exists()


def test_unreadable_jsonl_is_one_line_not_a_traceback(store_root, tmp_path, capsys):
    """Issue 11 item 9: non-UTF-8 / binary JSONL and too-deep JSON are bad rows, never a traceback."""
    from dg_core.cli import main

    good = (FIX / "gsm8k.jsonl").read_bytes()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(good + b"\xff\xfe\x00 not text\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 8)
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"question": ' + "[" * 100_000 + "]" * 100_000 + ', "answer": "#### 1"}\n')
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"question": "caf\xe9", "answer": "#### 1"}]'.encode("latin-1"))
    for src, words in (
        (mixed, "row 5: not UTF-8 text (byte 0xff at column 1)"),
        (binary, "none of 9 rows could be read (row 1: invalid JSON"),
        (deep, "row 1: JSON nested deeper than 64 levels"),
        (deep_json, "JSON nested deeper than 64 levels"),
        (latin, "not UTF-8 text (byte 0xe9"),
    ):
        rc = main(["prep", f"source={src}", "format=gsm8k", "max_rejected_fraction=0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], (src.name, err)
    assert not (Path(store_root[len("file://") :]) / "datasets").exists()
    # under the rejected-row budget, the readable rows are published and the bad one counted
    res = run(_cfg(source=str(mixed), format="gsm8k", max_rejected_fraction=0.5))
    assert sum(res["splits"].values()) == 4 and res["rejected"] == 1


def test_the_chat_instruction_is_a_task_option_kept_in_the_dataset(tmp_path, monkeypatch):
    """task_options.instruction replaces the task's chat instruction, survives prep (dataset.json) and is what a
    chat-templated prompt holds; a non-text instruction is one line."""
    monkeypatch.setenv("DG_STORE_ROOT", (tmp_path / "store").as_uri())
    cfg = {"source": str(FIX / "gsm8k.jsonl"), "format": "gsm8k", "task_options": {"instruction": "Number only."}}
    uri = run(from_dict(Config, cfg))["uri"]
    task = task_of(uri)
    assert task.chat_instruction == "Number only." and task.spec()["options"] == {"instruction": "Number only."}
    assert get_task("math").chat_instruction != "Number only."  # the class default is untouched
    synth = get_task("synthetic_math", a_digits=1, instruction="")
    assert synth.chat_instruction == "" and synth.spec()["options"]["a_digits"] == 1
    with pytest.raises(DGError, match="task option 'instruction'"):
        get_task("math", instruction=3)


def test_stage_budgets_default_to_the_task(tmp_path):
    """``max_new_tokens = 0`` (every stage's default) is the dataset's task budget: hundreds of tokens for real
    math, the zoo's 64 for synthetic arithmetic; a task option or an explicit stage value overrides it."""
    from dg_core.calibrate.stage import Config as CalConfig
    from dg_core.data import with_task_budget
    from dg_core.distill.stage import Config as DistillConfig
    from dg_core.evaluate import Config as EvalConfig
    from dg_core.traps.diagnose import Config as DiagConfig

    math, synth, short = tmp_path / "math", tmp_path / "synth", tmp_path / "short"
    for d in (math, synth, short):
        d.mkdir()
    prepare(_cfg(source=str(FIX / "gsm8k.jsonl")), math)
    prepare(_cfg(source="synthetic", task="synthetic_math", n=8), synth)
    prepare(_cfg(source=str(FIX / "gsm8k.jsonl"), task_options={"max_new_tokens": 300}), short)
    ev = lambda d, **kw: with_task_budget(from_dict(EvalConfig, {"model": "zoo:teacher", "dataset": str(d), **kw}))  # noqa: E731
    assert ev(math).max_new_tokens == 512 and ev(synth).max_new_tokens == 64 and ev(short).max_new_tokens == 300
    assert ev(math, max_new_tokens=40).max_new_tokens == 40
    for cls in (CalConfig, DistillConfig, DiagConfig, EvalConfig):  # every stage defers to the task unless told
        assert cls.__dataclass_fields__["max_new_tokens"].default == 0, cls
    assert task_of(str(short)).spec()["options"]["max_new_tokens"] == 300
    with pytest.raises(DGError, match=r"task option 'max_new_tokens': got -1, expected a positive number"):
        get_task("math", max_new_tokens=-1)
