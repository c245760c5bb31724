# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.
from typing import NamedTuple

from kfp import dsl

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pin_models(teacher: str, proxies: list, student: str, store_root: str) -> NamedTuple(
    "Pinned", [("teacher", str), ("proxies", list), ("student", str)]
):
    """Pin model references to their current content (`uri#sha256=...`); empty references stay empty.

    Never cached: a model URI is mutable, and this is the step that notices. Everything downstream receives the
    pinned references, so their cache keys change exactly when the weights do. `zoo:<name>` is built into the
    store first.
    """
    from collections import namedtuple

    from components._common import pin, setup

    setup(store_root)
    out = namedtuple("Pinned", ["teacher", "proxies", "student"])
    return out(pin(teacher) if teacher else "", [pin(p) for p in proxies], pin(student) if student else "")
