"""Stage ``zoo``: build the offline tiny-model zoo (teacher, proxy, students) into the store."""

from __future__ import annotations

from dataclasses import dataclass

from dg_core.config import StageConfig, option
from dg_core.errors import DGError
from dg_core.models.io import load_model, model_info
from dg_core.models.zoo import ZOO, ensure


@dataclass
class Config(StageConfig):
    names: list[str] = option(list(ZOO), "Zoo members to build (default: all).")
    root: str = option("", "Store root to build into (default: $DG_STORE_ROOT or the embedded file store).")

    def check(self) -> None:
        for n in self.names:
            if n not in ZOO:
                raise DGError(f"config field 'names': got {n!r}, expected members of {list(ZOO)}")


def run(cfg: Config) -> dict:
    out = {}
    for name in cfg.names:
        uri = ensure(name, cfg.root or None)
        model, tok = load_model(uri, device="cpu")
        out[name] = {"uri": uri, **model_info(model), "vocab": len(tok), "tokenizer": ZOO[name].tokenizer}
    return {"models": out}
