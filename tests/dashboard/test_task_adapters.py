"""Task adapters are normal adapters on the reading pages: a rotate:45 adapter is judged on the rotated test
set and on plain MNIST, the sidebar names its task, a rank above linear3's limit shows capped there (on the
Parameters page and, before the run, on the Fine-tuning page), and the adapters of the base trained without
8 and 9 are reached by choosing that base. Small settings: a MNIST subset, a few steps."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import assert_clean, click, new_app, texts, visit, wait_for_job
from safetensors.torch import load_file

from dashboard import jobs
from lora_core.data import MnistData
from lora_core.evaluate import evaluate
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import run_experiment
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.lab.tasks import parse_task
from lora_core.lora import LoraModel
from lora_core.numbers import pct
from lora_core.store.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ArtifactStore
from lora_core.store.bases import base_store
from lora_core.train import FinetuneConfig, TrainConfig

SETTINGS = ExperimentSettings(methods=("lora",), steps=30, batch_size=32, rank=2, device="cpu")
SMALL_BASE = TrainConfig(epochs=1, batch_size=128, lr=2e-3, seed=0, device="cpu", hidden=(256, 256))
WIDE = FinetuneConfig(rank=16, alpha=32, steps=3, batch_size=16, seed=0, device="cpu")


@pytest.fixture(scope="module")
def task_artifacts(trained_artifacts: Path, small_mnist: MnistData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small trained artifacts plus: a rotate:45 adapter and a rank 16 adapter `wide` on the main base,
    and the base trained without 8 and 9 (bases/unseen-8-9) with its adapter. Copy before changing it."""
    root = tmp_path_factory.mktemp("task-adapters") / "artifacts"
    shutil.copytree(trained_artifacts, root)
    store = ArtifactStore(root)
    run_experiment(store, small_mnist, parse_task("rotate:45"), SETTINGS)
    unseen = ExperimentSettings(methods=("lora",), steps=30, batch_size=32, rank=2, lora_lr=1e-2, device="cpu")
    run_experiment(store, small_mnist, parse_task("unseen:8,9"), unseen, base_config=SMALL_BASE)
    base, lora_model = load_base_for_lora(store, "cpu")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, WIDE, name="wide")
    return root


@pytest.fixture
def task_dir(task_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "artifacts"
    shutil.copytree(task_artifacts, root)
    monkeypatch.setenv("LORA_ARTIFACTS_DIR", str(root))
    return root


def metrics(at) -> dict[str, str]:  # noqa: ANN001 - AppTest
    return {m.label: m.value for m in at.metric}


def adapted(store: ArtifactStore, name: str) -> tuple[torch.nn.Module, LoraModel]:
    base = store.load_base("cpu")
    model = LoraModel(store.load_base("cpu").model)
    store.load_adapter(model, name, base.fingerprint)
    model.set_adapter(name)
    return base.model, model


def files_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_a_rotate_adapter_is_judged_on_the_rotated_test_set_and_on_plain_mnist(task_dir: Path, mnist: MnistData):
    at = visit(new_app(), "evaluation")
    at.selectbox(key="eval_adapter").set_value("rotate-45").run()
    assert_clean(at)
    base, model = adapted(ArtifactStore(task_dir), "rotate-45")
    rotated = parse_task("rotate:45").transform_normalized(mnist.test_x)
    expected = {
        "base rotated": evaluate(base, rotated, mnist.test_y).accuracy,
        "adapter rotated": evaluate(model, rotated, mnist.test_y).accuracy,
        "base plain": evaluate(base, mnist.test_x, mnist.test_y).accuracy,
        "adapter plain": evaluate(model, mnist.test_x, mnist.test_y).accuracy,
    }
    shown = metrics(at)
    assert shown["Base model on the task's test set"] == pct(expected["base rotated"])
    assert shown["With adapter rotate-45 on the task's test set"] == pct(expected["adapter rotated"])
    assert shown["With adapter rotate-45 on plain MNIST"] == pct(expected["adapter plain"])
    assert shown["Base model accuracy"] == pct(expected["base plain"])
    assert shown["With adapter rotate-45"] == pct(expected["adapter plain"])
    # the task set is another test set: the base reads rotated digits far worse, and the adapter learned them
    assert expected["base rotated"] < expected["base plain"] - 0.2
    assert expected["adapter rotated"] > expected["base rotated"]
    headers = [str(h.value) for h in at.header]
    assert "On the task's own test set: rotate 45°" in headers
    assert "On plain MNIST: the adapter applied vs the base model" in headers
    assert not any(m.startswith("Target digit") for m in shown), "a domain task singles out no digit"
    table = next(d.value for d in at.dataframe if "task set: base %" in d.value.columns)
    assert list(table["digit"]) == list(range(10))
    per_digit = evaluate(base, rotated, mnist.test_y).per_digit_accuracy
    assert table["task set: base %"].tolist() == [round(100 * a, 2) for a in per_digit]
    assert table["task set: base %"].tolist() != table["plain MNIST: base %"].tolist()


def test_the_sidebar_names_a_task_adapter_by_its_task(task_dir: Path) -> None:
    at = visit(new_app(), "evaluation")
    assert_clean(at)
    sidebar = [str(m.value) for m in at.sidebar.markdown]
    lines = "\n".join(sidebar).splitlines()
    rotate = next(line for line in lines if "`rotate-45`" in line)
    assert "rotate 45°" in rotate and "digit" not in rotate, rotate
    small = next(line for line in lines if "`small`" in line)
    assert "· digit " in small, small  # the study's adapter keeps its target digit
    other = next(line for line in lines if "base without digits 8, 9" in line)
    assert "`unseen-8-9` · digits 8, 9 (unseen)" in other, other


def test_the_parameters_page_shows_a_capped_layer_rank_and_the_real_count(task_dir: Path, small_sizes) -> None:
    at = visit(new_app(), "parameters")
    at.selectbox(key="params_adapter").set_value("wide").run()
    assert_clean(at)
    ranks = next(d.value for d in at.dataframe if "capped" in d.value.columns)
    rows = {row["layer"]: row for row in ranks.to_dict("records")}
    assert rows["linear1"]["rank"] == 16 and rows["linear1"]["capped"] == ""
    assert rows["linear2"]["rank"] == 16 and rows["linear2"]["capped"] == ""
    assert rows["linear3"]["rank"] == 10 and rows["linear3"]["capped"] == "capped from r = 16"
    saved = load_file(task_dir / "adapters" / "wide" / ADAPTER_WEIGHTS)
    for layer in ("linear1", "linear2", "linear3"):
        real = sum(t.numel() for k, t in saved.items() if f".{layer}." in k)
        assert rows[layer]["A + B params"] == real, layer
    total = sum(t.numel() for t in saved.values())
    assert metrics(at)["Trainable (LoRA A and B)"] == f"{total:,}"
    caption = next(str(c.value) for c in at.caption if "Adapter `wide`" in str(c.value))
    assert "rank r = 16" in caption and "Capped: linear3 at 10" in caption and f"{total:,} trainable" in caption
    assert f"not the {16 * small_sizes.lora_per_rank:,}" in caption


def test_the_finetune_page_accepts_rank_16_and_shows_linear3_capped(task_dir: Path) -> None:
    at = visit(new_app(), "finetune")
    rank = at.number_input(key="ft_rank")
    assert rank.max == 64
    rank.set_value(16).run()
    assert at.number_input(key="ft_rank").value == 16
    note = next(str(c.value) for c in at.caption if "Per-layer ranks with r = 16" in str(c.value))
    assert "linear1 16, linear2 16, linear3 10 (capped: its limit is 10)" in note
    assert any("rank_pattern" in str(c.value) for c in at.caption)
    at.multiselect(key="ft_targets").set_value(["linear3"]).run()
    assert at.number_input(key="ft_rank").max == 10 and at.number_input(key="ft_rank").value == 10
    at.multiselect(key="ft_targets").set_value(["linear1", "linear2", "linear3"]).run()
    at.number_input(key="ft_rank").set_value(16)
    at.number_input(key="ft_steps").set_value(3)
    at.number_input(key="ft_batch").set_value(16)
    at.text_input(key="ft_name").input("r16")
    click(at, "Fine-tune the adapter")
    job = wait_for_job(at)
    assert job.status == jobs.DONE, job.error
    assert_clean(at)
    config = ArtifactStore(task_dir).read_adapter("r16").config
    assert config is not None and config.r == 16 and dict(config.rank_pattern) == {"linear3": 10}


def test_an_unseen_base_adapter_is_reached_by_choosing_its_base(task_dir: Path, mnist: MnistData) -> None:
    at = visit(new_app(), "evaluation")
    active = at.session_state["active_adapter"]
    assert "unseen-8-9" not in at.selectbox(key="eval_adapter").options  # it belongs to the other base
    before = files_state(task_dir)
    at.selectbox(key="eval_base").set_value("unseen-8-9").run()
    assert_clean(at)
    assert at.selectbox(key="eval_adapter-unseen-8-9").value == "unseen-8-9"
    sub = base_store(ArtifactStore(task_dir), "unseen-8-9")
    base, model = adapted(sub, "unseen-8-9")
    base_eval = evaluate(base, mnist.test_x, mnist.test_y)
    after = evaluate(model, mnist.test_x, mnist.test_y)
    shown = metrics(at)
    assert shown["Base model accuracy"] == pct(base_eval.accuracy)
    assert shown["With adapter unseen-8-9"] == pct(after.accuracy)
    on_targets = sum(after.confusion[d][d] for d in (8, 9)) / sum(after.support[d] for d in (8, 9))
    assert shown["Target digits 8, 9"] == pct(on_targets)
    table = next(d.value for d in at.dataframe if "base accuracy %" in d.value.columns)
    assert table["base accuracy %"][8] == 0.0 and table["base accuracy %"][9] == 0.0  # never saw 8 and 9
    assert table["adapted accuracy %"].tolist() == [round(100 * a, 2) for a in after.per_digit_accuracy]
    assert "Showing the base without digits 8, 9" in texts(at)

    # the choice holds on the other reading pages, which load that base and its adapter
    visit(at, "parameters")
    assert_clean(at)
    assert at.selectbox(key="params_base").value == "unseen-8-9"
    assert at.selectbox(key="params_adapter-unseen-8-9").value == "unseen-8-9"
    params = pd.DataFrame(at.dataframe[0].value)
    assert int(params["A params"].iloc[-1]) + int(params["B params"].iloc[-1]) == sum(
        t.numel() for t in load_file(sub.adapter_dir("unseen-8-9") / ADAPTER_WEIGHTS).values()
    )
    visit(at, "draw")
    assert_clean(at)
    assert at.selectbox(key="draw_adapter-unseen-8-9").value == "unseen-8-9"
    next(b for b in at.button if b.label == "Random test digit").click().run()
    assert_clean(at)
    assert set(metrics(at)) == {"Base model says", "With unseen-8-9 says"}

    # reading only: nothing written, and the main base's active adapter untouched
    assert files_state(task_dir) == before
    assert at.session_state["active_adapter"] == active
    assert (sub.adapter_dir("unseen-8-9") / ADAPTER_CONFIG).is_file()
    at.selectbox(key="draw_base").set_value("main").run()
    assert_clean(at)
    assert at.selectbox(key="draw_adapter").value == active
