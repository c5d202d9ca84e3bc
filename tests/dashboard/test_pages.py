"""Every page renders from a fresh start and with saved work, and broken saved work does not crash it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PAGES, app_with_active, assert_clean, chart_title, new_app, texts, vega_charts, visit

from dashboard.ui import FINETUNE_LABEL, TRAIN_LABEL
from lora_core.data import MnistData
from lora_core.evaluate import evaluate
from lora_core.lora import LoraModel
from lora_core.numbers import pct
from lora_core.store.artifacts import ArtifactStore

TITLES = {
    "home": "LoRA on MNIST: see it work",
    "training": "Training the base model",
    "evaluation": "Evaluation",
    "parameters": "Parameter inspection",
    "finetune": "LoRA fine-tuning",
    "draw": "Draw and predict",
    "experiments": "Experiments",
    "insight": "Insight: what the adapter learned, and what training costs",
    "mydigits": "My digits",
}


def test_every_page_on_a_fresh_artifacts_folder(fresh_dir: Path) -> None:
    at = new_app()
    assert_clean(at)
    assert "none yet" in "\n".join(str(m.value) for m in at.sidebar.markdown)
    for page in reversed(PAGES):  # any order
        visit(at, page)
        assert_clean(at)
        assert at.title[0].value == TITLES[page]
        if page != "home" and page != "training":
            assert "There is no base model yet" in texts(at)
            assert any(b.label == TRAIN_LABEL for b in at.button), page
    assert list(fresh_dir.iterdir()) == [], "looking at pages must not write anything"


def test_every_page_with_a_base_model_and_an_adapter(trained_dir: Path) -> None:
    at = new_app()
    for page in PAGES:
        visit(at, page)
        assert_clean(at)
        assert not at.error, (page, [e.value for e in at.error])
        assert at.title[0].value == TITLES[page]
    sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "small" in sidebar and "active" in sidebar


def test_home_shows_headline_figures_from_saved_work(trained_dir: Path) -> None:
    at = new_app()
    labels = {m.label for m in at.metric}
    assert {"Base accuracy", "Adapter's target digit", "Overall after LoRA", "Parameters added by LoRA"} <= labels
    assert "Weakest digit" not in labels  # the metric shows the adapter's target, which need not be the weakest
    assert any(
        "Base weights unchanged" in str(s.value) and "recorded by the fine-tune run on" in str(s.value)
        for s in at.success
    )


def saved_models(root: Path) -> tuple[torch.nn.Module, LoraModel]:
    """The saved base model, and a copy with its adapter 'small' applied, loaded without the dashboard."""
    store = ArtifactStore(root)
    record = store.load_base("cpu")
    lora_model = LoraModel(store.load_base("cpu").model)
    store.load_adapter(lora_model, "small", record.fingerprint)
    lora_model.set_adapter("small")
    return record.model, lora_model


def test_home_steps_and_figures_are_the_saved_models(trained_dir: Path, mnist: MnistData) -> None:
    at = new_app()
    # all five steps are done, and each links to the page that does it
    steps = [str(m.value) for m in at.markdown if str(m.value).startswith(":material/")]
    assert len(steps) == 5 and all(s.startswith(":material/check_circle:") for s in steps), steps
    assert [link.proto.page for link in at.get("page_link")] == [
        "training",
        "evaluation",
        "evaluation",
        "finetune",
        "evaluation",
    ]
    # the figures are the saved models' own, measured again here on the 10,000 test images
    base_acc, adapted_acc = (evaluate(m, mnist.test_x, mnist.test_y).accuracy for m in saved_models(trained_dir))
    values = {m.label: m.value for m in at.metric}
    assert values["Base accuracy"] == pct(base_acc)
    assert values["Overall after LoRA"] == pct(adapted_acc)
    assert f"Test accuracy {pct(base_acc)}." in steps[0]


def test_evaluation_metrics_and_gallery(trained_dir: Path) -> None:
    at = visit(new_app(), "evaluation")
    labels = [m.label for m in at.metric]
    assert "Base model accuracy" in labels and "With adapter small" in labels
    assert len(at.dataframe) == 1
    at.selectbox(key="gallery_digit").set_value(3).run()
    assert_clean(at)
    at.radio(key="gallery_kind").set_value("fixed by the adapter").run()
    assert_clean(at)


def test_parameters_page_shows_the_recorded_hashes(trained_dir: Path) -> None:
    at = visit(new_app(), "parameters")
    assert any("recorded by the fine-tune run on" in str(s.value) for s in at.success)
    assert not any("PASS" in str(s.value) for s in [*at.success, *at.subheader])  # only the live check says PASS
    labels = [m.label for m in at.metric]
    assert "LoRA adds" in labels and "Adapter weights" in labels
    at.selectbox(key="params_layer").set_value("linear3").run()
    assert_clean(at)


def test_pages_without_an_adapter_offer_fine_tuning(trained_dir: Path) -> None:
    shutil.rmtree(trained_dir / "adapters")
    at = new_app()
    for page in ("evaluation", "parameters", "draw"):
        visit(at, page)
        assert_clean(at)
        assert any(b.label == FINETUNE_LABEL for b in at.button), page


@pytest.mark.parametrize("damage", ["broken", "weights-overwritten", "weights-empty", "stale"])
def test_broken_or_stale_adapters_are_shown_not_fatal(trained_dir: Path, damage: str) -> None:
    folder = trained_dir / "adapters" / "small"
    weights = folder / "adapter_model.safetensors"
    if damage == "broken":
        (folder / "adapter_config.json").write_text("{not json")
    elif damage == "weights-overwritten":  # 32 bytes mid-file: still a valid safetensors file, other numbers
        data = bytearray(weights.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 32] = bytes(range(32))
        weights.write_bytes(bytes(data))
    elif damage == "weights-empty":
        weights.write_bytes(b"")
    else:
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["base_sha256"] = "0" * 64
        (folder / "metrics.json").write_text(json.dumps(metrics))
    at = new_app()
    for page in PAGES:
        visit(at, page)
        assert_clean(at)
    visit(at, "finetune")
    table = at.dataframe[0].value
    shown = "stale: other base model" if damage == "stale" else "broken"
    assert dict(zip(table["name"], table["status"], strict=True)) == {"small": shown}
    broken_warnings = [str(w.value) for w in at.warning if "`small` is broken" in str(w.value)]
    assert len(broken_warnings) == (0 if damage == "stale" else 1), broken_warnings
    if damage.startswith("weights-"):
        assert str(weights) in broken_warnings[0]
    sidebar = [str(m.value) for m in at.sidebar.markdown]
    marker = "stale (other base)" if damage == "stale" else "broken"
    assert any("`small`" in line and marker in line for line in sidebar), sidebar
    assert at.session_state["active_adapter"] is None


def test_unreadable_base_model_is_an_error_with_a_way_out(trained_dir: Path) -> None:
    (trained_dir / "base" / "model.safetensors").write_bytes(b"garbage")
    at = new_app()
    for page in PAGES:
        visit(at, page)
        assert_clean(at)
    visit(at, "evaluation")
    assert any("cannot be loaded" in str(e.value) for e in at.error)
    assert any(b.label == TRAIN_LABEL for b in at.button)


def test_draw_page_random_test_digit(trained_dir: Path, mnist: MnistData) -> None:
    at = visit(new_app(), "draw")
    assert not at.metric and not at.image, "nothing is predicted before there is a digit"
    next(b for b in at.button if b.label == "Random test digit").click().run()
    assert_clean(at)
    # the page names the test image it shows; its predictions must be the models' own on that image
    assert len(at.image) == 1, "the 28x28 input is shown"
    caption = re.fullmatch(r"MNIST test image #(\d+): a (\d)", at.image[0].captions[0])
    assert caption, at.image[0].captions
    index, label = int(caption[1]), int(caption[2])
    assert label == int(mnist.test_y[index])
    assert f"The true label is {label}." in [str(c.value) for c in at.caption]
    x = mnist.test_x[index : index + 1]
    with torch.no_grad():
        base_says, adapted_says = (int(m(x).argmax()) for m in saved_models(trained_dir))
    values = {m.label: m.value for m in at.metric}
    assert values == {"Base model says": str(base_says), "With small says": str(adapted_says)}
    assert [str(i.value) for i in at.info] == [
        f"Both models say {base_says}."
        if base_says == adapted_says
        else f"The models disagree: the base model says {base_says}, the adapter says {adapted_says}."
    ]
    assert not at.success and not at.error  # the page cannot know what was meant: neither is a success

    # the adapter's strength: 0 predicts as the base model, 2 as the update doubled
    _, lora_model = saved_models(trained_dir)
    for strength in (0.0, 2.0):
        at.select_slider(key="draw_strength").set_value(strength).run()
        assert_clean(at)
        lora_model.set_adapter(["small"], weights=[strength])
        with torch.no_grad():
            probabilities = torch.softmax(lora_model(x), dim=1)[0]
        values = {m.label: m.value for m in at.metric}
        assert values[f"With small at strength {strength:g} says"] == str(int(probabilities.argmax()))
        delta = next(m.delta for m in at.metric if m.label.startswith("With small"))
        assert delta == f"{float(probabilities.max()):.1%} sure"
        if strength == 0.0:
            assert delta == next(m.delta for m in at.metric if m.label == "Base model says")

    next(b for b in at.button if b.label == "Clear").click().run()
    assert_clean(at)
    assert not at.metric and not at.image, "Clear removes the digit and its predictions"


def test_home_headline_of_a_task_adapter_is_on_its_task_and_names_no_target(results_dir: Path) -> None:
    """With rotate-45 active, the headline's figures are its own (recorded on the rotated test images) and say
    so; no digit is called its target, and step 4 names the task, not ten digits."""
    at = app_with_active("rotate-45")
    assert_clean(at)
    metrics = json.loads((results_dir / "adapters" / "rotate-45" / "metrics.json").read_text())
    values = {m.label: m.value for m in at.metric}
    assert values["Base model on the task's test set"] == pct(metrics["before"]["accuracy"])
    assert values["With the adapter on the task's test set"] == pct(metrics["after"]["accuracy"])
    assert values["Adapter's task"] == "rotate 45°" and metrics["task"]["label"] in texts(at)
    assert "Base accuracy" not in values and not any("target digit" in label for label in values)
    captions = " ".join(str(c.value) for c in at.caption)
    assert f"measured on the task's own test set (the 10,000 MNIST test images, {metrics['task']['label']})" in captions
    assert "weakest digit" not in captions
    steps = [str(m.value) for m in at.markdown if str(m.value).startswith(":material/")]
    assert "Adapter `rotate-45` on task `rotate:45`" in steps[3], steps[3]
    _, rows = next((spec, rows) for spec, rows in vega_charts(at) if "on the task's test set" in chart_title(spec))
    assert len(rows) == 20 and not rows["target"].any()  # no digit is marked as a target


def test_home_headline_of_a_digit_adapter_shows_the_worst_hit_other_digit(trained_dir: Path) -> None:
    at = new_app()
    metrics = json.loads((trained_dir / "adapters" / "small" / "metrics.json").read_text())
    before, after = metrics["before"]["per_digit_accuracy"], metrics["after"]["per_digit_accuracy"]
    others = [d for d in range(10) if d not in metrics["target_digits"]]
    worst = min(others, key=lambda d: (after[d] - before[d], d))
    captions = " ".join(str(c.value) for c in at.caption)
    if after[worst] < before[worst]:
        assert f"the other digit that lost most is {worst}, {pct(before[worst])} → {pct(after[worst])}" in captions
    else:
        assert "No other digit got worse with this adapter." in captions


def test_the_adapter_to_manage_follows_a_newly_active_adapter(results_dir: Path) -> None:
    at = visit(app_with_active("small"), "finetune")
    assert at.selectbox(key="manage_adapter").value == "small"
    at.session_state["active_adapter"] = "rotate-45"  # as a run that finishes makes its adapter active
    at.run()
    assert_clean(at)
    assert at.selectbox(key="manage_adapter").value == "rotate-45"
    at.selectbox(key="manage_adapter").set_value("small").run()  # the user's own pick stays until the next change
    assert at.selectbox(key="manage_adapter").value == "small"
