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


def _lin(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Linear(4, 1)
    return m, torch.optim.AdamW(m.parameters(), lr=0.1)


def test_non_finite_state_is_never_checkpointed(tmp_path):
    """NaN/inf weights, optimizer state or loss: no checkpoint is written and the last good one is kept."""
    import pytest

    from dg_core.errors import DGError

    uri = f"file://{tmp_path}/ckpt"
    m, opt = _lin()
    _train(m, opt, 2)
    ck = Checkpointer(uri, every=1)
    ck.save(2, m, opt, loss=0.5)
    with pytest.raises(DGError, match="the loss \\(nan\\) is NaN or infinite, so no checkpoint was written"):
        ck.save(3, m, opt, loss=float("nan"))
    state = opt.state_dict()["state"][0]
    state["exp_avg_sq"].fill_(float("inf"))
    with pytest.raises(DGError, match="optimizer.0.exp_avg_sq is NaN or infinite"):
        ck.save(3, m, opt)
    with torch.no_grad():
        m.weight[0, 1] = float("nan")
    with pytest.raises(DGError, match="weight is NaN or infinite.*lower lr"):
        ck.save(3, m, opt)
    assert store.read_manifest(uri)["metadata"]["step"] == 2  # the good one is still there
    m2, opt2 = _lin(1)
    assert Checkpointer(uri, every=1).resume(m2, opt2)[0] == 2
    assert torch.isfinite(m2.weight).all()


def test_a_poisoned_checkpoint_is_refused_on_resume(tmp_path):
    """A checkpoint full of NaN (what a diverged run wrote before this guard) is not resumed."""
    import pytest
    from safetensors.torch import save_file

    from dg_core.checkpoint import rng_state
    from dg_core.errors import DGError

    m, opt = _lin()
    d = tmp_path / "old"
    d.mkdir()
    save_file({"weight": torch.full((1, 4), float("nan")), "bias": torch.zeros(1)}, str(d / "trainable.safetensors"))
    torch.save({"step": 5, "optimizer": None, "scheduler": None, "rng": rng_state(), "extra": {}}, d / "state.pt")
    uri = f"file://{tmp_path}/ckpt"
    store.publish(d, uri, metadata={"kind": "checkpoint", "step": 5})
    with pytest.raises(DGError, match="holds NaN or infinite weight: rerun with resume=never"):
        Checkpointer(uri, every=1).resume(m, opt)
    assert torch.isfinite(m.weight).all()  # nothing was loaded
    assert Checkpointer(uri, every=1, resume="never").resume(m, opt) == (0, {})


def test_trainer_stops_at_the_first_non_finite_loss_and_never_checkpoints_it(tmp_path):
    import pytest

    from dg_core.distill.trainer import LossOut, TrainSettings, train
    from dg_core.errors import DGError

    m, _ = _lin()

    def loss_fn(model, x):
        return LossOut((model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean(), x.shape[0])

    def poison_after(step):
        def hook(s, loss):
            if s == step:
                with torch.no_grad():
                    m.weight.fill_(float("nan"))

        return hook

    uri = f"file://{tmp_path}/ckpt"
    settings = TrainSettings(steps=6, lr=0.01, checkpoint_uri=uri, checkpoint_every=2, progress=False)
    with pytest.raises(DGError, match="train: loss became nan at step 3"):
        train(m, lambda step, micro: torch.randn(8, 4), loss_fn, settings, on_step=poison_after(3))
    assert store.read_manifest(uri)["metadata"]["step"] == 2  # the last good one
    m, _ = _lin()
    with pytest.raises(DGError, match="weight weight became NaN or infinite by step 6"):
        train(m, lambda step, micro: torch.randn(8, 4), loss_fn, settings, on_step=poison_after(6))
