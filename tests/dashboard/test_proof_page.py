"""The Parameters page's checks that the base weights did not change can fail: the live check says FAIL
on a training loop that also trains W, and an adapter fine-tuned by such a loop shows its recorded
hashes as changed. The home page's headline shows the recorded check, never a can't-fail comparison."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_clean, click, new_app, texts, visit

from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.numbers import pct
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig

LIVE = "Run the live check"


def test_live_check_passes_on_the_real_loop(trained_dir: Path) -> None:
    at = visit(new_app(), "parameters")
    assert not any("PASS" in str(s.value) for s in at.success)  # nothing says PASS before the check ran
    click(at, LIVE)
    assert_clean(at)
    assert any(str(s.value).startswith("PASS") for s in at.success), texts(at)
    assert not at.error
    assert any("Time: LoRA run" in str(c.value) for c in at.caption)
    pissa = [str(i.value) for i in at.info if str(i.value).startswith("PiSSA, the same 20 steps")]
    assert pissa and "W stays bit-identical" in pissa[0] and "differs from W on linear1.weight" in pissa[0]
    tables = {tuple(df.value.columns): df.value for df in at.dataframe}
    base = next(v for k, v in tables.items() if "control: changed" in k)
    assert len(base) == 6 and list(base["LoRA run: bit-identical"]) == ["yes"] * 6
    assert list(base["control: changed"]) == ["yes"] * 6
    assert (base["control: max |after − before|"] > 0).all()


def test_live_check_fails_on_a_loop_that_trains_w(
    trained_dir: Path, monkeypatch: pytest.MonkeyPatch, corrupt_training
) -> None:
    at = visit(new_app(), "parameters")
    corrupt_training(monkeypatch)
    click(at, LIVE)
    assert_clean(at)
    assert any(str(e.value).startswith("FAIL") for e in at.error), texts(at)
    assert not any("PASS" in str(s.value) for s in at.success)


def test_an_adapter_from_a_corrupted_loop_shows_changed_hashes(
    trained_dir: Path, small_mnist, monkeypatch: pytest.MonkeyPatch, corrupt_training
) -> None:
    store = ArtifactStore(trained_dir)
    base, lora_model = load_base_for_lora(store, "cpu")
    with monkeypatch.context() as patch:
        corrupt_training(patch)
        config = FinetuneConfig(rank=2, steps=5, batch_size=32, device="cpu")
        finetune_and_save_adapter(store, base, lora_model, small_mnist, config, name="bad")
    at = new_app()
    at.session_state["active_adapter"] = "bad"
    at.session_state["home_tensors"] = True  # the table is drawn once its expander is open
    at.run()
    assert any("Base weights CHANGED during fine-tuning" in str(e.value) for e in at.error), texts(at)
    home_hashes = next(df.value for df in at.dataframe if "during fine-tuning" in df.value.columns)
    assert list(home_hashes["during fine-tuning"]) == ["CHANGED"] * 6
    visit(at, "parameters")
    at.selectbox(key="params_adapter").set_value("bad").run()
    assert_clean(at)
    assert any("CHANGED" in str(e.value) and "recorded by the fine-tune run" in str(e.value) for e in at.error)
    hashes = next(df.value for df in at.dataframe if "during fine-tuning" in df.value.columns)
    assert list(hashes["during fine-tuning"]) == ["CHANGED"] * 6
    assert list(hashes["matches the loaded base"]) == ["yes"] * 6


def test_home_headline_names_the_target_and_the_weakest_digit(trained_dir: Path) -> None:
    at = new_app()
    assert_clean(at)
    target = next(m for m in at.metric if m.label == "Adapter's target digit")
    assert any(f"weakest digit is {target.value}" in str(c.value) and "target" in str(c.value) for c in at.caption)


def test_home_headline_of_an_adapter_on_two_digits_gives_their_mean(trained_dir: Path, small_mnist) -> None:
    """Not the first target alone under "Digit 0": the two targets' mean, said to be one."""
    store = ArtifactStore(trained_dir)
    base, lora_model = load_base_for_lora(store, "cpu")
    config = FinetuneConfig(digits=(0, 1), rank=2, steps=5, batch_size=32, device="cpu")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, config, name="pair")
    at = new_app()
    at.session_state["active_adapter"] = "pair"
    at.run()
    assert_clean(at)
    after = store.read_adapter("pair").metrics["after"]["per_digit_accuracy"]
    shown = next(m for m in at.metric if m.label == "Digits 0, 1 (mean) after LoRA")
    assert shown.value == pct((after[0] + after[1]) / 2)
    assert not any(m.label.startswith("Digit 0 ") for m in at.metric)
    captions = " ".join(str(c.value) for c in at.caption)
    assert "this adapter targets digits 0, 1 instead" in captions, captions
