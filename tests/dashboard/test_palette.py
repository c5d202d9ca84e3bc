"""The lab's colours: every colour the dashboard draws comes from dashboard/palette.py, and the colours one chart
draws side by side stay apart for viewers with each common colour-vision deficiency."""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from colorspacious import cspace_convert, deltaE

from dashboard import palette
from dashboard.diagram import architecture_dot
from lora_core.lora import LoraConfig
from lora_core.model import MLP

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
HEX = re.compile(r"#[0-9a-fA-F]{6}\b")
# CAM02-UCS distance below which two colours are easily confused (about 10 is "just told apart" at a glance)
MIN_DISTANCE = 14.0
DEFICIENCIES = ("deuteranomaly", "protanomaly", "tritanomaly")


def _rgb(color: str) -> np.ndarray:
    return np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)]) / 255


def _seen(color: str, deficiency: str | None) -> np.ndarray:
    """`color` as a viewer with `deficiency` (at full severity) sees it; None: normal colour vision."""
    if deficiency is None:
        return _rgb(color)
    space = {"name": "sRGB1+CVD", "cvd_type": deficiency, "severity": 100}
    return np.clip(cspace_convert(_rgb(color), space, "sRGB1"), 0, 1)


def closest_pair(colors: tuple[str, ...], deficiency: str | None) -> tuple[float, str, str]:
    pairs = itertools.combinations(dict.fromkeys(colors), 2)
    return min((float(deltaE(_seen(a, deficiency), _seen(b, deficiency), input_space="sRGB1")), a, b) for a, b in pairs)


@pytest.mark.parametrize("group", sorted(palette.SHOWN_TOGETHER))
@pytest.mark.parametrize("deficiency", [None, *DEFICIENCIES])
def test_colours_shown_together_stay_apart(group: str, deficiency: str | None) -> None:
    distance, a, b = closest_pair(palette.SHOWN_TOGETHER[group], deficiency)
    viewer = deficiency or "normal vision"
    assert distance >= MIN_DISTANCE, f"{group}: {a} and {b} are {distance:.1f} apart for {viewer}"


def test_the_check_tells_a_red_green_pair_apart_only_for_normal_vision() -> None:
    red_green = ("#e4572e", "#6a994e")  # a tomato red beside a leaf green: the commonest confusion
    assert closest_pair(red_green, None)[0] >= MIN_DISTANCE
    assert closest_pair(red_green, "deuteranomaly")[0] < MIN_DISTANCE


def test_every_colour_the_dashboard_names_comes_from_the_palette() -> None:
    strays = {
        f"{path.relative_to(DASHBOARD)}: {color}"
        for path in DASHBOARD.rglob("*.py")
        if path.name != "palette.py"
        for color in HEX.findall(path.read_text())
    }
    assert not strays
    theme = tomllib.loads((DASHBOARD.parent / ".streamlit" / "config.toml").read_text())["theme"]
    assert theme["primaryColor"] == palette.ADAPTED


def test_the_diagram_draws_frozen_trainable_and_combined_in_their_roles() -> None:
    dot = architecture_dot(MLP(), LoraConfig(r=2, target_modules=("linear1",)), "a")
    nodes = [line.split() for line in dot.splitlines()]
    lines = {words[0]: " ".join(words) for words in nodes if len(words) > 1 and words[1].startswith("[")}
    assert f'color="{palette.FROZEN}", fillcolor="{palette.light(palette.FROZEN)}"' in lines["linear1_W"]
    assert f'color="{palette.ADAPTER}", fillcolor="{palette.light(palette.ADAPTER)}"' in lines["linear1_A"]
    assert f'color="{palette.ADAPTED}", fillcolor="{palette.light(palette.ADAPTED)}"' in lines["linear1_sum"]
    assert palette.light("#000000") == "#bfbfbf" and palette.light("#ffffff") == "#ffffff"
