"""Small shared helpers: seeding, device and dtype choice."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU (MPS is not used: its numerics differ for training)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device: torch.device | str, dtype: str = "auto") -> torch.dtype:
    """bf16 on CUDA, fp32 elsewhere, unless a dtype is named."""
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
            from dg_core.errors import DGError

            raise DGError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16") from None
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def set_threads_from_env() -> None:
    """Honour DG_THREADS (CPU runs on a shared machine are steadier with a fixed thread count)."""
    n = os.environ.get("DG_THREADS")
    if n:
        torch.set_num_threads(int(n))
