"""The checks that fine-tuning leaves the base weights alone must pass on the real loop and FAIL on a
loop that also trains W: in the library, in the CLI (`prove`, `inspect`) and in the recorded hashes."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lora_core.cli import main
from lora_core.data import MnistData
from lora_core.lab import proof as proof_module
from lora_core.lab.proof import (
    FAIL,
    INCONCLUSIVE,
    LIVE_ADAPTER,
    PASS,
    AdapterNorms,
    LiveCheck,
    base_tensor_hashes,
    base_tensor_record,
    base_tensors,
    live_check,
    recorded_check,
    tensor_sha256,
)
from lora_core.lab.study import finetune_and_save_adapter, load_base_for_lora
from lora_core.lora import LoraConfig, LoraModel
from lora_core.model import MLP
from lora_core.params import WeightCheck
from lora_core.store.artifacts import ArtifactStore
from lora_core.threads import torch_threads
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
    # PiSSA beside them: W untouched where its adapter lives, its residual base different on every weight
    assert all(d.identical for d in check.pissa_base)
    assert {d.key for d in check.pissa_residual if not d.identical} == {
        "linear1.weight",
        "linear2.weight",
        "linear3.weight",
    }
    assert "W stays bit-identical" in check.pissa_summary and "differs from W on linear1.weight" in check.pissa_summary
    # QLoRA beside them: W untouched, and the NF4 base's codes and scales the same after its steps as before
    assert all(d.identical for d in check.qlora_base) and len(check.qlora_codes["before"]) == 15
    assert check.qlora_codes["before"] == check.qlora_codes["after"]
    assert (
        "W stays bit-identical, and its NF4 base's 15 code and scale tensors are bit-identical" in check.qlora_summary
    )
    # the caller's model and random generator are left as they were
    assert all(torch.equal(before[k], v) for k, v in small_base.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state()) and torch.get_num_threads() == threads


def test_the_live_check_reports_nf4_codes_that_training_changed(
    tiny_base: MLP, small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_finetune = proof_module.finetune

    def finetune_that_flips_a_code(model: LoraModel, name: str, data: MnistData, config: Any, **kw: Any) -> Any:
        run = real_finetune(model, name, data, config, **kw)
        for layer in model.quantized_layers(name).values():
            layer.weight_nf4.quantized_data[0] ^= 1  # one 4-bit code of each NF4 layer
        return run

    monkeypatch.setattr(proof_module, "finetune", finetune_that_flips_a_code)
    check = live_check(tiny_base, small_mnist, steps=2)
    assert "CHANGED (linear1.weight.quantized_data, linear2.weight.quantized_data" in check.qlora_summary


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


# --- the same checks on a tiny untrained base (fast: `make mutate` runs these against lora_core/lab/proof.py) --
@pytest.fixture
def tiny_base() -> MLP:
    """An untrained 784 -> 16 -> 16 -> 10 MLP: the checks need real base tensors, not a good model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLP(16, 16)


def test_tensor_sha256_is_the_sha256_of_the_float32_bytes_whatever_the_dtype() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    expected = hashlib.sha256(t.numpy().tobytes()).hexdigest()
    assert tensor_sha256(t) == expected
    assert tensor_sha256(t.double()) == expected  # float64 holding the same values hashes as float32
    assert tensor_sha256(t.t().contiguous().t()) == expected  # another memory layout, the same bytes hashed
    assert tensor_sha256(torch.nn.Parameter(t.clone())) == expected
    assert tensor_sha256(t + 1e-3) != expected


def test_base_tensors_of_a_lora_model_are_its_base_mlp_tensors_under_plain_keys(tiny_base: MLP) -> None:
    plain = {k: v.clone() for k, v in base_tensors(tiny_base).items()}
    assert list(plain) == BASE_KEYS
    lora_model = LoraModel(copy.deepcopy(tiny_base))
    lora_model.add_adapter("a", LoraConfig(r=2), seed=0)
    for of in (lora_model, lora_model.model):  # the LoraModel and the MLP whose layers it wrapped
        tensors = base_tensors(of)
        assert list(tensors) == BASE_KEYS and all(torch.equal(tensors[k], plain[k]) for k in BASE_KEYS)
    hashes = base_tensor_hashes(lora_model)
    assert hashes == base_tensor_hashes(tiny_base) == {k: tensor_sha256(v) for k, v in plain.items()}
    assert len(set(hashes.values())) == len(BASE_KEYS)


def test_a_base_tensor_record_holds_both_hashes_who_recorded_them_and_when() -> None:
    record = base_tensor_record({"w": "1"}, {"w": "2"})
    assert set(record) == {"recorded_by", "recorded", "before", "after"}
    assert record["recorded_by"] == "fine-tune run" and record["before"] == {"w": "1"} and record["after"] == {"w": "2"}
    recorded = datetime.fromisoformat(record["recorded"])
    assert recorded.utcoffset() == timedelta(0) and abs(datetime.now(UTC) - recorded) < timedelta(minutes=5)


def test_recorded_check_of_matching_hashes_is_unchanged_tensor_by_tensor(tiny_base: MLP) -> None:
    hashes = base_tensor_hashes(tiny_base)
    record = {"recorded_by": "fine-tune run", "recorded": "2026-01-02T03:04:05+00:00", "before": hashes}
    check = recorded_check({"accuracy": 0.5, "base_tensors": {**record, "after": dict(hashes)}}, tiny_base)
    assert check.status == "unchanged" and check.passed
    assert check.recorded_by == "fine-tune run" and check.recorded == "2026-01-02T03:04:05+00:00"
    assert check.source == "recorded by the fine-tune run on 2026-01-02 03:04:05 UTC"
    assert [(t.tensor, t.before, t.after, t.loaded) for t in check.tensors] == [
        (k, hashes[k], hashes[k], hashes[k]) for k in BASE_KEYS
    ]
    tensors = [
        {
            "tensor": k,
            "before": hashes[k],
            "after": hashes[k],
            "loaded": hashes[k],
            "unchanged": True,
            "matches_loaded": True,
        }
        for k in BASE_KEYS
    ]
    assert check.to_dict() == {
        "status": "unchanged",
        "passed": True,
        "source": check.source,
        "recorded_by": "fine-tune run",
        "recorded": "2026-01-02T03:04:05+00:00",
        "tensors": tensors,
    }


@pytest.mark.parametrize(
    "metrics",
    [
        None,
        {},
        {"accuracy": 0.5},
        {"base_tensors": "abc"},
        {"base_tensors": {"after": {}}},
        {"base_tensors": {"before": []}},
    ],
    ids=["none", "empty", "no-record", "not-a-dict", "no-before", "before-not-a-dict"],
)
def test_recorded_check_without_recorded_hashes_before_is_not_recorded(
    metrics: dict[str, Any] | None, tiny_base: MLP
) -> None:
    check = recorded_check(metrics, tiny_base)
    assert check.status == "not recorded" and not check.passed
    assert check.tensors == [] and check.rows() == [] and check.recorded_by is None and check.recorded is None


def test_recorded_check_tells_a_changed_tensor_from_a_different_base(tiny_base: MLP) -> None:
    hashes = base_tensor_hashes(tiny_base)
    after = {**hashes, "linear1.bias": "0" * 64}
    check = recorded_check({"base_tensors": {"before": hashes, "after": after}}, tiny_base)
    assert check.status == "changed" and not check.passed
    assert [t.tensor for t in check.tensors if not t.unchanged] == ["linear1.bias"]
    assert check.recorded_by == "unknown" and check.recorded is None  # a record that does not say
    assert check.source == "recorded by the unknown on an unknown date"
    # a tensor recorded but not in the base in use comes after the base's own, and makes it another base
    extra = {**hashes, "linear4.weight": "f" * 64}
    check = recorded_check({"base_tensors": {"before": extra, "after": extra}}, tiny_base)
    assert check.status == "different base" and not check.passed
    assert [t.tensor for t in check.tensors] == [*BASE_KEYS, "linear4.weight"]
    assert [t.tensor for t in check.tensors if not t.matches_loaded] == ["linear4.weight"]
    # a tensor of the base in use that was never hashed did not stay the same as far as the record shows
    missing = {k: v for k, v in hashes.items() if k != "linear3.weight"}
    check = recorded_check({"base_tensors": {"before": missing, "after": missing}}, tiny_base)
    assert check.status == "changed" and [t.tensor for t in check.tensors] == BASE_KEYS
    assert check.tensors[4].before is None and check.tensors[4].loaded == hashes["linear3.weight"]


def test_recorded_check_rows_give_short_hashes_a_dash_where_none_and_both_verdicts(tiny_base: MLP) -> None:
    h = base_tensor_hashes(tiny_base)
    before = {**{k: v for k, v in h.items() if k != "linear1.weight"}, "linear4.weight": "f" * 64}
    after = {
        **{k: v for k, v in h.items() if k != "linear3.bias"},
        "linear2.bias": "ab" * 32,
        "linear4.weight": "f" * 64,
    }
    rows = recorded_check({"base_tensors": {"before": before, "after": after}}, tiny_base).rows(digits=6)
    assert [row["base tensor"] for row in rows] == [*BASE_KEYS, "linear4.weight"]

    def row(tensor: str, before: str, after: str, loaded: str, during: str, matches: str) -> dict[str, str]:
        return {
            "base tensor": tensor,
            "sha256 before": before,
            "sha256 after": after,
            "loaded base": loaded,
            "during fine-tuning": during,
            "matches the loaded base": matches,
        }

    w1, b1, b2, b3 = (h[k][:6] for k in ("linear1.weight", "linear1.bias", "linear2.bias", "linear3.bias"))
    assert rows[0] == row("linear1.weight", "-", w1, w1, "CHANGED", "NO")
    assert rows[1] == row("linear1.bias", b1, b1, b1, "unchanged", "yes")
    assert rows[3] == row("linear2.bias", b2, "ababab", b2, "CHANGED", "yes")
    assert rows[5] == row("linear3.bias", b3, "-", b3, "CHANGED", "yes")
    assert rows[6] == row("linear4.weight", "ffffff", "ffffff", "-", "unchanged", "NO")
    full = recorded_check({"base_tensors": {"before": before, "after": after}}, tiny_base).rows()
    assert full[1]["sha256 before"] == h["linear1.bias"][:12]  # twelve hex digits unless told


def test_live_check_to_dict_holds_every_field_under_its_name() -> None:
    lora = [WeightCheck("linear1.weight", 0.0, True)]
    control = [WeightCheck("linear1.weight", 0.5, False)]
    norms = [AdapterNorms("linear1", 1.0, 1.5, 0.0, 0.25, True, True)]
    seconds = {"lora": 1.0, "control": 2.0, "total": 3.5}
    check = LiveCheck(7, 32, 1e-3, 4, 3, lora, control, norms, seconds)
    assert check.to_dict() == {
        "verdict": "PASS",
        "passed": True,
        "summary": check.summary,
        "base_identical": True,
        "adapter_changed": True,
        "control_changed": True,
        "steps": 7,
        "batch_size": 32,
        "lr": 1e-3,
        "rank": 4,
        "seed": 3,
        "lora_run": [{"tensor": "linear1.weight", "max_abs_diff": 0.0, "identical": True}],
        "control_run": [{"tensor": "linear1.weight", "max_abs_diff": 0.5, "changed": True}],
        "adapter": [
            {
                "layer": "linear1",
                "a_before": 1.0,
                "a_after": 1.5,
                "b_before": 0.0,
                "b_after": 0.25,
                "a_changed": True,
                "b_changed": True,
            }
        ],
        "seconds": seconds,
        "pissa_summary": "",
        "pissa_base": [],
        "pissa_residual": [],
        "qlora_summary": "",
        "qlora_base": [],
        "qlora_codes": {},
    }


def test_live_check_trains_all_ten_digits_and_its_control_only_the_base_tensors(
    tiny_base: MLP, small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_finetune, real_train_parameters = proof_module.finetune, proof_module.train_parameters

    def finetune_spy(lora_model: LoraModel, name: str, data: MnistData, config: FinetuneConfig) -> object:
        # LoRA's run first, then PiSSA's, then QLoRA's
        seen["qlora" if "pissa" in seen else "pissa" if "lora" in seen else "lora"] = (name, data, config)
        return real_finetune(lora_model, name, data, config)

    def train_parameters_spy(
        model: LoraModel, params: list, data: MnistData, config: FinetuneConfig, *, phase: str
    ) -> object:
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["control"] = ([tuple(p.shape) for p in params], trainable, data, config, phase)
        return real_train_parameters(model, params, data, config, phase=phase)

    monkeypatch.setattr(proof_module, "finetune", finetune_spy)
    monkeypatch.setattr(proof_module, "train_parameters", train_parameters_spy)
    start = time.perf_counter()
    check = live_check(tiny_base, small_mnist, steps=3, batch_size=16, lr=1e-2, rank=2, seed=5)
    wall = time.perf_counter() - start
    assert check.verdict == PASS and check.passed, check.summary
    assert (check.steps, check.batch_size, check.lr, check.rank, check.seed) == (3, 16, 1e-2, 2, 5)
    name, data, config = seen["lora"]
    assert name == LIVE_ADAPTER and data is small_mnist
    assert (config.digits, config.replay, config.rank, config.steps, config.batch_size, config.lr, config.seed) == (
        tuple(range(10)),
        0.0,
        2,
        3,
        16,
        1e-2,
        5,
    )
    shapes, trainable, data, control_config, phase = seen["control"]  # the same config, only W trainable
    assert shapes == [tuple(v.shape) for v in tiny_base.state_dict().values()] and len(trainable) == len(BASE_KEYS)
    assert all(".lora_" not in n for n in trainable)
    assert data is small_mnist and control_config is config and phase == "finetune"
    assert [d.key for d in check.lora] == [d.key for d in check.control] == BASE_KEYS
    assert [n.layer for n in check.adapter] == ["linear1", "linear2", "linear3"]
    for n in check.adapter:
        assert n.a_before > 0 and n.a_after > 0 and n.a_after != n.a_before and n.a_changed
        assert n.b_before == 0.0 < n.b_after and n.b_changed
    assert seen["pissa"][2] == dataclasses.replace(config, init="pissa")  # PiSSA: the same steps, its own start
    assert seen["qlora"][2] == dataclasses.replace(config, base_precision="nf4")  # QLoRA: the same on NF4
    assert set(check.seconds) == {"lora", "control", "pissa", "qlora", "total"}
    assert 0 < check.seconds["lora"] + check.seconds["control"] <= check.seconds["total"] <= wall


def test_live_check_at_a_vanishing_learning_rate_moves_b_but_neither_a_nor_w(
    tiny_base: MLP, small_mnist: MnistData
) -> None:
    # at lr 1e-30 Adam's steps vanish against A and W; B, starting at exactly 0, still moves
    check = live_check(tiny_base, small_mnist, steps=2, batch_size=16, lr=1e-30, rank=2)
    assert check.verdict == INCONCLUSIVE and check.base_identical and not check.control_changed
    assert not check.adapter_changed and len(check.adapter) == 3
    for n in check.adapter:
        assert not n.a_changed and n.a_after == n.a_before > 0
        assert n.b_changed and n.b_before == 0.0


class StopBeforeTraining(Exception):
    pass


def test_live_check_defaults_to_20_steps_of_64_at_rank_8_on_one_thread_and_restores_the_threads(
    tiny_base: MLP, small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, FinetuneConfig]] = []

    def finetune_spy(lora_model: LoraModel, name: str, data: MnistData, config: FinetuneConfig) -> None:
        seen.append((torch.get_num_threads(), config))
        raise StopBeforeTraining  # what the check trains with is all this test needs

    monkeypatch.setattr(proof_module, "finetune", finetune_spy)
    with torch_threads(3):
        for threads in ({}, {"threads": 2}, {"threads": None}):
            with pytest.raises(StopBeforeTraining):
                live_check(tiny_base, small_mnist, **threads)
            assert torch.get_num_threads() == 3  # restored, even after an error
    assert [count for count, _ in seen] == [1, 2, 3]
    config = seen[0][1]
    assert (config.steps, config.batch_size, config.lr, config.rank, config.seed) == (20, 64, 3e-3, 8, 0)


def test_live_check_of_a_lora_model_copies_its_base_and_leaves_it_and_the_random_state_alone(
    tiny_base: MLP, small_mnist: MnistData
) -> None:
    lora_model = LoraModel(tiny_base)
    lora_model.add_adapter("mine", LoraConfig(r=2), seed=0)
    with torch.no_grad():
        for layer in lora_model.lora_layers().values():
            layer.lora_B["mine"].weight.fill_(0.5)  # an adapter that acts: the check must leave it out
    before = {k: v.clone() for k, v in lora_model.state_dict().items()}
    rng = torch.get_rng_state()
    check = live_check(lora_model, small_mnist, steps=2, batch_size=16, rank=2)
    assert check.passed and [d.key for d in check.lora] == BASE_KEYS
    assert list(lora_model.adapters) == ["mine"] and lora_model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in lora_model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
