"""The precision choice on the training and fine-tuning pages reaches the library, is recorded in model.json
and metrics.json, and is shown again; where this device cannot run bf16, the refusal shows under the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_clean, click, new_app, texts, visit, wait_for_job
from test_actions import small_training

from dashboard import jobs, state
from lora_core import precision
from lora_core.precision import bf16_unsupported_reason
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig, TrainConfig, resolve_device


def bf16_runs_here(device: str) -> bool:
    """The library's own answer for the device the page's setting resolves to (CPUs always run it)."""
    return bf16_unsupported_reason(resolve_device(device)) is None


def assert_refused_under_precision(at) -> None:  # noqa: ANN001 - AppTest
    assert any("**Precision**" in str(e.value) and "bf16 is not available" in str(e.value) for e in at.error)
    assert "job" not in at.session_state or at.session_state["job"] is None


def test_training_page_trains_in_bf16_and_shows_it(fresh_dir: Path) -> None:
    at = visit(new_app(), "training")
    assert at.selectbox(key="train_precision").value == TrainConfig().precision
    small_training(at)
    at.selectbox(key="train_precision").set_value("bf16")
    click(at, "Train the base model")
    if not bf16_runs_here(TrainConfig().device):
        assert_refused_under_precision(at)
        assert list(fresh_dir.iterdir()) == []
        return
    assert_clean(at)
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    training = ArtifactStore(fresh_dir).base_meta()["training"]
    assert training["precision"] == "bf16"
    assert training["precision_used"] == "bf16"
    assert training["precision_reason"] == "bf16: as requested"
    assert_clean(at)
    assert "Precision: bf16 — as requested" in texts(at)


def test_finetune_page_passes_its_precision_to_metrics_json(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    assert at.selectbox(key="ft_precision").value == FinetuneConfig().precision
    at.number_input(key="ft_steps").set_value(15)
    at.number_input(key="ft_batch").set_value(64)
    at.text_input(key="ft_name").input("tiny-bf16")
    at.selectbox(key="ft_precision").set_value("bf16")
    click(at, "Fine-tune the adapter")
    if not bf16_runs_here(FinetuneConfig().device):
        assert_refused_under_precision(at)
        assert ArtifactStore(trained_dir).adapter_names() == ["small"]
        return
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    finetune = json.loads((trained_dir / "adapters" / "tiny-bf16" / "metrics.json").read_text())["finetune"]
    assert finetune["precision"] == "bf16"
    assert finetune["precision_used"] == "bf16"
    assert finetune["precision_reason"] == "bf16: as requested"
    assert_clean(at)
    # the saved adapters table shows what each adapter really trained in, from its own metrics.json
    table = next(df.value for df in at.dataframe if "precision" in df.value.columns).set_index("name")
    assert table.loc["tiny-bf16", "precision"] == "bf16"
    small = json.loads((trained_dir / "adapters" / "small" / "metrics.json").read_text())["finetune"]
    assert table.loc["small", "precision"] == small["precision_used"]


def test_a_model_saved_before_the_precision_setting_says_so(trained_dir: Path) -> None:
    meta_path = trained_dir / "base" / "model.json"
    meta = json.loads(meta_path.read_text())
    for key in ("precision", "precision_used", "precision_reason"):
        meta["training"].pop(key, None)
    meta_path.write_text(json.dumps(meta))
    # the server caches a loaded base model by its weights' sha256, and these weights are the fixture's (which
    # earlier tests loaded with the recorded fields); a model really saved before the setting has other weights
    state._load_base.clear()
    at = visit(new_app(), "training")
    assert_clean(at)
    assert "Precision: fp32 (not recorded)" in texts(at)


def test_bf16_the_device_cannot_run_is_refused_under_the_field(
    fresh_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the refusal path of a device without bfloat16 (a GPU without it, say), which this CPU never takes by itself
    monkeypatch.setattr(precision, "bf16_unsupported_reason", lambda device: f"{device} has no bfloat16 here")
    at = visit(new_app(), "training")
    small_training(at)
    at.selectbox(key="train_precision").set_value("bf16")
    click(at, "Train the base model")
    assert_refused_under_precision(at)
    assert list(fresh_dir.iterdir()) == []
    assert_clean(at)
