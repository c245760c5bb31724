"""Checkpoints restore trainable weights, optimizer and RNG exactly, so a resumed run continues bit-for-bit."""

import torch

from dg_core import store
from dg_core.checkpoint import Checkpointer


def _train(model, opt, steps, start=0, ckpt=None):
    for step in range(start, steps):
        x = torch.randn(8, 4)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ckpt and ckpt.due(step + 1):
            ckpt.save(step + 1, model, opt)
    return model


def test_resume_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1)
    _train(ref, ref_opt, 10)

    uri = f"file://{tmp_path}/ckpt"
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    _train(m, opt, 6, ckpt=Checkpointer(uri, every=3))  # "killed" after step 6; last checkpoint at 6
    assert store.read_manifest(uri)["metadata"]["step"] == 6

    torch.manual_seed(123)  # a fresh process: different init and RNG until resume restores them
    m2 = torch.nn.Linear(4, 1)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.1)
    step, _ = Checkpointer(uri, every=3).resume(m2, opt2)
    assert step == 6
    _train(m2, opt2, 10, start=step)
    assert torch.equal(m2.weight, ref.weight) and torch.equal(m2.bias, ref.bias)


def test_no_checkpoint_means_fresh_start(tmp_path):
    m = torch.nn.Linear(2, 2)
    assert Checkpointer(f"file://{tmp_path}/none", every=5).resume(m) == (0, {})
    assert Checkpointer(None, every=5).resume(m) == (0, {})
