"""The calibration loop on tiny zoo models: r_cal across tokenizers, the adapter-off reference, the knob's
direction (both signs), and exact resume after a kill."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch

from dg_core.base.generate import generate_tokens, pack_texts
from dg_core.calibrate.grpo import CalibrationSettings, make_policy, run_calibration, token_logprobs
from dg_core.calibrate.rewards import CalibrationReward, TaskReward, score_text
from dg_core.checkpoint import Checkpointer
from dg_core.data import get_task
from dg_core.errors import DGError
from dg_core.models import adapter_disabled, attach_lora, load_model

TASK_OPTS = dict(a_digits=1, b_digits=1, terms=1, term_digits=1, style_mix={"decomposed": 1.0, "compressed": 1.0})


@pytest.fixture(scope="module")
def task():
    return get_task("synthetic_math", **TASK_OPTS)


@pytest.fixture(scope="module")
def examples(task):
    return task.generate(200, 0)


@pytest.fixture(scope="module")
def proxy(zoo_root):
    torch.set_num_threads(1)
    return load_model("zoo:proxy", device="cpu")


@pytest.fixture(scope="module")
def bootstrapped(zoo_root, task, examples):
    """A zoo teacher SFT'd briefly on two answer styles of different length (~15 s): enough to speak the format
    and to mix the styles, which is what the knob moves between."""
    from dg_core.distill.trainer import response_ce, row_indices, train
    from dg_core.distill.training import TrainingConfig

    torch.set_num_threads(1)
    model, tok = load_model("zoo:teacher", device="cpu")
    rows = [(task.prompt(e, tok), e.meta["references"][s]) for e in examples for s in ("decomposed", "compressed")]

    def make_batch(step: int, micro: int):
        idx = row_indices(len(rows), 32, step, micro, seed=0)
        return pack_texts(tok, [rows[i][0] for i in idx], [rows[i][1] for i in idx])

    for p in model.parameters():
        p.requires_grad_(True)
    train(model, make_batch, response_ce, TrainingConfig(steps=150, lr=3e-3, warmup_steps=10), progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tok


def test_r_cal_scores_the_same_text_with_two_tokenizers(zoo_root, proxy):
    teacher, ttok = load_model("zoo:teacher", device="cpu")
    pmodel, ptok = proxy
    prompts, responses = ["12*3+4\n", "7*8-9\n"], ["12*3=36 36+4=40 #40", "#47"]
    # the tokenizers really differ on this text
    assert len(ttok(responses[0], add_special_tokens=False)["input_ids"]) != len(
        ptok(responses[0], add_special_tokens=False)["input_ids"]
    )
    cal = CalibrationReward(teacher, ttok, [(pmodel, ptok)], normalize="sum")
    got = cal(prompts, responses)
    want = score_text(pmodel, ptok, prompts, responses) - score_text(teacher, ttok, prompts, responses)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)

    # brute force: the proxy's log p(y|x) as a product of its own next-token probabilities (+ EOS)
    from dg_core.base.generate import encode_prompt, encode_response

    p_ids = encode_prompt(ptok, prompts[0])
    r_ids = encode_response(ptok, responses[0], add_eos=True)
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(pmodel(input_ids=ids).logits[0, :-1].float(), -1)
    brute = sum(float(logp[len(p_ids) - 1 + k, t]) for k, t in enumerate(r_ids))
    assert float(score_text(pmodel, ptok, prompts[:1], responses[:1])[0]) == pytest.approx(brute, abs=1e-4)

    # per-token normalisation divides by each model's own token count; per-char by the text length
    tok_norm = CalibrationReward(teacher, ttok, [(pmodel, ptok)], normalize="token")(prompts, responses)
    char_norm = CalibrationReward(teacher, ttok, [(pmodel, ptok)], normalize="char")(prompts, responses)
    n_q = len(r_ids)
    n_t = len(encode_response(ttok, responses[0], add_eos=True))
    q_sum = float(score_text(pmodel, ptok, prompts[:1], responses[:1]))
    t_sum = float(score_text(teacher, ttok, prompts[:1], responses[:1]))
    assert float(tok_norm[0]) == pytest.approx(q_sum / n_q - t_sum / n_t, abs=1e-4)
    assert float(char_norm[0]) == pytest.approx((q_sum - t_sum) / len(responses[0]), abs=1e-4)


def test_answer_span_scores_only_the_answer_after_its_trace(zoo_root, proxy, task):
    """span='answer': r_cal is the log-ratio of the stated answer alone, conditioned on the prompt and the trace
    before it (the whitespace before the answer goes with it, as a BPE tokenizer reads it)."""
    qa = get_task("synthetic_qa", world_size=40, hops=2, mc_fraction=0.0, style_mix={"bare": 1.0, "chain": 1.0})
    ex = qa.generate(4, 0)[0]
    chain = ex.meta["references"]["chain"]
    start = qa.answer_start(ex, chain)
    assert 0 < start < len(chain) and chain[start:].strip().startswith(ex.answer) and chain[start].isspace()
    assert qa.answer_start(ex, "I do not know") == 0
    assert task.answer_start(None, "12*3=36 36+4=40 #40") == len("12*3=36 36+4=40")
    assert task.answer_start(None, "#47") == 0

    teacher, ttok = load_model("zoo:teacher", device="cpu")
    pmodel, ptok = proxy
    exs = task.generate(2, 3)
    prompts = [task.prompt(e, ttok) for e in exs]
    responses = ["12*3=36 36+4=40 #40", "#47"]
    cal = CalibrationReward(teacher, ttok, [(pmodel, ptok)], normalize="char", span="answer", task=task)
    got = cal(prompts, responses, examples=exs)
    heads, tails = [prompts[0] + "12*3=36 36+4=40", prompts[1]], [" #40", "#47"]
    want = score_text(pmodel, ptok, heads, tails, "char") - score_text(teacher, ttok, heads, tails, "char")
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-5)
    whole = CalibrationReward(teacher, ttok, [(pmodel, ptok)], normalize="char")(prompts, responses)
    assert abs(float(whole[0] - got[0])) > 1e-3  # the trace no longer counts
    assert float(whole[1]) == pytest.approx(float(got[1]), abs=1e-5)  # a bare answer is all answer
    same = CalibrationReward(teacher, ttok, [(teacher, ttok)], span="answer", task=task)
    assert same(prompts, responses, examples=exs).abs().max() < 1e-5
    assert not cal.reference_matches_anchor(ttok)  # the KL anchor's pass covers whole responses

    with pytest.raises(DGError, match="span 'answer': no task given"):
        CalibrationReward(teacher, ttok, [(pmodel, ptok)], span="answer")
    with pytest.raises(DGError, match="no examples for 2 responses"):
        cal(prompts, responses)
    with pytest.raises(DGError, match="TRL's reward signature"):
        cal.as_trl()


def test_several_proxies_combine_by_mean_or_worst_case(zoo_root, proxy):
    teacher, ttok = load_model("zoo:teacher", device="cpu")
    student, stok = load_model("zoo:student-gpt2", device="cpu")  # a second proxy with a third tokenizer
    prompts, responses = ["1*2+3\n", "4*5+6\n", "9*9-1\n"], ["#5", "4*5=20 20+6=26 #26", "#80"]
    pairs = [proxy, (student, stok)]
    rows = CalibrationReward(teacher, ttok, pairs).per_proxy(prompts, responses)
    assert rows.shape == (2, 3)
    mean = CalibrationReward(teacher, ttok, pairs, combine="mean")(prompts, responses)
    assert mean.tolist() == pytest.approx(rows.mean(0).tolist(), abs=1e-6)
    # worst case for the undistillable direction is the proxy that finds the text most likely
    worst_neg = CalibrationReward(teacher, ttok, pairs, combine="worst", eta_sign=-1)(prompts, responses)
    worst_pos = CalibrationReward(teacher, ttok, pairs, combine="worst", eta_sign=+1)(prompts, responses)
    assert worst_neg.tolist() == pytest.approx(rows.max(0).values.tolist(), abs=1e-6)
    assert worst_pos.tolist() == pytest.approx(rows.min(0).values.tolist(), abs=1e-6)


def test_rewards_have_trl_signature(zoo_root, proxy, task):
    teacher, ttok = load_model("zoo:teacher", device="cpu")
    r_task = TaskReward(task).as_trl()
    assert r_task(["1*2+3\n"] * 3, ["1*2=2 2+3=5 #5", "#6", "#5 junk"], answer=["5", "5", "5"]) == [1.0, 0.0, 0.0]
    r_cal = CalibrationReward(teacher, ttok, [proxy]).as_trl()
    conv = [[{"role": "assistant", "content": "#5"}]]
    out = r_cal(["1*2+3\n"], conv)
    assert len(out) == 1 and isinstance(out[0], float)
    assert out == pytest.approx(CalibrationReward(teacher, ttok, [proxy])(["1*2+3\n"], ["#5"]).tolist())


def test_rewards_share_one_typed_interface(zoo_root, proxy, task, examples):
    """r_task and r_cal are both a Reward: score(RewardInputs) gives one value per completion, the same as their
    direct calls; inputs whose lengths disagree are refused in one line."""
    from dg_core.calibrate.rewards import Reward, RewardInputs
    from dg_core.errors import DGError

    teacher, ttok = load_model("zoo:teacher", device="cpu")
    ex = examples[:3]
    texts = [f"#{e.answer}" for e in ex[:2]] + ["#nonsense"]
    prompts = [task.prompt(e, ttok) for e in ex]
    r_task, r_cal = TaskReward(task), CalibrationReward(teacher, ttok, [proxy])
    assert isinstance(r_task, Reward) and isinstance(r_cal, Reward)
    assert {r_task.name, r_cal.name} == {"r_task", "r_cal"}
    inputs = RewardInputs(ex, lambda tok: [task.prompt(e, tok) for e in ex], texts, [True, True, False])
    assert r_task.score(inputs).tolist() == [1.0, 1.0, 0.0]
    assert r_cal.score(inputs).tolist() == pytest.approx(r_cal(prompts, texts, None, [True, True, False]).tolist())
    with pytest.raises(DGError, match="2 finished values for 3 completions"):
        RewardInputs(ex, prompts, texts, [True, False])


def test_adapter_off_reference_equals_base_model_logits(zoo_root):
    base, tok = load_model("zoo:teacher", device="cpu")
    pristine = copy.deepcopy(base)
    policy = attach_lora(base, r=4, alpha=8)
    # move the adapter away from its zero init, as training would
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = pack_texts(tok, ["3*4+1\n", "12*3+4\n"], ["#13", "12*3=36 36+4=40 #40"])
    with torch.no_grad():
        adapted = token_logprobs(policy, batch)[0]
        with adapter_disabled(policy):
            ref = token_logprobs(policy, batch)[0]
        want = token_logprobs(pristine, batch)[0]
    mask = batch.targets_mask().bool()
    assert torch.allclose(ref[mask], want[mask], atol=1e-5)
    assert not torch.allclose(adapted[mask], want[mask], atol=1e-3)  # the adapter does change the policy


def _mean_r_cal(policy, tok, task, examples, cal) -> float:
    prompts = [task.prompt(e, tok) for e in examples[:32]]
    roll = generate_tokens(policy, tok, prompts, n=4, max_new_tokens=24, seed=1234)
    return float(cal([p for p in prompts for _ in range(4)], roll.texts, None, roll.finished).mean())


@pytest.mark.parametrize("eta", [1.0, -1.0])
def test_short_run_moves_r_cal_in_the_direction_of_eta(bootstrapped, proxy, task, examples, eta):
    base, tok = bootstrapped
    cfg = CalibrationSettings(
        eta=eta,
        beta=0.1,  # with beta=0 and lr=1e-2 an eta<0 policy drifts into text pi_0 itself finds unlikely
        steps=8,
        prompts_per_step=8,
        group_size=8,
        max_new_tokens=24,
        lr=5e-3,
        cal_gate="none",  # the 15-second teacher is rarely correct yet: let r_cal act on every sample
        eval_every=0,
        seed=0,
    )
    policy, _ = make_policy(copy.deepcopy(base), cfg)
    cal = CalibrationReward(policy, tok, [proxy])
    before = _mean_r_cal(policy, tok, task, examples, cal)
    res = run_calibration(policy, tok, task, examples, cfg, cal_reward=cal, progress=False)
    after = _mean_r_cal(policy, tok, task, examples, cal)
    assert res.steps_done == 8 and len(res.history) == 8
    assert all(h["kl"] >= 0 for h in res.history)
    # r_cal moves the way eta points, by a clear margin (both signs are run)
    assert (after - before) * eta > 1.0, (before, after)


def test_resume_after_kill_gives_the_same_adapter(zoo_root, proxy, task, examples, tmp_path):
    base, tok = load_model("zoo:teacher", device="cpu")
    cfg = CalibrationSettings(
        eta=-1.0,
        steps=4,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=10,
        lr=5e-3,
        cal_gate="none",
        eval_every=0,
        checkpoint_every=2,
        seed=3,
    )

    def fresh():
        policy, _ = make_policy(copy.deepcopy(base), cfg)
        return policy, CalibrationReward(policy, tok, [proxy])

    policy, cal = fresh()
    full = run_calibration(policy, tok, task, examples, cfg, cal_reward=cal, progress=False)
    want = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, row):
        if step == 3:
            raise Killed

    uri = (tmp_path / "ckpt").as_uri()
    policy, cal = fresh()
    with pytest.raises(Killed):
        run_calibration(
            policy,
            tok,
            task,
            examples,
            cfg,
            cal_reward=cal,
            progress=False,
            checkpointer=Checkpointer(uri, cfg.checkpoint_every),
            on_step=kill_at_3,
        )
    policy, cal = fresh()  # a new process: fresh adapter, state only from the store
    resumed = run_calibration(
        policy,
        tok,
        task,
        examples,
        cfg,
        cal_reward=cal,
        progress=False,
        checkpointer=Checkpointer(uri, cfg.checkpoint_every),
    )
    assert resumed.resumed_from == 2 and resumed.steps_done == 4
    got = {n: p.detach() for n, p in policy.named_parameters() if p.requires_grad}
    assert set(got) == set(want)
    for n in want:
        assert torch.allclose(got[n], want[n], atol=1e-6), n
    assert [h["reward_cal"] for h in resumed.history] == pytest.approx([h["reward_cal"] for h in full.history])


# ----------------------------------------------------------------------------------------------- the stage


def _dataset(tmp_path, task, examples) -> str:
    """A prepared dataset artifact written by hand (the layout `dguard prep` publishes)."""
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl

    d = tmp_path / "dataset"
    d.mkdir()
    write_jsonl(d / "train.jsonl", examples[:150])
    write_jsonl(d / "validation.jsonl", examples[150:])
    write_manifest(
        d,
        {
            "task": task.spec(),
            "splits": {
                "train": {"file": "train.jsonl", "rows": 150},
                "validation": {"file": "validation.jsonl", "rows": 50},
            },
        },
    )
    return str(d)


def _stage_cfg(**kw):
    from dg_core.calibrate.stage import Config
    from dg_core.config import from_dict

    base = dict(
        proxies=["zoo:proxy"],
        steps=2,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=24,
        eval_n=16,
        sampled_k=2,
        device="cpu",
        progress=False,
        checkpoint_every=0,
    )
    base.update(kw)
    return from_dict(Config, base)


def test_stage_publishes_model_adapter_and_card_when_the_gate_passes(bootstrapped, task, examples, tmp_path):
    import json

    from dg_core import store
    from dg_core.calibrate import stage
    from dg_core.models import save_model

    model, tok = bootstrapped
    teacher_uri = save_model(copy.deepcopy(model), tok, (tmp_path / "teacher").as_uri())
    out = (tmp_path / "calib").as_uri()
    cfg = _stage_cfg(
        teacher=teacher_uri,
        dataset=_dataset(tmp_path, task, examples),
        output=out,
        preflight_accuracy=0.0,
        min_retention=0.0,
        eta=-0.5,
        eval_n=50,  # the 15-second teacher is right on few prompts: 16 may hold none, and retention is undefined
    )
    summary = stage.run(cfg)
    assert summary["status"] == "passed"
    assert store.is_published(summary["model"]) and store.is_published(summary["adapter"])
    # the adapter names its base by the store URI (not the pod's local fetch path), and records its digest
    adapter_cfg = json.loads((store.fetch(summary["adapter"]) / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == teacher_uri
    from dg_core.calibrate.card import artifact_digest

    meta = store.read_manifest(summary["adapter"])["metadata"]
    assert meta["teacher_sha256"] == artifact_digest(teacher_uri) is not None
    card = json.loads((store.fetch(summary["card"]) / "card.json").read_text())
    assert card["status"] == "passed" and card["eta"] == -0.5 and card["direction"] == "undistillable"
    assert card["teacher"]["sha256"] and card["proxies"][0]["uri"] == "zoo:proxy"
    before = card["teacher_metrics"]["before"]
    assert set(before) >= {"greedy_accuracy", "sampled_accuracy", "r_cal_mean"}
    # r_cal of each reference style, read before training: which style each sign of eta pushes towards
    assert before["r_cal_style_decomposed"] != before["r_cal_style_compressed"]
    assert len(card["training"]["history"]) == 2
    md = (store.fetch(summary["card"]) / "card.md").read_text()
    assert "Status: passed" in md and "greedy_accuracy" in md
    # the hardened model carries an HF model card written from the calibration card
    readme = (store.fetch(summary["model"]) / "README.md").read_text()
    assert readme.startswith("---\nlibrary_name: transformers\n") and "- undistillable" in readme
    assert f"`{teacher_uri}` calibrated with distillation-guards: eta = -0.5" in readme
    assert "## Calibration card" in readme and card["teacher"]["sha256"][:16] in readme
    # the merged model loads and answers like the calibrated policy did
    merged, mtok = load_model(summary["model"], device="cpu")
    from dg_core.calibrate.grpo import sampled_accuracy

    held = examples[150:200]
    acc, _ = sampled_accuracy(merged, mtok, task, held, greedy=True, max_new_tokens=24)
    assert acc == pytest.approx(summary["after"]["greedy_accuracy"])
    # a rerun with the same settings returns the published model as it is: same content address, not republished
    version = store.read_manifest(summary["model"])["version"]
    again = stage.run(cfg)
    assert again["reused"] and again["model"] == summary["model"] and again["after"] == summary["after"]
    assert store.read_manifest(summary["model"])["version"] == version
    other = stage.run(dataclasses.replace(cfg, eta=-0.25, output=(tmp_path / "calib2").as_uri(), steps=1))
    assert not other.get("reused") and other["model"] != summary["model"]


def test_stage_gate_failure_publishes_only_the_card(zoo_root, task, examples, tmp_path):
    import json

    from dg_core import store
    from dg_core.calibrate import stage

    out = (tmp_path / "calib").as_uri()
    cfg = _stage_cfg(
        teacher="zoo:teacher", dataset=_dataset(tmp_path, task, examples), output=out, preflight_accuracy=0
    )
    summary = stage.run(cfg)  # an untrained teacher: accuracy 0, retention undefined
    assert summary["status"] == "failed" and "retention is undefined" in summary["reason"]
    # stopped right after the 'before' measurement: nothing was trained, no checkpoint written
    assert summary["steps"] == 0 and summary["after"] is None
    assert not store.is_published(store.join(out, "checkpoint"))
    assert summary["model"] is None and not store.is_published(store.join(out, "model"))
    assert not store.is_published(store.join(out, "adapter"))
    card = json.loads((store.fetch(summary["card"]) / "card.json").read_text())
    assert card["status"] == "failed" and card["reason"] == summary["reason"]
    assert card["training"]["preflight"].startswith("teacher soundness check off")
    assert "threshold" not in card["training"]["preflight"]


def test_stage_preflight_refuses_an_unsound_teacher(zoo_root, task, examples, tmp_path):
    from dg_core import store
    from dg_core.calibrate import stage
    from dg_core.errors import DGError

    out = (tmp_path / "calib").as_uri()
    cfg = _stage_cfg(
        teacher="zoo:teacher", dataset=_dataset(tmp_path, task, examples), output=out, preflight_accuracy=0.9
    )
    with pytest.raises(DGError, match="pre-flight: teacher not sound on the task: sampled accuracy 0.000"):
        stage.run(cfg)
    assert store.list_artifacts(out) == []  # nothing half-written


def test_stage_refuses_when_r_cal_does_not_rank_the_hardest_style_lowest(zoo_root, task, examples, tmp_path):
    """hardest_style: before any rollout, the style a probe student learns worst must be the one r_cal ranks
    lowest, else eta < 0 would push the teacher towards a style students learn better. Of the two reference
    styles exactly one passes this check; the other stops with the ranking, and nothing is written."""
    from dg_core import store
    from dg_core.calibrate import stage
    from dg_core.errors import DGError

    data = _dataset(tmp_path, task, examples)
    out = (tmp_path / "calib").as_uri()
    said = {}
    for style in ("compressed", "decomposed"):  # the untrained teacher then fails the soundness pre-flight
        cfg = _stage_cfg(teacher="zoo:teacher", dataset=data, output=out, eta=-0.5, hardest_style=style)
        with pytest.raises(DGError, match="pre-flight: ") as e:
            stage.run(cfg)
        said[style] = str(e.value)
    wrong = [s for s, msg in said.items() if "r_cal does not rank" in msg]
    assert len(wrong) == 1, said
    right = ({"compressed", "decomposed"} - set(wrong)).pop()
    assert re.search(
        rf"hardest_style {wrong[0]!r} lowest: r_cal\({wrong[0]}\) - r_cal\(\w+\) = \+0\.\d+ \[95% ", said[wrong[0]]
    )
    assert "held-out references, so eta -0.5 would push the teacher towards" in said[wrong[0]]
    assert "teacher not sound" in said[right]
    assert store.list_artifacts(out) == []
    cfg = _stage_cfg(teacher="zoo:teacher", dataset=data, output=out, eta=0.0, hardest_style=wrong[0])
    with pytest.raises(DGError, match="teacher not sound"):  # at eta = 0 r_cal has no weight: no sign to check
        stage.run(cfg)
    with pytest.raises(DGError, match=r"hardest_style 'bare': not a reference style of the dataset, expected one of"):
        stage.run(_stage_cfg(teacher="zoo:teacher", dataset=data, output=out, eta=-0.5, hardest_style="bare"))
    # a run with the guard set has its own address: a calibration published without it is not reused unchecked
    plain = stage.default_output(_stage_cfg(teacher="zoo:teacher", dataset=data))
    assert stage.default_output(_stage_cfg(teacher="zoo:teacher", dataset=data, hardest_style=right)) != plain


def test_style_accuracy_reads_what_the_teacher_answers_after_a_style_s_steps(bootstrapped, task, examples):
    """The soundness half of hardest_style: the teacher's answer once its response starts with a style's steps.
    Steps that carry the right sum lead it to the answer; the same steps with the sum off by one lead it astray,
    and the pre-flight refuses a style whose accuracy would fail the retention gate (only where eta < 0 moves
    the teacher towards it)."""
    from dataclasses import replace

    from dg_core.calibrate.guards import style_soundness
    from dg_core.calibrate.stage import style_accuracy

    model, tok = bootstrapped
    rows = []
    for e in examples[:40]:
        ref = e.meta["references"]["decomposed"]
        head, total = ref.rsplit(" #", 1)[0].rsplit("=", 1)
        off = f"{head}={int(total) + 1} #{int(total) + 1}"
        rows.append(replace(e, meta={**e.meta, "references": {**e.meta["references"], "off": off}}))
    right = style_accuracy(model, tok, task, rows, "decomposed", 24)
    astray = style_accuracy(model, tok, task, rows, "off", 24)
    assert right >= 0.8 and astray <= 0.2, (right, astray)
    # the steps come out of the response's budget: a budget that fits the context after the prompt alone fits
    # after the prompt and the steps too (it once asked for prompt + steps + the whole budget)
    fits = model.config.max_position_embeddings - max(len(tok(task.prompt(e, tok))["input_ids"]) for e in rows)
    assert style_accuracy(model, tok, task, rows, "decomposed", fits) == right

    why = style_soundness(astray, right, "off", 0.95, -1.0)
    assert why and f"answers {astray:.3f} of held-out problems after writing hardest_style 'off'" in why
    assert "min_retention 0.95" in why and "eta -1" in why
    assert style_soundness(right, right, "decomposed", 0.95, -1.0) is None
    assert style_soundness(astray, right, "off", 0.95, 0.5) is None  # eta > 0 moves away from it
    assert style_soundness(astray, right, "off", 0.0, -1.0) is None  # the retention gate is off


def test_stage_config_errors_are_one_line(zoo_root):
    from dg_core.errors import DGError

    with pytest.raises(DGError, match="'teacher' is required"):
        _stage_cfg(dataset="x")
    with pytest.raises(DGError, match="config field 'cal_gate'"):
        _stage_cfg(teacher="zoo:teacher", dataset="x", cal_gate="sometimes")
    with pytest.raises(DGError, match="config field 'group_size'"):
        _stage_cfg(teacher="zoo:teacher", dataset="x", group_size=1)


def test_loop_reuses_its_reference_pass_for_r_cal(bootstrapped, proxy, task, examples):
    """pi_0's log-prob of a finished sample, summed from the KL anchor's pass, equals scoring its text afresh."""
    model, tok = bootstrapped
    policy = attach_lora(copy.deepcopy(model), r=4, alpha=8)
    prompts = [task.prompt(e, tok) for e in examples[:8]]
    roll = generate_tokens(policy, tok, prompts, n=2, max_new_tokens=24, seed=5)
    packed = roll.batch(tok.pad_token_id)
    with torch.no_grad(), adapter_disabled(policy):
        lp, _ = token_logprobs(policy, packed)
    mask = packed.targets_mask().float()
    rep = [p for p in prompts for _ in range(2)]
    for normalize in ("sum", "token", "char"):
        cal = CalibrationReward(policy, tok, [proxy], normalize=normalize)
        reused = cal.normalize_reference((lp * mask).sum(-1), mask.sum(-1), roll.texts)
        fresh = cal.reference_logprob(rep, roll.texts)
        done = torch.tensor(roll.finished)
        assert done.sum() >= 8
        assert reused[done].tolist() == pytest.approx(fresh[done].tolist(), abs=1e-4)


def test_kl_guard_stops_early_and_stays_stopped_on_resume(zoo_root, proxy, task, examples, tmp_path):
    base, tok = load_model("zoo:teacher", device="cpu")
    cfg = CalibrationSettings(
        eta=-1.0,
        steps=6,
        prompts_per_step=2,
        group_size=4,
        max_new_tokens=8,
        lr=5e-2,
        cal_gate="none",
        eval_every=0,
        stop_kl=1e-6,
        checkpoint_every=100,
        seed=1,
    )
    policy, _ = make_policy(copy.deepcopy(base), cfg)
    uri = (tmp_path / "ckpt").as_uri()
    cal = CalibrationReward(policy, tok, [proxy])
    res = run_calibration(
        policy, tok, task, examples, cfg, cal_reward=cal, progress=False, checkpointer=Checkpointer(uri, 100)
    )
    # step 1 samples from pi_theta == pi_0 (LoRA B starts at 0): KL 0; the first update moves it past the bound
    assert res.history[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert res.stopped_reason and "KL" in res.stopped_reason and res.steps_done < 6
    policy2, _ = make_policy(copy.deepcopy(base), cfg)
    again = run_calibration(
        policy2, tok, task, examples, cfg, cal_reward=cal, progress=False, checkpointer=Checkpointer(uri, 100)
    )
    assert again.steps_done == res.steps_done and again.stopped_reason == res.stopped_reason


def test_a_non_finite_loss_stops_at_once_and_writes_no_checkpoint(zoo_root, task, examples, tmp_path):
    """A loss that turns NaN (here: a reference pi_0 with a NaN weight, full fine-tuning) stops the loop at that
    step with one line, before the update, and leaves no checkpoint of poisoned state for a rerun to resume."""
    from dg_core import store
    from dg_core.errors import DGError

    base, tok = load_model("zoo:teacher", device="cpu")
    cfg = CalibrationSettings(
        eta=-1.0, steps=3, prompts_per_step=2, group_size=2, max_new_tokens=6, cal_gate="none", eval_every=0, lora_r=0
    )
    policy, ref = make_policy(copy.deepcopy(base), cfg)
    with torch.no_grad():
        next(ref.parameters()).fill_(float("nan"))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    uri = (tmp_path / "ckpt").as_uri()
    with pytest.raises(DGError, match="calibrate: loss became nan at step 1: the run diverged"):
        run_calibration(
            policy, tok, task, examples, cfg, ref_model=ref, progress=False, checkpointer=Checkpointer(uri, 1)
        )
    assert not store.is_published(uri)
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())  # stopped before the update

    lcfg = CalibrationSettings(
        eta=-1.0, steps=3, prompts_per_step=2, group_size=2, max_new_tokens=6, cal_gate="none", eval_every=0
    )
    policy, _ = make_policy(copy.deepcopy(base), lcfg)

    def poison(step, row):  # weights turning NaN after an update, before the step's checkpoint
        with torch.no_grad():
            next(p for p in policy.parameters() if p.requires_grad).fill_(float("nan"))

    with pytest.raises(DGError, match="is NaN or infinite, so no checkpoint was written"):
        run_calibration(
            policy, tok, task, examples, lcfg, progress=False, checkpointer=Checkpointer(uri, 1), on_step=poison
        )
    assert not store.is_published(uri)


class _RecordingReward(CalibrationReward):
    """r_cal that keeps what it returned and which samples had ended, for the test to inspect."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[tuple[torch.Tensor, list[bool]]] = []

    def __call__(self, prompts, responses, reference=None, finished=None, examples=None):
        out = super().__call__(prompts, responses, reference, finished, examples)
        self.seen.append((out.clone(), list(finished) if finished is not None else []))
        return out


@pytest.mark.parametrize("which", ["teacher", "bpe"])
def test_r_cal_is_zero_when_the_proxy_is_pi0_for_finished_and_truncated_samples(
    bootstrapped, proxy, task, examples, which
):
    """The loop's reward and the card's measurement both give r_cal = 0 with proxy = pi_0: a sample cut off at
    max_new_tokens is scored without an end on both sides, and a sample whose ids are not what its text encodes
    to (byte-level BPE sampling a non-canonical split) is scored from its text on both sides."""
    from dg_core.calibrate.stage import measure_teacher

    model, tok = bootstrapped if which == "teacher" else proxy
    cfg = CalibrationSettings(
        eta=-1.0, steps=2, prompts_per_step=4, group_size=4, max_new_tokens=6, lr=1e-2, cal_gate="none", eval_every=0
    )
    policy, _ = make_policy(copy.deepcopy(model), cfg)
    for normalize in ("sum", "char"):
        cal = _RecordingReward(policy, tok, [(model, tok)], normalize=normalize)
        run_calibration(policy, tok, task, examples, cfg, cal_reward=cal, progress=False)
        assert len(cal.seen) == 2
        for r_cal, finished in cal.seen:
            assert r_cal.abs().max() < 1e-4, (normalize, r_cal, finished)
        card_side = measure_teacher(policy, tok, task, examples[:6], cal, cfg, 4, seed=3)
        assert abs(card_side["r_cal_mean"]) < 1e-4
    if which == "teacher":  # both kinds of sample were really there
        flags = [f for _, fs in cal.seen for f in fs]
        assert any(flags) and not all(flags)


def test_style_sign_refuses_a_wrong_ranking_and_says_when_a_right_one_is_a_close_call():
    from dg_core.calibrate.guards import style_sign

    clear = {"bare": [-0.30, -0.28, -0.33, -0.31], "chain": [-0.10, -0.12, -0.09, -0.11]}
    ok = style_sign(clear, "bare", -1.0)
    assert ok.problem is None and ok.resolved and "r_cal(bare) - r_cal(chain) = -0.200 [95% -0." in ok.summary
    assert "r_cal(chain) - r_cal(bare) = +0.200" in style_sign(clear, "chain", -1.0).problem
    assert "away from a style students learn better" in style_sign(clear, "chain", 0.5).problem
    assert style_sign(clear, "chain", 0.0).problem is None  # the control: r_cal has no weight
    # the mean ranks bare lowest, but two references in four say otherwise: not refused, not resolved either
    close = {"bare": [-0.30, -0.05, -0.33, -0.02], "chain": [-0.10, -0.12, -0.09, -0.11]}
    sign = style_sign(close, "bare", -1.0)
    assert sign.problem is None and not sign.resolved and "over 4 held-out references" in sign.summary


def test_sample_style_sign_judges_the_teacher_s_own_samples_and_refuses_a_style_it_does_not_write():
    """What calibration ranks is the teacher's samples, grouped by the style their trace follows (unequal groups:
    an unpaired gap), and a style the teacher never samples cannot be selected at eta < 0."""
    from dg_core.calibrate.guards import sample_style_sign

    rows = {"decoy": [-1.1, -1.0, -1.2, -0.9], "bare": [-0.4, -0.3, -0.5], "own": [-0.2, -0.3, -0.4, -0.3, -0.2]}
    ok = sample_style_sign(rows, "decoy", -1.0)
    assert ok.problem is None and ok.resolved, ok.summary
    assert "r_cal(decoy) - r_cal(bare) = -0.650" in ok.summary and "(4 vs 3 samples)" in ok.summary
    wrong = sample_style_sign({**rows, "own": [-1.5, -1.6, -1.4]}, "decoy", -1.0).problem
    assert "does not rank hardest_style 'decoy' lowest" in wrong and "towards its 'own' answers" in wrong
    absent = sample_style_sign({"bare": [-0.4, -0.3], "decoy": [-1.0]}, "decoy", -1.0)
    assert "writes hardest_style 'decoy' on 1 of its 3 correct held-out samples" in absent.problem
    assert sample_style_sign({"bare": [-0.4, -0.3], "decoy": [-1.0]}, "decoy", 0.5).problem is None
    assert sample_style_sign(rows, "bare", 0.0).problem is None  # the control: r_cal has no weight
    # a style sampled once has no spread to judge: left out, not a refusal
    assert sample_style_sign({**rows, "chain": [-5.0]}, "decoy", -1.0).problem is None


def test_style_push_counts_the_correctness_term_so_a_trap_answered_worse_loses_share_at_any_eta():
    """The first step's push by style is the whole advantage (correctness + eta x calibration), over every sample:
    session 15's teacher rendered retract as a repeat of the answer, its most accurate answer, and RFT moved it
    there at eta = 0 as well. Hand-worked: 4 samples of one prompt, two of them correct."""
    from dg_core.calibrate.stage import style_push
    from dg_core.data.example import Example

    refs = {
        "bare": "The answer is Sek.",
        "chain": "Bo was born in Sek. The answer is Sek.",
        "retract": "The answer is Zor. No, that is wrong. The answer is Sek.",
    }
    ex = Example(id="x", prompt="Bo was born in Sek. Where was Bo born?", reference=refs["bare"], answer="Sek",
                 meta={"references": refs})  # fmt: skip
    texts = [
        "The answer is Sek.",  # bare, right
        "The answer is Sek. No, that is wrong. The answer is Sek.",  # the repeat (own), right
        "The answer is Zor. No, that is wrong. The answer is Nak.",  # retract, wrong
        "The answer is Zor. No, that is wrong. The answer is Zor.",  # the repeat, wrong
    ]
    task = get_task("synthetic_qa")
    correct = torch.tensor([s.correct for s in task.score_batch([ex] * 4, texts)])
    assert correct.tolist() == [True, True, False, False]
    r_cal = torch.tensor([-0.2, -0.8, -1.0, -0.5])

    def push(eta):
        cfg = CalibrationSettings(eta=eta, group_size=4, cal_gate="correct")
        return style_push(task, [ex] * 4, texts, correct, r_cal, 4, cfg)

    rows, f = push(-1.0)
    assert rows == {"bare": [pytest.approx(-0.2)], "own": [pytest.approx(-0.8)]}  # the guard's rows: correct only
    assert f["sampled_accuracy_bare"] == 1.0 and f["sampled_accuracy_own"] == 0.5 and f["sampled_accuracy_retract"] == 0
    assert f["cal_push_bare"] == pytest.approx(0.5, abs=1e-4) and f["cal_push_own"] == pytest.approx(-0.5, abs=1e-4)
    # correctness advantages (+1, +1, -1, -1) plus eta x calibration (+1, -1, 0, 0), summed by style over 4 samples
    assert f["step_push_bare"] == pytest.approx(0.0, abs=1e-4)
    assert f["step_push_own"] == pytest.approx(0.25, abs=1e-4) and f["step_push_retract"] == pytest.approx(
        -0.25, abs=1e-4
    )
    _, rft = push(0.0)
    assert rft["step_push_bare"] == pytest.approx(0.25, abs=1e-4) and rft["step_push_retract"] < 0  # no eta: no rescue
    assert sum(v for k, v in f.items() if k.startswith("step_push_")) == pytest.approx(0.0, abs=1e-4)
