"""Reward-model scorer: a tiny randomly initialised sequence classifier saved locally, scored in batches."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from dg_core.data import Example, get_task
from dg_core.data.instruction_tasks import RewardModelScorer
from dg_core.errors import DGError
from dg_core.models.zoo import build_tokenizer


def _save_rm(path, num_labels: int = 1) -> None:
    tok = build_tokenizer("char")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
        pad_token_id=tok.pad_token_id,
        max_position_embeddings=256,
    )
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # make the head's output spread, so rewards differ between texts
        model.score.weight.normal_(0, 2.0)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("rm")
    _save_rm(d)
    return d


EXAMPLES = [Example(id=str(i), prompt=p) for i, p in enumerate(["Say hi.", "Name a fruit.", "Write a poem.", "2+2?"])]
RESPONSES = ["hi", "An apple, which is a fruit that grows on trees.", "Roses are red", "4"]


def test_batched_scores_match_unbatched_and_manual_forward(rm_dir):
    one = get_task("open_ended", reward_model=str(rm_dir), batch_size=1)
    many = get_task("dolly", reward_model=str(rm_dir), batch_size=4)
    a = [s.reward for s in one.score_batch(EXAMPLES, RESPONSES)]
    b = [s.reward for s in many.score_batch(EXAMPLES, RESPONSES)]
    assert a == pytest.approx(b, abs=1e-5)  # right padding does not change a row's reward
    assert all(0.0 < r < 1.0 for r in a) and len(set(round(r, 4) for r in a)) > 1
    # the reward is sigmoid of the classifier's logit on "prompt\nresponse"
    model = LlamaForSequenceClassification.from_pretrained(rm_dir)
    tok = build_tokenizer("char")
    ids = tok(f"{EXAMPLES[1].prompt}\n{RESPONSES[1]}", return_tensors="pt")
    with torch.no_grad():
        logit = model(**ids).logits[0, 0].item()
    assert a[1] == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-5)
    assert one.score(EXAMPLES[1], RESPONSES[1]).reward == pytest.approx(a[1], abs=1e-5)


def test_empty_response_scores_zero_and_two_class_head(rm_dir, tmp_path):
    task = get_task("open_ended", reward_model=str(rm_dir))
    s = task.score_batch(EXAMPLES[:2], ["", "   "])
    assert [x.reward for x in s] == [0.0, 0.0] and s[0].reason == "empty response"
    _save_rm(tmp_path, num_labels=2)
    scorer = RewardModelScorer(str(tmp_path), batch_size=3, center=0.5, scale=2.0)
    logits = scorer.logits([e.prompt for e in EXAMPLES], RESPONSES)
    rewards = scorer.rewards([e.prompt for e in EXAMPLES], RESPONSES)
    assert rewards == pytest.approx([1 / (1 + math.exp(-(x - 0.5) / 2.0)) for x in logits])


def test_reward_model_errors(tmp_path):
    with pytest.raises(DGError, match="reward_model"):
        get_task("open_ended").score(EXAMPLES[0], "hi")
    with pytest.raises(DGError, match="unknown option"):
        get_task("open_ended", model="x")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DGError, match="reward model"):
        get_task("open_ended", reward_model=str(tmp_path)).score(EXAMPLES[0], "hi")
    with pytest.raises(DGError, match="batch_size"):
        RewardModelScorer(str(tmp_path), batch_size=0)
