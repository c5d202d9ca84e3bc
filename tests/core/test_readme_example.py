"""The README's Python example runs as written and shows what it claims.

The example's code is executed unchanged; only its scale is reduced: `lora_core.load_mnist` returns the
6,000-image training subset and the configs fine-tune for fewer steps, so the test takes seconds instead
of the full study's time.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

import lora_core
from lora_core.data import MnistData
from lora_core.train import FinetuneConfig, TrainConfig

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_HEADING = "## From Python"


def readme_example(text: str) -> str:
    """The first ```python block between EXAMPLE_HEADING and the next second-level heading."""
    start = text.index(EXAMPLE_HEADING + "\n")
    section = re.split(r"^## ", text[start + len(EXAMPLE_HEADING) :], maxsplit=1, flags=re.M)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)
    if match is None:
        raise AssertionError(f"no ```python block under {EXAMPLE_HEADING!r} in {README}")
    return match.group(1)


def test_readme_example_runs(
    small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(lora_core, "load_mnist", lambda *args, **kwargs: small_mnist)
    monkeypatch.setattr(lora_core, "TrainConfig", functools.partial(TrainConfig, batch_size=128, device="cpu"))
    monkeypatch.setattr(
        lora_core, "FinetuneConfig", functools.partial(FinetuneConfig, steps=80, batch_size=64, device="cpu")
    )
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_example(README.read_text(encoding="utf-8")), str(README), "exec"), namespace)

    digit = namespace["digit"]
    before, after = namespace["before"], namespace["after"]
    assert digit == before.weakest_digit  # type: ignore[attr-defined]
    assert after.per_digit_accuracy[digit] > before.per_digit_accuracy[digit]  # type: ignore[attr-defined,index]
    printed = capsys.readouterr().out
    assert f"digit {digit}: " in printed
    assert "all digits: " in printed
