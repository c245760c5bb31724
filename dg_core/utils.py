"""Small shared helpers: seeding, device and dtype choice."""

from __future__ import annotations

import math
import os
import random
import re
from typing import TYPE_CHECKING, Any

from dg_core.errors import DGError

if TYPE_CHECKING:  # torch loads only where a function needs it: `dguard --help` and the CLI stay fast
    import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for code that wants its own stream."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str) -> str:
    """A device setting this machine can honour: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with CUDA present.

    Refused with one line otherwise, rather than failing deep inside torch or silently running on the CPU.
    """
    import torch

    d = str(device).strip().lower()
    if not _DEVICE_RE.match(d):
        raise DGError(f"device {device!r}: expected auto, cpu, cuda or cuda:N (for example cuda:0)")
    if d.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DGError(f"device {device!r}: CUDA is not available on this machine, expected device=cpu or auto")
        if ":" in d and int(d.split(":")[1]) >= n:
            raise DGError(f"device {device!r}: this machine has {n} CUDA device(s), expected cuda:0..cuda:{n - 1}")
    return d


def pick_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU (MPS is not used: its numerics differ for training)."""
    import torch

    if check_device(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


def pick_dtype(device: torch.device | str, dtype: str = "auto") -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere, unless a dtype is named."""
    import torch

    if dtype != "auto":
        try:
            return {
                "float32": torch.float32,
                "fp32": torch.float32,
                "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16,
                "float16": torch.float16,
                "fp16": torch.float16,
            }[dtype]
        except KeyError:
            raise DGError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16") from None
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def env_threads() -> int | None:
    """DG_THREADS as a thread count (None when unset); one line when it is not a whole number >= 1."""
    n = os.environ.get("DG_THREADS", "").strip()
    if not n:
        return None
    if not n.isdigit() or int(n) < 1:
        raise DGError(f"DG_THREADS={n!r}: expected a whole number of threads >= 1 (or unset it)")
    return int(n)


def set_threads_from_env() -> None:
    """Honour DG_THREADS (CPU runs on a shared machine are steadier with a fixed thread count)."""
    import torch

    n = env_threads()
    if n:
        torch.set_num_threads(n)


def integral_ints(spec: Any) -> None:
    """Turn integral floats in a frozen dataclass's ``int`` fields back into ints.

    KFP passes dict parameters through a protobuf Struct, whose only number is a double: a task option written
    ``world_size: 300`` arrives as ``300.0``. Fields typed ``float`` are left as they came (their hash must not move).
    """
    import dataclasses

    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if f.type in (int, "int") and isinstance(v, float) and v.is_integer():
            object.__setattr__(spec, f.name, int(v))


def json_safe(x: Any) -> Any:
    """JSON every parser reads (manifests and cards refuse NaN): NaN/inf -> None, tensor and numpy scalars ->
    Python numbers, tuples -> lists, mapping keys -> str; recursively."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 0) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
