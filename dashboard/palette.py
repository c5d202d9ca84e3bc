"""The lab's colours: one per role, the same in every chart and in the architecture diagram.

All come from Okabe & Ito's palette, chosen so that the colours drawn together in one chart stay apart for
viewers with any of the three common colour-vision deficiencies (tests/dashboard/test_palette.py simulates
them). Value scales use the diverging RdBu (weights) and the perceptually uniform Viridis (accuracy maps).
"""

from __future__ import annotations

FROZEN = "#999999"  # the frozen base: W, and the base model wherever it stands beside an adapted one
ADAPTER = "#e69f00"  # the trainable adapter: A, B and their update s·B·A
ADAPTED = "#0072b2"  # the combined weight W + s·B·A: the adapted model
ELSEWHERE = "#56b4e9"  # the adapted model where it was not trained: the other digits, plain MNIST
OVERALL = "#555555"  # the adapted model on every digit at once, beside its target and other digits
HIGHLIGHT = "#f0e442"  # what the reader should find: the target digits, the chosen point (outlined in MARK)
MARK = "#000000"  # the current value of a control, outlines
GUIDE = "#bbbbbb"  # reference lines that are not data (strength 1, zero)
GAP = "#ffffff"  # the thin lines that keep a map's squares apart
WORSE = "#d55e00"
# the drawing canvas: white ink on black, as MNIST's digits are stored
INK = "#ffffff"
PAPER = "#000000"
BETTER = ADAPTED

# worse (vermillion) to better (blue), through white
BETTER_WORSE_SCALE = [[0.0, WORSE], [0.5, "#ffffff"], [1.0, BETTER]]

METHOD = {
    "base": FROZEN,
    "lora": ADAPTED,
    "loraplus": ADAPTER,
    "dora": MARK,
    "pissa": "#882255",  # Paul Tol's wine
    "vera": "#332288",  # Paul Tol's indigo
    "qlora": "#554400",  # a dark olive: chosen by search as the farthest from the others (and white) for every vision
    "full": "#d55e00",
    "head": ELSEWHERE,
}
# single adapters beside their combination (ADAPTED) and the base (FROZEN)
ALONE = ("#d55e00", ELSEWHERE, ADAPTER, MARK)
MEMORY = {"weights": FROZEN, "gradients": ADAPTER, "adam": "#d55e00", "activations": ELSEWHERE}

# lines with no role of their own (the runs of a sweep, the methods' training phases) take these in turn
COLORWAY = (ADAPTED, "#d55e00", ELSEWHERE, ADAPTER, "#009e73", "#cc79a7", MARK)
# a training run's loss, by phase
PHASE = {"train": FROZEN, "finetune": ADAPTER}

# the colours each chart draws side by side (the colour-vision test checks every pair within a group)
SHOWN_TOGETHER = {
    "roles": (FROZEN, ADAPTER, ADAPTED, ELSEWHERE, HIGHLIGHT),
    "curves": (ADAPTED, ELSEWHERE, OVERALL, MARK, GUIDE),
    "methods": tuple(METHOD.values()),
    "lines in turn": COLORWAY[:4],
    "combination": (FROZEN, ADAPTED, *ALONE),
    "memory": tuple(MEMORY.values()),
    "better or worse": (WORSE, BETTER),
}


def light(color: str, share: float = 0.75) -> str:
    """`color` mixed with white (`share` of white): the fill behind a role's outline in the diagram."""
    channels = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * share):02x}" for c in channels)
