"""Load causal LMs and tokenizers by reference (saving: ``dg_core.models.save``): store URI, local dir, `zoo:<name>` or hub id.

Safetensors only, and `trust_remote_code` stays off unless the caller turns it on: a model release is
untrusted input.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dg_core.errors import DGError
from dg_core.models.resolve import resolve_model_dir
from dg_core.utils import pick_device, pick_dtype

log = logging.getLogger(__name__)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _check_config(d: Path, trust_remote_code: bool) -> None:
    """config.json must be a JSON mapping naming a model_type transformers knows, without custom code."""
    from transformers import CONFIG_MAPPING

    where = f"model directory {str(d)!r}"
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = "empty" if not (d / "config.json").read_bytes().strip() else f"not valid JSON ({type(e).__name__})"
        raise DGError(f"{where}: config.json is {why}, expected the model's Hugging Face config") from None
    if not isinstance(cfg, dict):
        raise DGError(f"{where}: config.json holds {type(cfg).__name__}, expected a JSON object")
    if cfg.get("auto_map") and not trust_remote_code:
        raise DGError(
            f"{where}: config.json names custom code (auto_map), which is never run here (trust_remote_code is off); "
            "expected a model of an architecture transformers ships"
        )
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or (model_type not in CONFIG_MAPPING and not trust_remote_code):
        raise DGError(
            f"{where}: config.json model_type {model_type!r} is not one transformers knows "
            "(expected e.g. llama, qwen2, gpt2)"
        )


def _check_safetensors(p: Path) -> None:
    """A safetensors file whose header parses and whose tensors all lie inside the file (no truncation)."""
    where = f"model weights {str(p)!r}"
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if n < 2 or 8 + n > size:
                raise ValueError("header length past the end of the file")
            header = json.loads(f.read(n))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError):
        raise DGError(f"{where}: not a readable safetensors file (truncated or corrupted, {size} bytes)") from None
    if 8 + n + max(ends, default=0) > size:
        raise DGError(f"{where}: truncated ({size} bytes, its header needs {8 + n + max(ends)})")


def _check_weights(d: Path, trust_remote_code: bool = False) -> None:
    if not (d / "config.json").is_file():
        raise DGError(f"model directory {str(d)!r} has no config.json: expected a saved Hugging Face model")
    _check_config(d, trust_remote_code)
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in d.glob("*.bin")] + [p.name for p in d.glob("*.pt")]
        hint = f" (found {pickles[0]}; pickled weights are refused)" if pickles else ""
        raise DGError(f"model directory {str(d)!r} has no .safetensors weights{hint}")
    for p in weights:
        _check_safetensors(p)


def _check_tokenizer(d: Path) -> None:
    if not any((d / name).is_file() for name in TOKENIZER_FILES):
        raise DGError(
            f"model directory {str(d)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): "
            "expected the tokenizer saved beside the model"
        )


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    d = resolve_model_dir(ref)
    _check_tokenizer(d)
    try:
        tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DGError(f"tokenizer of {ref!r}: cannot load ({type(e).__name__}: {_first_line(e)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    ref: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) in eval mode on the chosen device; bf16 on CUDA unless told otherwise."""
    d = resolve_model_dir(ref)
    _check_weights(d, trust_remote_code)
    _check_tokenizer(d)
    dev = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(d), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=pick_dtype(dev, dtype)
        ).to(dev)
    except (OSError, ValueError, KeyError) as e:  # what transformers raises for a config or weights it rejects
        raise DGError(f"model {ref!r}: cannot load ({type(e).__name__}: {_first_line(e)})") from None
    model.eval()
    tok = load_tokenizer(str(d), trust_remote_code=trust_remote_code)
    return model, tok


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def model_info(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {
        "architecture": (getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
