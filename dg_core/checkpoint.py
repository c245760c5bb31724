"""Resumable training state in the store: trainable weights, optimizer, scheduler, RNG streams and step.

Every long stage (train, distill, calibrate) saves through :class:`Checkpointer`, so a killed pod restarts
where it stopped. A checkpoint is an ordinary published artifact (manifest last), so a crash while saving
leaves the previous checkpoint unreadable-as-new rather than half-new: readers only trust a full manifest.
"""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dg_core import store

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (the LoRA adapter under peft, every weight under full fine-tuning)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


class Checkpointer:
    """Save every `every` steps to `uri` and resume from it. `uri=None` or `every<=0` disables checkpoints."""

    def __init__(self, uri: str | None, every: int):
        self.uri = uri or None
        self.every = every

    @property
    def enabled(self) -> bool:
        return bool(self.uri) and self.every > 0

    def due(self, step: int) -> bool:
        return self.enabled and step > 0 and step % self.every == 0

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not self.enabled:
            return
        with tempfile.TemporaryDirectory(prefix="dg-ckpt-") as tmp:
            save_file(trainable_state(model), str(Path(tmp) / "trainable.safetensors"))
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer.state_dict() if optimizer else None,
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "rng": rng_state(),
                    "extra": extra or {},
                },
                Path(tmp) / "state.pt",
            )
            store.publish(tmp, self.uri, metadata={"kind": "checkpoint", "step": step})
        log.info("checkpoint at step %d -> %s", step, self.uri)

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[int, dict[str, Any]]:
        """Load the last checkpoint into the objects given; return (step, extra), or (0, {}) when none exists."""
        if not self.enabled or not store.is_published(self.uri):
            return 0, {}
        d = store.fetch(self.uri)
        weights = load_file(str(d / "trainable.safetensors"))
        missing = set(trainable_state(model)) - set(weights)
        if missing:
            from dg_core.errors import DGError

            raise DGError(f"checkpoint {self.uri} does not match the model: missing {sorted(missing)[0]}")
        model.load_state_dict(weights, strict=False)
        state = torch.load(d / "state.pt", weights_only=True, map_location="cpu")
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", self.uri, state["step"])
        return int(state["step"]), state["extra"]
