"""The checks that fine-tuning leaves the base weights alone must pass on the real loop and FAIL on a
loop that also trains W: in the library, in the CLI (`prove`, `inspect`) and in the recorded hashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lora_core.cli import main
from lora_core.data import MnistData
from lora_core.lab.proof import FAIL, INCONCLUSIVE, PASS, live_check, recorded_check, tensor_sha256
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.model import MLP
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig

BASE_KEYS = [f"linear{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")]


def state(model: MLP) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --- the live check ---------------------------------------------------------------------------------------
def test_live_check_passes_on_the_real_loop(small_base: MLP, small_mnist: MnistData) -> None:
    before = state(small_base)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    check = live_check(small_base, small_mnist)
    assert check.verdict == PASS and check.passed, check.summary
    assert [d.key for d in check.lora] == BASE_KEYS
    assert all(d.identical and d.max_abs_diff == 0.0 for d in check.lora)
    assert all(not d.identical and d.max_abs_diff > 0 for d in check.control)  # the control moved every tensor
    assert [n.layer for n in check.adapter] == ["linear1", "linear2", "linear3"]
    for n in check.adapter:
        assert n.b_before == 0.0 < n.b_after and n.a_before > 0 and n.a_changed and n.b_changed
    assert check.steps == 20 and check.seconds["total"] >= check.seconds["lora"] + check.seconds["control"]
    data = json.loads(json.dumps(check.to_dict()))
    assert data["verdict"] == "PASS" and data["passed"] is True and len(data["control_run"]) == 6
    # the caller's model and random generator are left as they were
    assert all(torch.equal(before[k], v) for k, v in small_base.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and torch.get_num_threads() == threads


def test_live_check_fails_when_the_loop_also_trains_w(
    small_base: MLP, small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch, corrupt_training
) -> None:
    corrupt_training(monkeypatch)
    check = live_check(small_base, small_mnist, steps=5)
    assert check.verdict == FAIL and not check.passed
    assert not check.base_identical
    assert all(d.max_abs_diff > 0 and not d.identical for d in check.lora)
    assert check.summary.startswith("FAIL")


def test_live_check_without_a_moving_control_is_inconclusive(small_base: MLP, small_mnist: MnistData) -> None:
    # at lr 1e-30 an Adam step is far below float32's resolution of W: W cannot move, so an unchanged W
    # shows nothing (B, starting at exactly 0, still moves)
    check = live_check(small_base, small_mnist, steps=3, lr=1e-30)
    assert check.base_identical and not check.control_changed
    assert check.verdict == INCONCLUSIVE and not check.passed
    assert "PASS" not in check.summary


# --- the recorded hashes ----------------------------------------------------------------------------------
def test_a_fine_tune_run_records_the_hash_of_every_base_tensor(trained_artifacts: Path) -> None:
    store = ArtifactStore(trained_artifacts)
    metrics = store.read_adapter("small").metrics
    assert metrics is not None
    record = metrics["base_tensors"]
    assert record["recorded_by"] == "fine-tune run" and record["recorded"].startswith("20")
    on_disk = load_file(trained_artifacts / "base" / "model.safetensors")
    assert record["before"] == record["after"] == {k: tensor_sha256(on_disk[k]) for k in BASE_KEYS}
    check = recorded_check(metrics, store.load_base("cpu").model)
    assert check.status == "unchanged" and check.passed
    assert all(t.unchanged and t.matches_loaded for t in check.tensors) and len(check.tensors) == 6
    assert "recorded by the fine-tune run on 20" in check.source


def test_recorded_check_needs_a_record_and_the_same_base(trained_artifacts: Path) -> None:
    store = ArtifactStore(trained_artifacts)
    metrics = dict(store.read_adapter("small").metrics or {})
    base = store.load_base("cpu").model
    old = {k: v for k, v in metrics.items() if k != "base_tensors"}  # an adapter saved before this change
    check = recorded_check(old, base)
    assert check.status == "not recorded" and not check.passed and "PASS" not in check.summary
    other = MLP(*base.hidden)
    other.load_state_dict(state(base))
    with torch.no_grad():
        other.linear2.bias[0] += 1e-3
    check = recorded_check(metrics, other)
    assert check.status == "different base" and not check.passed
    assert [t.tensor for t in check.tensors if not t.matches_loaded] == ["linear2.bias"]
    # the table the CLI and the Parameters page show: short hashes and both verdicts, per tensor
    recorded = metrics["base_tensors"]
    rows = {row["base tensor"]: row for row in check.rows(digits=8)}
    assert list(rows) == [f"linear{i}.{kind}" for i in (1, 2, 3) for kind in ("weight", "bias")]
    for name, row in rows.items():
        assert row["sha256 before"] == recorded["before"][name][:8]
        assert row["sha256 after"] == recorded["after"][name][:8]
        assert row["loaded base"] == tensor_sha256(other.state_dict()[name])[:8]
        assert row["during fine-tuning"] == "unchanged"
        assert row["matches the loaded base"] == ("NO" if name == "linear2.bias" else "yes")
    assert len(check.rows()[0]["sha256 before"]) == 12
    assert recorded_check(old, base).rows() == []
    no_after = {**metrics, "base_tensors": {k: v for k, v in recorded.items() if k != "after"}}
    assert {row["sha256 after"] for row in recorded_check(no_after, base).rows()} == {"-"}


def test_an_adapter_fine_tuned_by_a_corrupted_loop_is_recorded_as_changed(
    artifacts_copy: Path,
    small_mnist: MnistData,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    corrupt_training,
) -> None:
    store = ArtifactStore(artifacts_copy)
    base, lora_model = load_base_for_lora(store, "cpu")
    corrupt_training(monkeypatch)
    config = FinetuneConfig(rank=2, steps=5, batch_size=32, device="cpu")
    finetune_and_save_adapter(store, base, lora_model, small_mnist, config, name="bad")
    monkeypatch.undo()
    metrics = store.read_adapter("bad").metrics
    check = recorded_check(metrics, store.load_base("cpu").model)
    assert check.status == "changed" and not check.passed
    assert all(not t.unchanged and t.matches_loaded for t in check.tensors)

    out_json = artifacts_copy.parent / "inspect.json"
    code = main(["inspect", "--adapter", "bad", "--artifacts", str(artifacts_copy), "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0
    assert "recorded by the fine-tune run on" in out and "Base weights: CHANGED" in out
    assert out.count("CHANGED") == 7  # six tensors and the verdict
    data = json.loads(out_json.read_text())
    assert data["recorded_check"]["status"] == "changed" and data["recorded_check"]["passed"] is False


# --- the CLI ----------------------------------------------------------------------------------------------
def test_prove_passes_and_writes_json(trained_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_json = tmp_path / "prove.json"
    code = main(["prove", "--artifacts", str(trained_artifacts), "--steps", "10", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASS" in out and "FAIL" not in out
    assert "LoRA: max |diff|" in out and "control: max |diff|" in out and "|A| before" in out
    data = json.loads(out_json.read_text())
    assert data["verdict"] == "PASS" and data["steps"] == 10 and data["seconds"]["wall"] > 0
    assert all(r["identical"] for r in data["lora_run"]) and all(r["changed"] for r in data["control_run"])


def test_prove_fails_on_a_loop_that_trains_w(
    trained_artifacts: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    corrupt_training,
) -> None:
    corrupt_training(monkeypatch)
    out_json = tmp_path / "prove.json"
    code = main(["prove", "--artifacts", str(trained_artifacts), "--steps", "5", "--json", str(out_json)])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAIL" in captured.out and "PASS" not in captured.out
    assert len(captured.err.strip().splitlines()) == 1 and "FAIL" in captured.err
    assert json.loads(out_json.read_text())["verdict"] == "FAIL"


@pytest.mark.parametrize(
    ("args", "words"), [(["--steps", "0"], ["steps", "0"]), ([], ["no base model"])], ids=["steps-0", "no-base"]
)
def test_prove_bad_input_is_one_line(
    args: list[str], words: list[str], trained_artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = trained_artifacts if args else tmp_path / "empty"
    code = main(["prove", "--artifacts", str(folder), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err
