"""Trap measures and student symptoms on planted traps: controlled bigram models flag, clean pairs do not."""

from __future__ import annotations

import pytest
import torch
from traps_helpers import bigram_llama

from dg_core.data import get_task
from dg_core.data.example import Example
from dg_core.errors import DGError
from dg_core.models.zoo import build_tokenizer
from dg_core.traps import measures, symptoms

ANSWER = {"\n": "#", "#": "4", "4": "</s>"}  # every prompt ends in "\n": the model answers "#4"


@pytest.fixture(scope="module")
def char_tok():
    return build_tokenizer("char")


@pytest.fixture(scope="module")
def unigram_tok():
    return build_tokenizer("unigram")


def _examples(n=4, answer="4", reference=None):
    return [
        Example(id=str(i), prompt=f"{i}+{4 - i}", reference=reference or f"#{answer}", answer=answer) for i in range(n)
    ]


def test_shared_vocab_identical_and_across_tokenizers(char_tok, unigram_tok, tmp_path):
    same = measures.shared_vocab(char_tok, char_tok)
    assert same.identical and same.size == len(char_tok) - 3  # all but the specials, plus EOS
    assert same.strings[-1] == measures.EOS and same.teacher_ids[-1] == char_tok.eos_token_id
    assert torch.equal(same.teacher_ids, same.student_ids)
    cross = measures.shared_vocab(char_tok, unigram_tok)
    assert not cross.identical and 0 < cross.size < len(unigram_tok)
    strings = measures.token_strings(unigram_tok)
    for s, t, u in zip(cross.strings[:-1], cross.teacher_ids.tolist(), cross.student_ids.tolist()):
        assert char_tok.convert_ids_to_tokens(t) == s and strings[u] == s
    assert " " in cross.strings  # the metaspace marker maps to a real space
    bpe = build_tokenizer("bpe")
    bpe_strings = measures.token_strings(bpe)
    assert bpe_strings[bpe.convert_tokens_to_ids("Ġ#")] == " #"  # byte-level marker decoded


def test_project_keeps_mass_in_bucket():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    lp = measures.project(logits, torch.tensor([3, 1]))
    p = torch.softmax(logits, -1)[0]
    torch.testing.assert_close(lp.exp()[0], torch.stack([p[3], p[1], p[0] + p[2]]))


def _table(teacher, student, tok_t, tok_s, prompts, responses, class_texts=("#4",)):
    shared = measures.shared_vocab(tok_t, tok_s)
    cls = measures.frequent_class(shared, list(class_texts), tok_t, n_frequent=2)
    return measures.compare_positions(
        teacher, tok_t, student, tok_s, prompts, responses, shared, token_class=cls, batch_size=3
    )


def test_compare_positions_matches_direct_kl_with_one_tokenizer(char_tok):
    t = bigram_llama(char_tok, ANSWER, tail=-2.0, noise=0.5, seed=1)
    s = bigram_llama(char_tok, ANSWER, tail=-3.0, noise=0.5, seed=2)
    table = _table(t, s, char_tok, char_tok, ["1+3\n", "2+2\n"], ["#4", "#44"])
    assert table.n == 7 and table.prefix.tolist() == [0, 1, 2, 0, 1, 2, 3]  # the EOS position included
    assert table.t_prefix.tolist() == [0, 1, 2, 0, 1, 2, 3]
    ids = torch.tensor([char_tok(x)["input_ids"] for x in ["2+2\n#44"]])
    with torch.no_grad():
        lt, ls = t(input_ids=ids).logits[0], s(input_ids=ids).logits[0]
    keep = torch.tensor([i for i in range(len(char_tok)) if i not in (0, 1, 3)])  # specials other than EOS
    direct = torch.stack([measures.kl.forward_kl(lt[i, keep], ls[i, keep]) for i in (3, 4, 5, 6)])
    torch.testing.assert_close(table.forward[3:], direct, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(table.ht_forward.full, table.forward)


def test_compare_positions_across_tokenizers_uses_common_starts(char_tok, unigram_tok):
    t = bigram_llama(char_tok, ANSWER)
    s = bigram_llama(unigram_tok, {})
    table = _table(t, s, char_tok, unigram_tok, ["1+3\n"], [" 12 #4"])
    starts = [
        a
        for a, b in unigram_tok(" 12 #4", add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if b > a
    ]
    assert table.prefix.tolist() == sorted(set(starts)) + [6]  # char tokens start everywhere; unigram decides
    assert table.t_prefix.tolist() == list(range(7))
    assert torch.isfinite(table.forward).all() and (table.forward >= -1e-6).all()


def test_planted_tail_noise_is_flagged_and_clean_teacher_is_not(char_tok):
    student = bigram_llama(char_tok, ANSWER, peak=12.0, tail=-4.0, noise=0.3, seed=3)
    prompts, responses = ["1+3\n", "2+2\n", "0+4\n"], ["#4"] * 3
    noisy = bigram_llama(char_tok, ANSWER, peak=4.0, tail=0.0, noise=0.3, seed=4)
    clean = bigram_llama(char_tok, ANSWER, peak=12.0, tail=-4.0, noise=0.3, seed=5)
    r_noisy = measures.tail_noise(_table(noisy, student, char_tok, char_tok, prompts, responses))
    r_clean = measures.tail_noise(_table(clean, student, char_tok, char_tok, prompts, responses))
    assert r_noisy["flag"] and not r_clean["flag"], (r_noisy["why"], r_clean["why"])
    assert r_noisy["teacher_tail_mass"]["5"] > 0.5 > 0.01 > r_clean["teacher_tail_mass"]["5"]
    share = {r["k"]: r["tail_share"] for r in r_noisy["forward"]["per_k"]}
    assert share[1] > share[20] > share["full"] == pytest.approx(0.0, abs=1e-5)
    assert r_noisy["forward"]["class_share"] is not None


def test_planted_off_policy_instability(char_tok):
    teacher = bigram_llama(char_tok, ANSWER)
    prompts = ["1+3\n", "2+2\n"]
    t_samples = ["#4", "#4"]

    def report(student_answer):
        student_samples = [f"#{student_answer}"] * 2
        s = bigram_llama(char_tok, {"\n": "#", "#": student_answer, student_answer: "</s>"})
        on_t = _table(teacher, s, char_tok, char_tok, prompts, t_samples)
        on_s = _table(teacher, s, char_tok, char_tok, prompts, student_samples)
        return measures.off_policy(on_t, on_s, n_bins=2)

    bad, good = report("7"), report("4")
    assert bad["flag"] and not good["flag"], (bad["why"], good["why"])
    assert bad["entropy_increase"] > 1.0 and good["entropy_increase"] == pytest.approx(0.0, abs=1e-4)
    assert len(bad["student_prefixes"]["teacher_entropy_by_prefix"]) == 2


def test_gap_estimates(char_tok, unigram_tok):
    teacher = bigram_llama(char_tok, ANSWER)
    same = measures.gap(
        teacher,
        char_tok,
        teacher,
        char_tok,
        (["1+3\n"], ["#4"]),
        (["1+3\n"], ["#4"]),
        teacher_accuracy=1.0,
        student_accuracy=1.0,
    )
    assert same["seq_loglik_gap_per_char"] == pytest.approx(0.0, abs=1e-5)
    assert same["aligned_reverse_kl_per_span"] == pytest.approx(0.0, abs=1e-5) and not same["flag"]
    student = bigram_llama(unigram_tok, {})
    far = measures.gap(
        teacher,
        char_tok,
        student,
        unigram_tok,
        (["1+3\n"] * 2, ["#4", "#4"]),
        (["1+3\n"], ["12"]),
        teacher_accuracy=1.0,
        student_accuracy=0.0,
    )
    assert far["flag"] and far["accuracy_gap"] == 1.0
    assert far["seq_loglik_gap_per_char"] > 1.0 and far["n_aligned_spans"] >= 1


# ----------------------------------------------------------------------------------------------- symptoms
def test_loop_and_degradation_measures():
    assert symptoms.loop_period("answer #1#1#1#1#1") == 2
    assert symptoms.loop_period("aaaaaaaaa") == 1
    assert symptoms.loop_period("30*9=270 3*9=27 #297") is None
    assert symptoms.loop_period("#1#1") is None  # too short to call a loop
    d = symptoms.degradation(["#1#1#1#1#1#1", "#4"], [False, True])
    assert d["loop_rate"] == 0.5 and d["truncation_rate"] == 0.5
    assert symptoms.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert symptoms.repeated_ngram_rate("abcabc", 3) == pytest.approx(1 / 4)  # abc bca cab [abc]
    with pytest.raises(DGError, match="finished flags"):
        symptoms.degradation(["a"], [True, False])


def test_ece_and_reliability_against_hand_computation():
    conf = [0.95, 0.95, 0.15, 0.55]
    correct = [True, False, False, True]
    r = symptoms.reliability(conf, correct, n_bins=10)
    assert r["count"] == [1, 1, 2] and r["accuracy"] == [0.0, 1.0, 0.5]
    assert symptoms.ece(conf, correct, 10) == pytest.approx((0.15 + 0.45 + 2 * 0.45) / 4)


def test_corruptions():
    assert symptoms.inject_wrong_step("30*9=270 3*9=27 #297") == ("30*9=270", "30*9=271")
    assert symptoms.inject_wrong_step("#297") is None
    assert symptoms.corrupt_answer("1+1=2 #2", "2") == "1+1=2 #3"
    assert symptoms.corrupt_answer("so (B)", "B") == "so (C)"
    assert symptoms.corrupt_answer("hello", "world") is None


def test_planted_looping_student_degrades_and_clean_does_not(char_tok):
    task = get_task("synthetic_math")
    ex = _examples()
    looping = bigram_llama(char_tok, {"\n": "#", "#": "1", "1": "#"})
    clean = bigram_llama(char_tok, ANSWER)
    a_loop = symptoms.answer(looping, char_tok, task, ex, max_new_tokens=16, batch_size=4)
    a_clean = symptoms.answer(clean, char_tok, task, ex, max_new_tokens=16, batch_size=4)
    d_loop, d_clean = (
        symptoms.degradation(a_loop.texts, a_loop.finished),
        symptoms.degradation(a_clean.texts, a_clean.finished),
    )
    assert d_loop["loop_rate"] == 1.0 and d_loop["truncation_rate"] == 1.0
    assert d_clean["loop_rate"] == 0.0 and d_clean["truncation_rate"] == 0.0
    assert a_clean.correct == [True] * 4 and a_loop.correct == [False] * 4


def test_overconfidence_of_a_sure_and_wrong_student(char_tok):
    task = get_task("synthetic_math")
    ex = _examples()
    sure_wrong = bigram_llama(char_tok, {"\n": "#", "#": "5", "5": "</s>"}, peak=16.0)
    right = bigram_llama(char_tok, ANSWER, peak=16.0)
    for model, want_ece in ((sure_wrong, 1.0), (right, 0.0)):
        greedy = symptoms.answer(model, char_tok, task, ex, max_new_tokens=8, batch_size=4)
        for method in ("consistency", "token"):
            r = symptoms.overconfidence(
                model, char_tok, task, ex, greedy, method=method, n_samples=3, max_new_tokens=8, batch_size=8
            )
            assert r["ece"] == pytest.approx(want_ece, abs=0.02), method
            assert r["overconfident_wrong_rate"] == (1.0 if want_ece else 0.0)
            assert sum(r["reliability"]["count"]) == 4


def test_self_correction_collapse_vs_recovery(char_tok):
    task = get_task("synthetic_math")
    ex = [Example(id="a", prompt="2*3+3", reference="2*3=6 6+3=9 #9", answer="9")]
    base = {"6": " ", " ": "#", "#": "9", "9": "</s>"}
    collapses = bigram_llama(char_tok, {**base, "7": "</s>"})
    recovers = bigram_llama(char_tok, {**base, "7": " "})
    c = symptoms.self_correction(collapses, char_tok, task, ex, max_new_tokens=8)
    r = symptoms.self_correction(recovers, char_tok, task, ex, max_new_tokens=8)
    assert c["n"] == r["n"] == 1
    assert c["clean_rate"] == r["clean_rate"] == 1.0
    assert c["recovery_rate"] == 0.0 and r["recovery_rate"] == 1.0
    none = symptoms.self_correction(collapses, char_tok, task, _examples(), max_new_tokens=8)
    assert none["n"] == 0 and none["recovery_rate"] is None


def test_wrong_trace_preference(char_tok, unigram_tok):
    task = get_task("synthetic_math")
    ex = _examples()
    prefers_wrong = bigram_llama(char_tok, {"\n": "#", "#": "5", "5": "</s>"})
    prefers_right = bigram_llama(char_tok, ANSWER)
    w = symptoms.wrong_trace_preference(prefers_wrong, char_tok, task, ex)
    r = symptoms.wrong_trace_preference(prefers_right, char_tok, task, ex)
    assert w["n_pairs"] == r["n_pairs"] == 4
    assert w["prefers_wrong"] == 1.0 and w["margin_per_char"] > 1.0
    assert r["prefers_wrong"] == 0.0 and r["margin_per_char"] < -1.0
