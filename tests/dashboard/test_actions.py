"""The main buttons do what they say, on small settings: train, stop, fine-tune, activate, disable,
rename, delete, the whole study; bad settings are refused next to their field and write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import assert_clean, chart_title, click, new_app, texts, vega_charts, visit, wait_for_job

from dashboard import jobs
from lora_core.store.artifacts import ArtifactStore


def small_training(at) -> None:  # noqa: ANN001 - AppTest
    at.number_input(key="train_h1").set_value(64)
    at.number_input(key="train_h2").set_value(64)
    at.number_input(key="train_batch").set_value(512)


def test_train_button_trains_and_saves_a_base_model(fresh_dir: Path) -> None:
    at = visit(new_app(), "training")
    small_training(at)
    click(at, "Train the base model")
    assert_clean(at)
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    assert job.losses and job.progress is not None and job.progress.step == job.progress.total_steps
    meta = ArtifactStore(fresh_dir).base_meta()
    assert meta["architecture"]["hidden"] == [64, 64]
    assert_clean(at)
    assert any("Finished" in str(s.value) for s in at.success)
    assert "Test accuracy" in [m.label for m in at.metric]
    assert any(c.label == "Test accuracy" for c in at.metric)


def test_a_bad_setting_is_refused_next_to_its_field(fresh_dir: Path) -> None:
    at = visit(new_app(), "training")
    at.number_input(key="train_lr").set_value(0.0)
    click(at, "Train the base model")
    assert any("Learning rate" in str(e.value) for e in at.error)
    assert at.session_state["job"] is None if "job" in at.session_state else True
    assert list(fresh_dir.iterdir()) == []


def test_a_stopped_run_keeps_the_saved_model(trained_dir: Path) -> None:
    before = (trained_dir / "base" / "model.safetensors").read_bytes()
    at = visit(new_app(), "training")
    small_training(at)
    at.number_input(key="train_epochs").set_value(50)
    click(at, "Train the base model")
    job = at.session_state["job"]
    job.stop()
    wait_for_job(at)
    assert job.status == jobs.STOPPED
    assert any("Stopped" in str(w.value) for w in at.warning)
    assert (trained_dir / "base" / "model.safetensors").read_bytes() == before


def test_finetune_button_saves_and_activates_an_adapter(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(15)
    at.number_input(key="ft_batch").set_value(64)
    at.text_input(key="ft_name").input("tiny")
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    assert "tiny" in ArtifactStore(trained_dir).adapter_names()
    assert at.session_state["active_adapter"] == "tiny"
    assert_clean(at)
    assert "Trainable parameters" in [m.label for m in at.metric]
    # the training loop's time and the whole run's are two figures, each named for what it times
    steps_s = json.loads((trained_dir / "adapters" / "tiny" / "metrics.json").read_text())["seconds"]
    said = f"its training steps took {steps_s:.1f} s of the run's {job.seconds:.1f} s"
    assert steps_s <= job.seconds and any(said in str(c.value) for c in at.caption), [c.value for c in at.caption]
    # the hashes that run recorded show its base weights unchanged on the Parameters page
    visit(at, "parameters")
    assert at.selectbox(key="params_adapter").value == "tiny"
    assert any("Base weights unchanged" in str(s.value) and "fine-tune run" in str(s.value) for s in at.success)


def test_finetune_page_trains_with_loraplus_and_refuses_a_ratio_of_zero(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(5)
    at.number_input(key="ft_batch").set_value(32)
    at.text_input(key="ft_name").input("plus")
    at.toggle(key="ft_loraplus").set_value(True).run()
    at.number_input(key="ft_loraplus_ratio").set_value(0.0).run()
    click(at, "Fine-tune the adapter")
    assert any("LoRA+ ratio" in str(e.value) and "above 0" in str(e.value) for e in at.error), at.error
    at.number_input(key="ft_loraplus_ratio").set_value(8.0).run()
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    recorded = json.loads((trained_dir / "adapters" / "plus" / "metrics.json").read_text())["finetune"]
    assert recorded["loraplus_lr_ratio"] == 8.0


def test_finetune_page_trains_pissa_refuses_it_with_dora_and_shows_its_residual_base(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(5)
    at.number_input(key="ft_batch").set_value(32)
    at.text_input(key="ft_name").input("pissa")
    at.toggle(key="ft_pissa").set_value(True)
    at.toggle(key="ft_dora").set_value(True).run()
    click(at, "Fine-tune the adapter")
    assert any("PiSSA" in str(e.value) and "DoRA" in str(e.value) for e in at.error), at.error
    at.toggle(key="ft_dora").set_value(False).run()
    assert any("twice the rank" in str(c.value) for c in at.caption)
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    metrics = json.loads((trained_dir / "adapters" / "pissa" / "metrics.json").read_text())
    assert metrics["finetune"]["init"] == "pissa" and metrics["pissa"]["saved_rank"] == 16
    assert "`pissa` · digit" in texts(at) and "PiSSA r=8, saved r=16" in texts(at)  # the sidebar's list
    visit(at, "parameters")
    at.selectbox(key="params_adapter").set_value("pissa").run()
    assert_clean(at)
    assert any(str(s.value).startswith("Base weights: UNCHANGED") or "unchanged" in str(s.value) for s in at.success)
    labels = {m.label for m in at.metric}
    assert "LoRA A and B (saved)" in labels and "Trainable (LoRA A and B)" not in labels
    assert any(f"({metrics['trainable_params']:,} parameters)" in str(c.value) for c in at.caption)
    warnings = [str(w.value) for w in at.warning if "PiSSA" in str(w.value)]
    assert warnings and "sha256 differs from W's on linear1.weight, linear2.weight, linear3.weight" in warnings[0]


def test_finetune_page_trains_vera_with_its_own_rank_and_shows_its_vectors(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(5)
    at.number_input(key="ft_batch").set_value(32)
    at.text_input(key="ft_name").input("vera")
    at.toggle(key="ft_vera").set_value(True).run()
    assert at.number_input(key="ft_rank").max == 1024  # VeRA's shared pair is not held to a layer's limit
    at.number_input(key="ft_rank").set_value(128).run()
    trainable = 3 * 128 + 256 + 256 + 10  # d per layer, b per output row of the small base (256, 256, 10)
    assert any(f"{trainable:,} trainable parameters" in str(c.value) for c in at.caption)
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    metrics = json.loads((trained_dir / "adapters" / "vera" / "metrics.json").read_text())
    assert metrics["finetune"]["use_vera"] is True and metrics["trainable_params"] == trainable
    assert json.loads((trained_dir / "adapters" / "vera" / "adapter_config.json").read_text())["peft_type"] == "VERA"
    assert "VeRA r=128" in texts(at)  # the sidebar's list
    visit(at, "parameters")
    assert_clean(at)
    assert {m.label: m.value for m in at.metric}["Trainable (VeRA's d and b)"] == f"{trainable:,}"


def test_finetune_page_trains_qlora_on_an_nf4_base_and_shows_its_codes_and_levels(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(5)
    at.number_input(key="ft_batch").set_value(32)
    at.text_input(key="ft_name").input("qlora")
    at.toggle(key="ft_qlora").set_value(True)
    at.toggle(key="ft_vera").set_value(True).run()
    click(at, "Fine-tune the adapter")
    assert any("QLoRA" in str(e.value) and "not VeRA" in str(e.value) for e in at.error), at.error
    at.toggle(key="ft_vera").set_value(False).run()
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    metrics = json.loads((trained_dir / "adapters" / "qlora" / "metrics.json").read_text())
    assert metrics["finetune"]["base_precision"] == "nf4"
    assert any("bit-identical after training" in str(i.value) for i in at.info)  # the result names its base
    assert "QLoRA r=8" in texts(at)  # the sidebar's list
    visit(at, "parameters")
    at.selectbox(key="params_adapter").set_value("qlora").run()
    assert_clean(at)
    assert any("4-bit NF4 copy of the base" in str(s.value) for s in at.success)
    table = next(df.value for df in at.dataframe if "NF4 tensor" in df.value.columns)
    assert len(table) == 15 and set(table["same"]) == {"yes"}  # three layers of the small base, five parts each
    assert any("Each of NF4's 16 levels holds" in str(c.value) for c in at.caption)


def test_finetune_refuses_an_existing_name_and_caps_rank_for_linear3(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.text_input(key="ft_name").input("small")
    click(at, "Fine-tune the adapter")
    assert any("already exists" in str(e.value) for e in at.error)
    assert "job" not in at.session_state or at.session_state["job"] is None
    at.multiselect(key="ft_targets").set_value(["linear1", "linear2"]).run()
    assert at.number_input(key="ft_rank").max == 64
    at.number_input(key="ft_rank").set_value(64).run()
    assert at.number_input(key="ft_rank").value == 64
    at.multiselect(key="ft_targets").set_value(["linear2", "linear3"]).run()
    assert_clean(at)
    rank = at.number_input(key="ft_rank")
    assert rank.max == 64 and rank.value == 64  # above linear3's limit: capped there only
    assert any("linear2 64, linear3 10 (capped: its limit is 10)" in str(c.value) for c in at.caption)
    at.multiselect(key="ft_targets").set_value(["linear3"]).run()
    rank = at.number_input(key="ft_rank")
    assert rank.max == 10 and rank.value == 10  # no chosen layer holds more


def test_activate_disable_rename_delete(trained_dir: Path) -> None:
    adapters = trained_dir / "adapters"
    shutil.copytree(adapters / "small", adapters / "other")
    at = visit(new_app(), "finetune")
    target = "small" if at.session_state["active_adapter"] == "other" else "other"
    keep = "other" if target == "small" else "small"
    at.selectbox(key="manage_adapter").set_value(target).run()
    click(at, "Activate")
    assert at.session_state["active_adapter"] == target

    at.toggle(key="manage_enabled").set_value(False).run()
    assert_clean(at)
    assert any("equal the base model's exactly" in str(s.value) for s in at.success)
    at.toggle(key="manage_enabled").set_value(True).run()

    at.selectbox(key="manage_adapter").set_value(target).run()
    at.text_input(key="manage_new_name").input("bad/name").run()
    click(at, "Rename")
    assert any("Cannot rename" in str(e.value) for e in at.error)
    at.text_input(key="manage_new_name").input("renamed").run()
    click(at, "Rename")
    assert sorted(p.name for p in adapters.iterdir()) == sorted(["renamed", keep])
    assert at.session_state["active_adapter"] == "renamed"

    at.selectbox(key="manage_adapter").set_value("renamed").run()
    assert at.button(key="manage_delete").disabled
    at.checkbox(key="manage_confirm_delete").check().run()
    click(at, "Delete")
    assert [p.name for p in adapters.iterdir() if not p.name.startswith(".")] == [keep]
    assert at.session_state["active_adapter"] is None
    assert_clean(at)
    assert at.download_button, "the download button is shown"


def test_run_the_whole_study_from_home(fresh_dir: Path) -> None:
    at = new_app()
    at.number_input(key="study_h1").set_value(64)
    at.number_input(key="study_h2").set_value(64)
    at.number_input(key="study_steps").set_value(20)
    click(at, "Run the whole study")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    assert {"train", "finetune"} <= set(job.phases)
    assert_clean(at)
    labels = [m.label for m in at.metric]
    assert "Base accuracy" in labels and "Parameters added by LoRA" in labels
    assert any(
        "Base weights unchanged" in str(s.value) and "study's own comparison" in str(s.value) for s in at.success
    )
    at.session_state["home_tensors"] = True  # the table is drawn once its expander is open
    at.run()
    per_tensor = next(df.value for df in at.dataframe if "bit-identical" in df.value.columns)
    assert len(per_tensor) == 6 and per_tensor["bit-identical"].all()
    # the study's adapter is the one saved, and this session switched to it (the sidebar marks it active)
    name = job.result["adapter"]["name"]
    assert ArtifactStore(fresh_dir).adapter_names() == [name]
    assert at.session_state["active_adapter"] == name
    sidebar = [str(m.value) for m in at.sidebar.markdown]
    assert any(f"`{name}`" in line and "**active**" in line for line in sidebar), sidebar


def test_offer_on_a_page_trains_right_there(fresh_dir: Path) -> None:
    at = visit(new_app(), "evaluation")
    assert_clean(at)
    # the offer uses the default (full-size) settings; stop it at once and check nothing was saved
    click(at, next(b.label for b in at.button if b.label.startswith("Train the base model")))
    job = at.session_state["job"]
    job.stop()
    wait_for_job(at)
    assert job.status == jobs.STOPPED
    assert not ArtifactStore(fresh_dir).has_base()
    assert_clean(at)


def test_two_sessions_share_saved_work(trained_dir: Path) -> None:
    first, second = visit(new_app(), "finetune"), visit(new_app(), "evaluation")
    assert second.session_state["active_adapter"] == "small"
    first.checkbox(key="manage_confirm_delete").check().run()
    click(first, "Delete")
    second.run()  # the other session sees the adapter gone and falls back to the base model
    assert_clean(second)
    assert second.session_state["active_adapter"] is None
    assert "small" not in "\n".join(str(m.value) for m in second.sidebar.markdown)


def test_finetune_page_trains_a_dora_adapter_and_counts_its_magnitudes(trained_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    at.number_input(key="ft_steps").set_value(5)
    at.number_input(key="ft_batch").set_value(32)
    at.text_input(key="ft_name").input("dora")
    plain = next(str(c.value) for c in at.caption if "trainable parameters" in str(c.value))
    at.toggle(key="ft_dora").set_value(True).run()
    counted = next(str(c.value) for c in at.caption if "trainable parameters" in str(c.value))
    assert plain != counted  # the magnitudes: one per output row of each adapted layer
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    config = json.loads((trained_dir / "adapters" / "dora" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert_clean(at)
    # the pages that turn an adapter's strength or cut its rank say why a DoRA adapter has neither
    visit(at, "evaluation")
    assert not at.error and any("no strength to turn down" in str(c.value) for c in at.caption)
    assert any(chart_title(spec) == "Per-digit test accuracy" for spec, _ in vega_charts(at))
    visit(at, "parameters")
    assert not at.error and any("is a DoRA adapter" in str(i.value) for i in at.info)
    visit(at, "draw")
    assert not at.error and not [s for s in at.select_slider if s.key == "draw_strength"]
