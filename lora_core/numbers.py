"""Plain numbers: the one check for "a finite real number", its type for saved files' schemas, and the one
percentage format."""

from __future__ import annotations

import math
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
