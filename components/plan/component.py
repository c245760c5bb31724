# No `from __future__ import annotations`: kfp reads the real annotations of component signatures.

from kfp import dsl

from components._common import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def plan_attacks(students: list, methods: list, seeds: int, store_root: str) -> list[dict]:
    """Expand the attack suite: one item per (probe student, method, seed), students pinned to their content.

    Never cached (it pins mutable references). Each item is {student_name, student, method, seed, reinit}; the
    attack loop distills every item from the original and from the calibrated teacher. Zoo students are reset
    from the seed (reinit), as `dguard attack` does, so seeds give independent students. (Not `name`: a KFP
    loop item has its own `.name`.)
    """
    from components._common import pin, setup
    from dg_core.distill.suite import plan_attacks as plan
    from dg_core.errors import DGError

    setup(store_root)
    if not students or not methods:
        raise DGError("attack suite is empty: expected at least one student and one method")
    if seeds < 1:
        raise DGError(f"attack seeds: got {seeds}, expected >= 1")
    jobs = plan([{"student": s, "method": m, "seeds": list(range(seeds))} for s in students for m in methods])
    pins = {s: pin(s) for s in students}
    items = [
        {
            "student_name": j.attack.split("/")[0],
            "student": pins[j.student],
            "method": j.method,
            "seed": j.seed,
            "reinit": bool(j.settings["reinit"]),
        }
        for j in jobs
    ]
    print(f"attack suite: {len(items)} attacks ({len(students)} students x {len(methods)} methods x {seeds} seeds)")
    return items
