"""Resumable training state in the store: trainable weights, optimizer, scheduler, RNG streams and step.

Every long stage (train, distill, calibrate) saves through :class:`Checkpointer`, so a killed pod restarts
where it stopped. A checkpoint is an ordinary published artifact (manifest last), so a crash while saving
leaves the previous checkpoint unreadable-as-new rather than half-new: readers only trust a full manifest.

Two rules keep a resume honest:

- **Only finite state is saved or resumed.** A step whose weights, optimizer state or loss hold NaN or
  infinity is never checkpointed (the last good checkpoint stays), and a checkpoint holding them is refused.
- **Only the config that wrote a checkpoint resumes it.** Each checkpoint records :func:`config_hash` of the
  stage config; a different one is refused with a line saying how to start fresh (``resume=never``, or another
  ``output=``). Fields that cannot change the result (:data:`NON_RESULT_FIELDS`: where things go, how often to
  checkpoint, logging and progress, the device) do not count, so a pod restarted on another device resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dg_core import store
from dg_core.config import addressed, option
from dg_core.errors import DGError

log = logging.getLogger(__name__)

RESUME_MODES = ("auto", "never")

# Config fields that do not change what a run computes (where it writes, how often it checkpoints, what it
# prints, which device runs it): a checkpoint resumes across changes to them.
NON_RESULT_FIELDS = frozenset(
    {"output", "checkpoint_every", "resume", "progress", "log_every", "run_id", "device", "metrics", "allow_zoo"}
)


def resume_option() -> object:
    """The ``resume`` field every checkpointing stage declares (one definition, one help text)."""
    return option(
        "auto",
        "auto: resume this output's checkpoint when the same config wrote it (refused otherwise); "
        "never: ignore any checkpoint and start from step 0 (it is overwritten at the next save).",
        choices=RESUME_MODES,
    )


def config_hash(config: Any) -> str:
    """sha256 of a stage config (a dataclass or mapping) without :data:`NON_RESULT_FIELDS`."""
    import dataclasses

    data = addressed(config) if dataclasses.is_dataclass(config) else dict(config)
    body = {k: v for k, v in data.items() if k not in NON_RESULT_FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def first_nonfinite(tensors: Mapping[str, Any]) -> str | None:
    """The name of the first tensor (nested mappings and lists searched) holding NaN or infinity, else None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return str(name)
        elif isinstance(t, float) and not math.isfinite(t):
            return str(name)
        elif isinstance(t, Mapping):
            inner = first_nonfinite(t)
            if inner is not None:
                return f"{name}.{inner}"
        elif isinstance(t, (list, tuple)):
            inner = first_nonfinite({str(i): v for i, v in enumerate(t)})
            if inner is not None:
                return f"{name}[{inner}]"
    return None


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
    """Save every `every` steps to `uri` and resume from it. `uri=None` or `every<=0` disables checkpoints.

    ``config_hash`` (of the stage config, :func:`config_hash`) is recorded with every save and must match on
    resume; ``resume="never"`` ignores an existing checkpoint.
    """

    def __init__(self, uri: str | None, every: int, *, config_hash: str = "", resume: str = "auto"):
        if resume not in RESUME_MODES:
            raise DGError(f"resume={resume!r}: expected one of {list(RESUME_MODES)}")
        self.uri = uri or None
        self.every = every
        self.config_hash = config_hash
        self.resume_mode = resume

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
        loss: float | None = None,
    ) -> None:
        """Save step ``step``; refuses (DGError, nothing written, the last good checkpoint kept) when the weights,
        the optimizer state or ``loss`` are not finite: a diverged run must not leave state a rerun resumes."""
        if not self.enabled:
            return
        weights = trainable_state(model)
        opt_state = optimizer.state_dict() if optimizer else None
        bad = first_nonfinite(weights) or (first_nonfinite({"optimizer": opt_state["state"]}) if opt_state else None)
        if bad is None and loss is not None and not math.isfinite(loss):
            bad = f"the loss ({loss})"
        if bad is not None:
            raise DGError(
                f"step {step}: {bad} is NaN or infinite, so no checkpoint was written to {self.uri} (the run "
                "diverged; lower lr, or check the data); the last good checkpoint, if any, is kept"
            )
        metadata = {"kind": "checkpoint", "step": step}
        if self.config_hash:
            metadata["config_sha256"] = self.config_hash
        with tempfile.TemporaryDirectory(prefix="dg-ckpt-") as tmp:
            save_file(weights, str(Path(tmp) / "trainable.safetensors"))
            torch.save(
                {
                    "step": step,
                    "optimizer": opt_state,
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "rng": rng_state(),
                    "extra": extra or {},
                },
                Path(tmp) / "state.pt",
            )
            store.publish(tmp, self.uri, metadata=metadata)
        log.info("checkpoint at step %d -> %s", step, self.uri)

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
    ) -> tuple[int, dict[str, Any]]:
        """Load the last checkpoint into the objects given; return (step, extra), or (0, {}) when none exists.

        Refused (one line, nothing loaded) when another config wrote it or it holds non-finite state.
        """
        if not self.enabled or not store.is_published(self.uri):
            return 0, {}
        fresh = "rerun with resume=never to start from step 0 (it is overwritten), or give another output="
        if self.resume_mode == "never":
            log.info("resume=never: ignoring the checkpoint at %s, starting from step 0", self.uri)
            return 0, {}
        meta = store.read_manifest(self.uri).get("metadata", {})
        if self.config_hash and meta.get("config_sha256") != self.config_hash:
            why = "a different config" if meta.get("config_sha256") else "a run that recorded no config"
            raise DGError(f"checkpoint {self.uri} (step {meta.get('step')}) was written by {why}: {fresh}")
        d = store.fetch(self.uri)
        weights = load_file(str(d / "trainable.safetensors"))
        missing = set(trainable_state(model)) - set(weights)
        if missing:
            raise DGError(f"checkpoint {self.uri} does not match the model: missing {sorted(missing)[0]}")
        state = torch.load(d / "state.pt", weights_only=True, map_location="cpu")
        bad = first_nonfinite(weights) or first_nonfinite({"optimizer": (state["optimizer"] or {}).get("state", {})})
        if bad is not None:
            raise DGError(f"checkpoint {self.uri} (step {state['step']}) holds NaN or infinite {bad}: {fresh}")
        model.load_state_dict(weights, strict=False)
        if optimizer is not None and state["optimizer"] is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", self.uri, state["step"])
        return int(state["step"]), state["extra"]


class ShardedCheckpointer:
    """Checkpoints of a multi-process run: accelerate's ``save_state``/``load_state`` per rank, in the store.

    Layout under the run's checkpoint URI: ``slot-<s>/rank-<r>`` (what ``save_state`` wrote on rank ``r``: the
    model and optimizer from rank 0 under DDP, each rank's shard under FSDP, every rank's RNG streams) and
    ``index`` (published by rank 0 once every rank has published its part). Saves alternate between two slots
    and ``index`` names the last complete one, so a rank killed mid-save leaves the previous checkpoint whole;
    a rerun resumes from what ``index`` names, refusing another config or another number of processes.
    """

    def __init__(
        self, accelerator: Any, uri: str | None, every: int, *, config_hash: str = "", resume: str = "auto"
    ) -> None:
        if resume not in RESUME_MODES:
            raise DGError(f"resume={resume!r}: expected one of {list(RESUME_MODES)}")
        self.acc, self.uri, self.every = accelerator, uri or None, every
        self.config_hash, self.resume_mode = config_hash, resume

    @property
    def enabled(self) -> bool:
        return bool(self.uri) and self.every > 0

    def due(self, step: int) -> bool:
        return self.enabled and step > 0 and step % self.every == 0

    def _index(self) -> str:
        return store.join(self.uri, "index")

    def _part(self, slot: int, rank: int) -> str:
        return store.join(self.uri, f"slot-{slot}", f"rank-{rank}")

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Every rank calls this at the same step (it holds barriers)."""
        if not self.enabled:
            return
        acc, slot = self.acc, (step // self.every) % 2
        with tempfile.TemporaryDirectory(prefix="dg-ckpt-") as tmp:
            acc.save_state(tmp, safe_serialization=False)
            if acc.is_main_process:
                (Path(tmp) / "extra.json").write_text(json.dumps(extra or {}))
            store.publish(tmp, self._part(slot, acc.process_index), metadata={"kind": "checkpoint-part", "step": step})
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"kind": "checkpoint", "step": step, "slot": slot, "world": acc.num_processes}
            if self.config_hash:
                meta["config_sha256"] = self.config_hash
            with tempfile.TemporaryDirectory(prefix="dg-ckpt-") as tmp:
                (Path(tmp) / "index.json").write_text(json.dumps(meta))
                store.publish(tmp, self._index(), metadata=meta)
            log.info("checkpoint at step %d (%d processes) -> %s", step, acc.num_processes, self.uri)
        acc.wait_for_everyone()

    def refuse_other_world(self) -> None:
        """A checkpoint written by another number of processes is refused, not silently restarted over."""
        if not self.enabled or self.resume_mode == "never":
            return
        n = self.acc.num_processes
        if n > 1 and store.is_published(self.uri):
            written = 1
        elif n == 1 and store.is_published(self._index()):
            written = int(store.read_manifest(self._index()).get("metadata", {}).get("world", 0))
        else:
            return
        raise DGError(
            f"checkpoint {self.uri} was written by {written} process{'es' if written > 1 else ''}, this run has {n}: "
            "expected the same number of processes, or rerun with resume=never to start from step 0, "
            "or give another output="
        )

    def resume(self) -> tuple[int, dict[str, Any]]:
        """Load the last complete checkpoint into the accelerator's objects; (step, extra), or (0, {})."""
        self.refuse_other_world()
        if not self.enabled or not store.is_published(self._index()):
            return 0, {}
        fresh = "rerun with resume=never to start from step 0 (it is overwritten), or give another output="
        if self.resume_mode == "never":
            log.info("resume=never: ignoring the checkpoint at %s, starting from step 0", self.uri)
            return 0, {}
        meta = store.read_manifest(self._index()).get("metadata", {})
        if self.config_hash and meta.get("config_sha256") != self.config_hash:
            why = "a different config" if meta.get("config_sha256") else "a run that recorded no config"
            raise DGError(f"checkpoint {self.uri} (step {meta.get('step')}) was written by {why}: {fresh}")
        world, acc = int(meta["world"]), self.acc
        if world != acc.num_processes:
            raise DGError(
                f"checkpoint {self.uri} (step {meta['step']}) was written by {world} processes, this run has "
                f"{acc.num_processes}: expected the same number of processes, or {fresh}"
            )
        step, slot = int(meta["step"]), int(meta["slot"])
        with tempfile.TemporaryDirectory(prefix="dg-resume-") as tmp:
            for r in range(world):
                part = self._part(slot, r)
                got = store.read_manifest(part).get("metadata", {}).get("step") if store.is_published(part) else None
                if got != step:
                    raise DGError(f"checkpoint {self.uri}: rank {r}'s part is at step {got}, expected {step}: {fresh}")
                src = store.fetch(part)
                for f in src.iterdir():
                    if f.name != store.MANIFEST and not (Path(tmp) / f.name).exists():
                        os.symlink(f, Path(tmp) / f.name)
            acc.load_state(tmp)
            extra = json.loads((Path(tmp) / "extra.json").read_text())
        acc.wait_for_everyone()
        log.info("resumed from %s at step %d (%d processes)", self.uri, step, world)
        return step, extra
