"""Plain numbers: the one check for "a finite real number", its type for saved files' schemas, the one
percentage format, and the one way to name a list of digits in a sentence."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import AllowInfNan

# A saved file's number, in the schemas of lora_core.store.results: an int or a float, never NaN or infinite.
Number = Annotated[float, AllowInfNan(False)]


def is_finite_number(value: Any) -> bool:
    """An int or float that is neither NaN nor infinite (bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def pct(fraction: float, decimals: int = 2) -> str:
    """0.9763 -> '97.63%': how accuracies are shown by the command line and the dashboard."""
    return f"{100 * fraction:.{decimals}f}%"


def digits_named(digits: Sequence[int]) -> str:
    """(4,) -> 'digit 4', (0, 1) -> 'digits 0, 1': target digits in the dashboard's and the tasks' sentences."""
    return f"digit{'s' if len(digits) > 1 else ''} {', '.join(map(str, digits))}"
