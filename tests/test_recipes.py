"""The shipped recipes (dg_core/recipes/*.yaml): every stage section loads into that stage's Config."""

from pathlib import Path

import pytest
import yaml

from dg_core.config import load_config
from dg_core.stages import get_stage

RECIPES = sorted((Path(__file__).resolve().parents[1] / "dg_core" / "recipes").glob("*.yaml"))


def test_the_papers_settings_are_shipped():
    names = {yaml.safe_load(p.read_text())["recipe"]["name"] for p in RECIPES}
    assert {"qwen3-8b-bigmath-l4", "gemma3-12b-bigmath-l4"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_section_loads_into_its_stage_config(path):
    data = yaml.safe_load(path.read_text())
    meta = data.pop("recipe")
    assert meta["estimates"] is True and meta["gpus"] >= 1
    assert meta["calibrate_gpu_hours"] > 0 and meta["distill_gpu_hours"] > 0 and meta["memory_per_gpu_gb"] > 0
    assert set(data) == {"prep", "calibrate", "distill", "evaluate"}
    for stage, fields in data.items():
        cfg = load_config(get_stage(stage).load().Config, path, section=stage)
        for k, v in fields.items():  # every field the recipe sets arrives (a renamed field is refused above)
            assert getattr(cfg, k) == v, (path.stem, stage, k)
    assert data["calibrate"]["teacher"].endswith(meta["teacher"]) and data["distill"]["student"].endswith(
        meta["student"]
    )
