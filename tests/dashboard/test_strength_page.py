"""The Evaluation page's adapter strength: the curve is computed once in the background, then the control moves
the per-digit chart, the figures and the curve's mark, and strength 0 shows the base model's own figures."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import assert_clean, chart_title, new_app, opened_at, vega_charts, visit

from lora_core.lab.strength import STRENGTHS, strength_curve
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig


def _with_control(at, timeout: float = 60.0):  # noqa: ANN001, ANN202 - AppTest
    """Rerun until the strength control is there (the curve computes in a background thread)."""
    deadline = time.monotonic() + timeout
    while not [s for s in at.select_slider if s.key == "eval_strength"]:
        assert time.monotonic() < deadline, "the strength curve never arrived"
        time.sleep(0.2)
        at.run()
    return next(s for s in at.select_slider if s.key == "eval_strength")


def _metrics(at) -> dict[str, str]:  # noqa: ANN001 - AppTest
    return {m.label: (m.value, m.delta) for m in at.metric}


def _bars(at, series: int = 1) -> list[float]:  # noqa: ANN001 - AppTest
    """The bars of the per-digit chart (series 0: the base model, 1: the adapter), in percent."""
    spec, rows = next((spec, rows) for spec, rows in vega_charts(at) if "Per-digit" in chart_title(spec))
    name = spec["layer"][-1]["encoding"]["xOffset"]["sort"][series]
    return rows[rows["series"] == name].sort_values("digit")["accuracy"].tolist()


def test_the_strength_control_moves_the_figures_and_0_is_the_base(trained_dir: Path, small_mnist) -> None:
    at = visit(new_app(), "evaluation")
    assert_clean(at)
    slider = _with_control(at)
    assert list(slider.options) == [f"{s:g}" for s in STRENGTHS] and slider.value == 1.0
    # the figures at each strength are the library's, on the full test set, for the saved adapter
    base, lora_model = load_base_for_lora(ArtifactStore(trained_dir), "cpu")
    ArtifactStore(trained_dir).load_adapter(lora_model, "small", base.fingerprint)
    curve = strength_curve(lora_model, "small", small_mnist.test_x, small_mnist.test_y)
    for strength in (0.0, 2.0, 1.0):
        slider.set_value(strength).run()
        assert_clean(at)
        expected = curve.at(strength)
        assert _bars(at) == [100 * v for v in expected.per_digit_accuracy]
        metrics = _metrics(at)
        overall = next(v for label, v in metrics.items() if label == f"All digits at strength {strength:g}")
        assert overall[0] == f"{100 * expected.accuracy:.2f}%", (strength, overall)
        if strength == 0.0:  # the base model's own figures, as the page shows them above
            assert _bars(at) == _bars(at, series=0)
            assert overall[0] == metrics["Base model accuracy"][0]
            assert all(
                delta == "+0.00 points vs strength 0" for label, (_, delta) in metrics.items() if "strength" in label
            )
        slider = next(s for s in at.select_slider if s.key == "eval_strength")
    labels = [label for label in _metrics(at) if "at strength" in label]
    assert labels[0].startswith("Target digit ") and labels[1] == "The other digits at strength 1", labels


def test_a_link_opens_the_same_view_and_the_view_writes_its_link(trained_dir: Path) -> None:
    at = opened_at("evaluation", adapter="small", strength="0.5")
    assert_clean(at)
    assert at.selectbox(key="eval_adapter").value == "small"
    assert _with_control(at).value == 0.5
    assert any(m.label == "All digits at strength 0.5" for m in at.metric)
    _with_control(at).set_value(2.0).run()
    assert at.query_params["strength"] == "2" and at.query_params["adapter"] == "small"

    drawn = opened_at("draw", adapter="small", strength="0")
    assert drawn.select_slider(key="draw_strength").value == 0.0
    assert not drawn.warning


def test_a_link_to_what_is_not_here_says_so_and_shows_the_default(trained_dir: Path) -> None:
    at = opened_at("evaluation", adapter="nosuch", strength="7")
    assert_clean(at)
    warnings = [str(w.value) for w in at.warning]
    assert "The link asks for adapter `nosuch`, which is not here; showing `small` instead." in warnings
    assert at.selectbox(key="eval_adapter").value == "small"
    assert _with_control(at).value == 1.0
    warnings = [str(w.value) for w in at.warning]
    assert "The link asks for strength `7`, which is not here; showing `1` instead." in warnings


def test_a_qlora_adapter_s_strength_0_is_its_nf4_base_and_the_page_says_so(trained_dir: Path, small_mnist) -> None:
    store = ArtifactStore(trained_dir)
    base, lora_model = load_base_for_lora(store, "cpu")
    config = FinetuneConfig(digits=(3,), rank=4, alpha=8, steps=3, batch_size=32, device="cpu", base_precision="nf4")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, config, "q")
    at = opened_at("evaluation", adapter="q", strength="0")
    assert_clean(at)
    _with_control(at)
    assert any("Strength 0 gives the adapter's 4-bit NF4 base alone" in str(c.value) for c in at.caption)
    nf4_base = store.read_adapter("q").metrics["quantized_base"]["base_accuracy"]
    assert _bars(at) == [100 * v for v in nf4_base["per_digit_accuracy"]]  # the NF4 base, as recorded when saved
