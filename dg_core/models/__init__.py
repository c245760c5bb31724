"""Causal LMs and tokenizers: loading by reference, saving, LoRA, and the offline zoo."""

from dg_core.models.io import load_model, load_tokenizer, model_info
from dg_core.models.lora import adapter_disabled, attach_lora, load_adapter, merge_lora, save_adapter
from dg_core.models.resolve import resolve_model_dir
from dg_core.models.save import save_model
from dg_core.utils import pick_device, pick_dtype

__all__ = [
    "adapter_disabled",
    "attach_lora",
    "load_adapter",
    "load_model",
    "load_tokenizer",
    "merge_lora",
    "model_info",
    "pick_device",
    "pick_dtype",
    "resolve_model_dir",
    "save_adapter",
    "save_model",
]
