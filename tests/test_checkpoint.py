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

    from dg_core.distill.trainer import LossOut, train
    from dg_core.distill.training import TrainingConfig
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
    settings = TrainingConfig(steps=6, lr=0.01, checkpoint_every=2)
    kw = {"checkpoint_uri": uri, "progress": False}
    with pytest.raises(DGError, match="train: loss became nan at step 3"):
        train(m, lambda step, micro: torch.randn(8, 4), loss_fn, settings, on_step=poison_after(3), **kw)
    assert store.read_manifest(uri)["metadata"]["step"] == 2  # the last good one
    m, _ = _lin()
    with pytest.raises(DGError, match="weight weight became NaN or infinite by step 6"):
        train(m, lambda step, micro: torch.randn(8, 4), loss_fn, settings, on_step=poison_after(6), **kw)


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    import pytest

    from dg_core.errors import DGError

    uri = f"file://{tmp_path}/ckpt"
    m, opt = _lin()
    _train(m, opt, 3, ckpt=Checkpointer(uri, every=3, config_hash="a" * 64))
    assert store.read_manifest(uri)["metadata"]["config_sha256"] == "a" * 64
    m2, opt2 = _lin(1)
    with pytest.raises(DGError, match=r"\(step 3\) was written by a different config: rerun with resume=never"):
        Checkpointer(uri, every=3, config_hash="b" * 64).resume(m2, opt2)
    assert not torch.equal(m2.weight, m.weight)  # nothing was loaded
    assert Checkpointer(uri, every=3, config_hash="a" * 64).resume(m2, opt2)[0] == 3
    assert torch.equal(m2.weight, m.weight)
    assert Checkpointer(uri, every=3, config_hash="b" * 64, resume="never").resume(m2, opt2) == (0, {})
    unhashed = f"file://{tmp_path}/old"
    Checkpointer(unhashed, every=1).save(1, m, opt)
    with pytest.raises(DGError, match="written by a run that recorded no config"):
        Checkpointer(unhashed, every=1, config_hash="b" * 64).resume(m2, opt2)


def test_config_hash_ignores_only_fields_that_cannot_change_the_result():
    from dg_core.checkpoint import NON_RESULT_FIELDS, config_hash
    from dg_core.config import from_dict
    from dg_core.distill import train_stage

    base = {"dataset": "file:///d", "lr": 2e-3, "seed": 3}
    h = config_hash(from_dict(train_stage.Config, base))
    same = {"output": "file:///elsewhere", "checkpoint_every": 7, "device": "cpu", "resume": "never"}
    assert set(same) <= NON_RESULT_FIELDS
    assert config_hash(from_dict(train_stage.Config, {**base, **same})) == h
    for change in ({"lr": 0.01}, {"seed": 99}, {"batch_size": 16}, {"steps": 5}, {"model": "zoo:student-gpt2"}):
        assert config_hash(from_dict(train_stage.Config, {**base, **change})) != h, change


def test_train_stage_refuses_to_resume_another_configs_checkpoint(tmp_path, monkeypatch):
    """The repro of issue 11 item 4: kill `train seed=3 lr=2e-3`, rerun with lr=0.01 seed=99 batch_size=16 and the
    same output: refused, with how to start fresh; resume=never starts fresh; the same config still resumes."""
    import pytest

    from dg_core.config import from_dict
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl
    from dg_core.distill import train_stage
    from dg_core.errors import DGError

    torch.set_num_threads(1)
    monkeypatch.setenv("DG_STORE_ROOT", f"file://{tmp_path}/store")
    d = tmp_path / "ds"
    d.mkdir()
    write_jsonl(d / "train.jsonl", get_task("synthetic_math", a_digits=1, b_digits=1, terms=0).generate(16, seed=0))
    spec = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0).spec()
    write_manifest(d, {"task": spec, "splits": {"train": {"file": "train.jsonl"}}})
    out = f"file://{tmp_path}/store/run"
    base = {"model": "zoo:student-llama", "dataset": str(d), "steps": 4, "batch_size": 8, "warmup_steps": 0}
    base |= {"checkpoint_every": 2, "output": out, "device": "cpu"}

    class Killed(RuntimeError):
        pass

    def kill_at_3(step, loss):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train_stage.run(from_dict(train_stage.Config, {**base, "seed": 3, "lr": 2e-3}), on_step=kill_at_3)
    other = {**base, "seed": 99, "lr": 0.01, "batch_size": 16}
    with pytest.raises(DGError, match="written by a different config: rerun with resume=never .* another output="):
        train_stage.run(from_dict(train_stage.Config, other))
    assert not store.is_published(out)
    fresh = train_stage.run(from_dict(train_stage.Config, {**other, "resume": "never"}))
    assert fresh["resumed_from"] == 0 and store.is_published(out)
    with pytest.raises(DGError, match="different config"):  # now the other way round
        train_stage.run(from_dict(train_stage.Config, {**base, "seed": 3, "lr": 2e-3}))
    first = {**base, "seed": 3, "lr": 2e-3, "resume": "never"}
    with pytest.raises(Killed):  # the original config afresh, killed again, then resumed with a new checkpoint_every
        train_stage.run(from_dict(train_stage.Config, first), on_step=kill_at_3)
    again = train_stage.run(from_dict(train_stage.Config, {**base, "seed": 3, "lr": 2e-3, "checkpoint_every": 3}))
    assert again["resumed_from"] == 2
