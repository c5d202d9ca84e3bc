"""The "Adapter enabled" switch (Fine-tuning page) means the same on every page that shows an adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_clean, click, new_app, texts, visit


def _set_enabled(at, enabled: bool) -> None:
    visit(at, "finetune")
    at.toggle(key="manage_enabled").set_value(enabled).run()
    assert_clean(at)


def test_evaluation_and_draw_follow_the_enabled_switch(trained_dir: Path) -> None:
    at = new_app()
    _set_enabled(at, False)

    visit(at, "evaluation")
    assert_clean(at)
    labels = [m.label for m in at.metric]
    assert "Base model accuracy" in labels
    assert not any(label.startswith("With adapter") for label in labels), labels
    assert "The adapter is disabled" in texts(at)
    assert len(at.tabs) == 0  # no base-vs-adapter confusion tabs: the base model alone

    visit(at, "draw")
    click(at, "Random test digit")
    assert_clean(at)
    with_adapter = [m for m in at.metric if m.label.startswith("With ")]
    assert with_adapter and "(adapter disabled)" in with_adapter[0].label
    base_says = next(m for m in at.metric if m.label == "Base model says")
    assert with_adapter[0].value == base_says.value and with_adapter[0].delta == base_says.delta

    _set_enabled(at, True)
    visit(at, "evaluation")
    assert_clean(at)
    assert "With adapter small" in [m.label for m in at.metric]
    assert "The adapter is disabled" not in texts(at)


@pytest.mark.parametrize("leaks", [False, True], ids=["real-switch", "adapter-leaks"])
def test_the_disabled_check_on_the_finetune_page_can_fail(
    leaks: bool, trained_dir: Path, monkeypatch: pytest.MonkeyPatch, disabled_adapter_leak
) -> None:
    if leaks:
        disabled_adapter_leak("layer-ignores-switch", monkeypatch)
    at = new_app()
    _set_enabled(at, False)
    passed = "With `small` disabled, all 10,000 test logits equal the base model's exactly."
    failed = "With `small` disabled the logits differ from the base model's."
    successes, errors = [str(e.value) for e in at.success], [str(e.value) for e in at.error]
    if leaks:
        assert failed in errors and passed not in successes, (successes, errors)
    else:
        assert passed in successes and failed not in errors, (successes, errors)
