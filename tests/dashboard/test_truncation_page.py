"""The Parameters page's rank truncation: the curve is computed once in the background, then the control k moves
the figures and the curve's mark; the figures are the library's, for the saved adapter, on the full test set."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import assert_clean, new_app, opened_at, visit

from lora_core.evaluate import accuracy_on
from lora_core.lab.study import load_base_for_lora
from lora_core.lab.truncation import truncation_curve
from lora_core.store.artifacts import ArtifactStore

KEY = "params_k-small"


def _with_control(at, timeout: float = 60.0):  # noqa: ANN001, ANN202 - AppTest
    """Rerun until the k control is there (the curve computes in a background thread)."""
    deadline = time.monotonic() + timeout
    while not [s for s in at.select_slider if s.key == KEY]:
        assert time.monotonic() < deadline, "the truncation curve never arrived"
        time.sleep(0.2)
        at.run()
    return next(s for s in at.select_slider if s.key == KEY)


def test_the_k_control_moves_the_figures_and_the_mark(trained_dir: Path, small_mnist) -> None:
    at = visit(new_app(), "parameters")
    assert_clean(at)
    slider = _with_control(at)
    store = ArtifactStore(trained_dir)
    base, lora_model = load_base_for_lora(store, "cpu")
    store.load_adapter(lora_model, "small", base.fingerprint)
    curve = truncation_curve(lora_model, "small", small_mnist.test_x, small_mnist.test_y)
    assert list(slider.options) == [str(k) for k in curve.ranks] and slider.value == curve.ranks[-1]
    targets = lora_model.adapter_meta("small").get("digits") or []
    for k in (1, curve.ranks[-1]):
        slider.set_value(k).run()
        assert_clean(at)
        metrics = {m.label: (m.value, m.delta) for m in at.metric}
        expected = curve.at(k)
        assert metrics[f"All digits at k = {k}"][0] == f"{100 * expected.accuracy:.2f}%"
        if targets:
            target = next(v for label, v in metrics.items() if label.startswith("Target digit") and f"k = {k}" in label)
            assert target[0] == f"{100 * accuracy_on(expected, targets):.2f}%"
        chart = next(c for c in at.get("plotly_chart") if "directions kept" in c.proto.spec)
        spec = json.loads(chart.proto.spec)
        assert spec["layout"]["shapes"][0]["x0"] == k  # the mark follows the control
        shares = ", ".join(f"{name} {100 * s[curve.ranks.index(k)]:.1f}%" for name, s in curve.energy.items())
        caption = next(str(c.value) for c in at.caption if "squared norm" in str(c.value))
        for part in shares.split(", "):
            assert part in caption, (part, caption)
        slider = next(s for s in at.select_slider if s.key == KEY)
    assert curve.at(1).accuracy != curve.at(curve.ranks[-1]).accuracy  # the control does change what is shown


def test_a_link_sets_k_and_the_view_writes_it(trained_dir: Path) -> None:
    at = opened_at("parameters", adapter="small", k="2")
    assert _with_control(at).value == 2
    _with_control(at).set_value(1).run()
    assert at.query_params["k"] == "1"
