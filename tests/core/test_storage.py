"""Saving and loading the base model and adapters: exact round trips, PEFT's layout, strict checks."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from core_helpers import file_bytes, random_mlp, randomize_b
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_core.errors import AdapterExistsError, ArtifactError, ConfigError, StaleAdapterError
from lora_core.lora import LoraConfig, LoraModel
from lora_core.store import artifacts, fileio, paths
from lora_core.store.artifacts import ADAPTER_CONFIG, ADAPTER_METRICS, ADAPTER_WEIGHTS, ArtifactStore, sha256_bytes

X = torch.randn(64, 784, generator=torch.Generator().manual_seed(3))
CONFIG = LoraConfig(r=3, alpha=6, target_modules=("linear1", "linear3"))


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """An artifacts folder with a random base model and one adapter 'a' (non-zero B) saved."""
    root = tmp_path_factory.mktemp("store-template")
    store = ArtifactStore(root)
    meta = store.save_base(random_mlp(), {"note": "test"})
    lora_model = LoraModel(store.load_base().model)
    lora_model.add_adapter("a", CONFIG, seed=0)
    randomize_b(lora_model, "a")
    store.save_adapter(lora_model, "a", {"target_digits": [9]}, meta["sha256"])
    return root


@pytest.fixture
def store(store_template, tmp_path) -> ArtifactStore:
    """A private copy of the template store."""
    root = tmp_path / "art"
    shutil.copytree(store_template, root)
    return ArtifactStore(root)


def fresh_lora(store: ArtifactStore) -> tuple[LoraModel, str]:
    record = store.load_base()
    return LoraModel(record.model), record.fingerprint


def reference_logits(store: ArtifactStore) -> torch.Tensor:
    """Logits of the saved adapter 'a', rebuilt by hand from the files."""
    base = store.load_base().model
    tensors = load_file(store.adapter_dir("a") / ADAPTER_WEIGHTS)
    with torch.no_grad():
        h = X
        for i, name in enumerate(("linear1", "linear2", "linear3")):
            layer = getattr(base, name)
            out = layer(h)
            key = f"base_model.model.{name}"
            if f"{key}.lora_A.weight" in tensors:
                out = out + h @ tensors[f"{key}.lora_A.weight"].T @ tensors[f"{key}.lora_B.weight"].T * CONFIG.scale
            h = torch.relu(out) if i < 2 else out
    return h


# --- base model ----------------------------------------------------------------------------------
def test_base_round_trip_is_exact(tmp_path):
    model = random_mlp(5)
    store = ArtifactStore(tmp_path)
    assert not store.has_base()
    meta = store.save_base(model, {"note": 1})
    assert store.has_base()
    record = store.load_base()
    original = model.state_dict()
    loaded = record.model.state_dict()
    assert set(loaded) == set(original)
    for key, value in original.items():
        assert torch.equal(loaded[key], value), key
    assert record.fingerprint == meta["sha256"] == sha256_bytes((tmp_path / "base" / "model.safetensors").read_bytes())
    assert meta["parameters"] == 2_807_010
    assert meta["note"] == 1
    assert record.meta == meta
    assert json.loads((tmp_path / "base" / "model.json").read_text()) == meta
    with torch.no_grad():
        assert torch.equal(record.model(X), model(X))
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == ["model.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no staging or backup folders left


def test_base_other_hidden_sizes_round_trip(tmp_path):
    from lora_core.model import MLP

    torch.manual_seed(0)
    model = MLP(16, 8)
    store = ArtifactStore(tmp_path)
    store.save_base(model, {})
    loaded = store.load_base().model
    assert loaded.hidden == (16, 8)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_no_base_model_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no base model"):
        ArtifactStore(tmp_path).load_base()
    assert list(tmp_path.iterdir()) == []


def test_base_weights_not_matching_sha256_are_rejected(store):
    path = store.base_dir / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        store.load_base()


def _rewrite_meta(store: ArtifactStore, change) -> None:
    path = store.base_dir / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("sha256"),
        lambda m: m.update(format="something.else"),
        lambda m: m["architecture"].update(hidden=[1000]),
        lambda m: m["architecture"].update(hidden=[1000, -1]),
        lambda m: m.pop("architecture"),
    ],
    ids=["no-sha256", "format", "one-hidden", "negative-hidden", "no-architecture"],
)
def test_base_meta_with_missing_or_bad_fields_is_rejected(store, change):
    _rewrite_meta(store, change)
    with pytest.raises(ArtifactError, match="model.json"):
        store.load_base()


def test_base_meta_malformed_json_is_rejected(store):
    (store.base_dir / "model.json").write_text('{"format": "lora_core.base.v1", ')
    with pytest.raises(ArtifactError, match="model.json"):
        store.load_base()


def test_base_wrong_shapes_and_dtype_are_rejected(store):
    model = random_mlp()
    for tensors, pattern in [
        ({k: v.double() for k, v in model.state_dict().items()}, "float64"),
        ({**model.state_dict(), "linear3.bias": torch.zeros(11)}, "linear3.bias"),
        ({k: v for k, v in model.state_dict().items() if k != "linear2.weight"}, "missing linear2.weight"),
    ]:
        path = store.base_dir / "model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        _rewrite_meta(store, lambda m, p=path: m.update(sha256=sha256_bytes(p.read_bytes())))
        with pytest.raises(ArtifactError, match=pattern) as info:
            store.load_base()
        assert "model.safetensors" in str(info.value)


def test_base_pickle_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "unpickled-marker"
    payload = pickle.dumps(_Evil(marker))
    path = store.base_dir / "model.safetensors"
    path.write_bytes(payload)
    _rewrite_meta(store, lambda m: m.update(sha256=sha256_bytes(payload)))  # even with a matching fingerprint
    with pytest.raises(ArtifactError, match="model.safetensors"):
        store.load_base()
    assert not marker.exists()


# --- adapters -----------------------------------------------------------------------------------
def test_adapter_folder_layout_keys_and_config(store):
    folder = store.adapter_dir("a")
    assert sorted(p.name for p in folder.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_METRICS])
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == ["a"]  # no staging leftovers
    tensors = load_file(folder / ADAPTER_WEIGHTS)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "base_model.model.linear1.lora_A.weight": (3, 784),
        "base_model.model.linear1.lora_B.weight": (1000, 3),
        "base_model.model.linear3.lora_A.weight": (3, 2000),
        "base_model.model.linear3.lora_B.weight": (10, 3),
    }
    assert all(v.dtype == torch.float32 for v in tensors.values())
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA"
    assert config["r"] == 3
    assert config["lora_alpha"] == 6
    assert config["target_modules"] == ["linear1", "linear3"]
    assert config["use_rslora"] is False
    assert config["bias"] == "none"
    assert config["fan_in_fan_out"] is False
    assert config["lora_dropout"] == 0.0
    metrics = json.loads((folder / ADAPTER_METRICS).read_text())
    assert metrics["name"] == "a"
    assert metrics["base_sha256"] == store.base_meta()["sha256"]
    assert metrics["target_digits"] == [9]


@pytest.mark.parametrize("r", [1, 8])
def test_adapter_keys_for_all_layers(tmp_path, r):
    store = ArtifactStore(tmp_path)
    meta = store.save_base(random_mlp(), {})
    lora_model = LoraModel(store.load_base().model)
    lora_model.add_adapter("full", LoraConfig(r=r, use_rslora=True), seed=0)
    store.save_adapter(lora_model, "full", {}, meta["sha256"])
    tensors = load_file(store.adapter_dir("full") / ADAPTER_WEIGHTS)
    sizes = {"linear1": (784, 1000), "linear2": (1000, 2000), "linear3": (2000, 10)}
    expected = {}
    for name, (n_in, n_out) in sizes.items():
        expected[f"base_model.model.{name}.lora_A.weight"] = (r, n_in)
        expected[f"base_model.model.{name}.lora_B.weight"] = (n_out, r)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    assert json.loads((store.adapter_dir("full") / ADAPTER_CONFIG).read_text())["use_rslora"] is True


def test_adapter_round_trip_gives_identical_logits(store):
    lora_model, fingerprint = fresh_lora(store)
    with torch.no_grad():
        base_out = lora_model(X)
    record = store.load_adapter(lora_model, "a", fingerprint)
    assert record.config == CONFIG
    assert lora_model.active_adapter is None  # loaded, not activated
    with torch.no_grad():
        assert torch.equal(lora_model(X), base_out)
        lora_model.set_adapter("a")
        out = lora_model(X)
    assert not torch.equal(out, base_out)
    torch.testing.assert_close(out, reference_logits(store), atol=1e-5, rtol=1e-5)
    assert all(not p.requires_grad for p in lora_model.parameters())
    # loaded tensors are bit-identical to the file
    tensors = load_file(store.adapter_dir("a") / ADAPTER_WEIGHTS)
    assert all(torch.equal(v, lora_model.adapter_state_dict("a")[k]) for k, v in tensors.items())
    # the same adapter under a second name
    store.load_adapter(lora_model, "a", fingerprint, as_name="a2")
    lora_model.set_adapter("a2")
    with torch.no_grad():
        assert torch.equal(lora_model(X), out)


def test_round_trip_of_the_trained_adapter(trained_artifacts):
    store = ArtifactStore(trained_artifacts)
    lm1, fp = fresh_lora(store)
    lm2, _ = fresh_lora(store)
    store.load_adapter(lm1, "small", fp)
    store.load_adapter(lm2, "small", fp)
    lm1.set_adapter("small")
    lm2.set_adapter("small")
    with torch.no_grad():
        assert torch.equal(lm1(X), lm2(X))


class _Evil:
    """Unpickling this creates `marker` (an open() call): proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _save_weights(store: ArtifactStore, tensors: dict[str, torch.Tensor]) -> None:
    """A weights file written whole by another tool, with its sha256 recorded: wrong in content, not damaged."""
    path = store.adapter_dir("a") / ADAPTER_WEIGHTS
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    _edit_json(store, ADAPTER_METRICS, lambda d: d.update(weights_sha256=sha256_bytes(path.read_bytes())))


def _overwrite_32_bytes_mid_file(store, tmp_path):
    path = store.adapter_dir("a") / ADAPTER_WEIGHTS
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = bytes(range(32))  # finite float32 values: the file still parses
    path.write_bytes(bytes(data))


def _truncated_without_a_recorded_sha(store, tmp_path):
    _edit_json(store, ADAPTER_METRICS, lambda d: d.pop("weights_sha256"))  # as adapters saved before it was recorded
    _corrupt_truncated(store, tmp_path)


def _good_tensors(store: ArtifactStore) -> dict[str, torch.Tensor]:
    return load_file(store.adapter_dir("a") / ADAPTER_WEIGHTS)


def _corrupt_truncated(store, tmp_path):
    path = store.adapter_dir("a") / ADAPTER_WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_not_safetensors(store, tmp_path):
    (store.adapter_dir("a") / ADAPTER_WEIGHTS).write_bytes(b"this is not a safetensors file\n" * 40)


def _corrupt_empty(store, tmp_path):
    (store.adapter_dir("a") / ADAPTER_WEIGHTS).write_bytes(b"")


def _corrupt_shape(store, tmp_path):
    tensors = _good_tensors(store)
    tensors["base_model.model.linear1.lora_A.weight"] = torch.zeros(4, 784)
    _save_weights(store, tensors)


def _corrupt_transposed(store, tmp_path):
    tensors = _good_tensors(store)
    key = "base_model.model.linear3.lora_B.weight"
    tensors[key] = tensors[key].T
    _save_weights(store, tensors)


def _corrupt_dtype(store, tmp_path):
    _save_weights(store, {k: v.double() for k, v in _good_tensors(store).items()})


def _corrupt_missing_key(store, tmp_path):
    tensors = _good_tensors(store)
    del tensors["base_model.model.linear3.lora_B.weight"]
    _save_weights(store, tensors)


def _corrupt_extra_key(store, tmp_path):
    tensors = _good_tensors(store)
    tensors["base_model.model.linear2.lora_A.weight"] = torch.zeros(3, 1000)
    _save_weights(store, tensors)


def _corrupt_nan(store, tmp_path):
    tensors = _good_tensors(store)
    tensors["base_model.model.linear1.lora_B.weight"][0, 0] = float("nan")
    _save_weights(store, tensors)


def _edit_json(store, name, change):
    path = store.adapter_dir("a") / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


WEIGHT_CORRUPTIONS = {
    "truncated": (_corrupt_truncated, "does not match the sha256 recorded in metrics.json"),
    "32-bytes-overwritten": (_overwrite_32_bytes_mid_file, "does not match the sha256 recorded in metrics.json"),
    "truncated-no-sha-recorded": (_truncated_without_a_recorded_sha, "is not a valid safetensors file"),
    "metrics-sha-not-a-sha": (
        lambda s, t: _edit_json(s, ADAPTER_METRICS, lambda d: d.update(weights_sha256=12)),
        "weights_sha256 should be a valid string, found int 12",
    ),
    "not-safetensors": (_corrupt_not_safetensors, ADAPTER_WEIGHTS),
    "empty": (_corrupt_empty, "is empty"),
    "wrong-shape": (_corrupt_shape, "linear1.lora_A.weight"),
    "transposed": (_corrupt_transposed, "linear3.lora_B.weight"),
    "float64": (_corrupt_dtype, "float64"),
    "missing-key": (_corrupt_missing_key, "missing base_model.model.linear3.lora_B.weight"),
    "extra-key": (_corrupt_extra_key, "unexpected base_model.model.linear2.lora_A.weight"),
    "nan": (_corrupt_nan, "NaN"),
    "config-malformed-json": (
        lambda s, t: (s.adapter_dir("a") / ADAPTER_CONFIG).write_text('{"peft_type": "LORA", "r": '),
        ADAPTER_CONFIG,
    ),
    "config-not-object": (lambda s, t: (s.adapter_dir("a") / ADAPTER_CONFIG).write_text("[1, 2]"), ADAPTER_CONFIG),
    "config-no-r": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.pop("r")), ADAPTER_CONFIG),
    "config-no-alpha": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.pop("lora_alpha")), ADAPTER_CONFIG),
    "config-no-targets": (
        lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.pop("target_modules")),
        ADAPTER_CONFIG,
    ),
    "config-no-peft-type": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.pop("peft_type")), ADAPTER_CONFIG),
    "config-bias": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(bias="all")), ADAPTER_CONFIG),
    "config-fan-in-fan-out": (
        lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(fan_in_fan_out=True)),
        ADAPTER_CONFIG,
    ),
    "config-r-zero": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(r=0)), ADAPTER_CONFIG),
    "config-r-string": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(r="3")), ADAPTER_CONFIG),
    "config-targets-string": (
        lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(target_modules="linear1")),
        ADAPTER_CONFIG,
    ),
    "config-unknown-layer": (
        lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(target_modules=["linear1", "conv9"])),
        ADAPTER_CONFIG,
    ),
    "config-rank-too-big": (
        lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(rank_pattern={"linear3": 11})),
        ADAPTER_CONFIG,
    ),
    "weights-rank-differs-from-config": (lambda s, t: _edit_json(s, ADAPTER_CONFIG, lambda d: d.update(r=11)), "shape"),
    "config-missing": (lambda s, t: (s.adapter_dir("a") / ADAPTER_CONFIG).unlink(), ADAPTER_CONFIG),
    "metrics-malformed-json": (lambda s, t: (s.adapter_dir("a") / ADAPTER_METRICS).write_text("{,}"), ADAPTER_METRICS),
    "metrics-no-fingerprint": (
        lambda s, t: _edit_json(s, ADAPTER_METRICS, lambda d: d.pop("base_sha256")),
        ADAPTER_METRICS,
    ),
    "weights-missing": (lambda s, t: (s.adapter_dir("a") / ADAPTER_WEIGHTS).unlink(), ADAPTER_WEIGHTS),
}


@pytest.mark.parametrize("case", list(WEIGHT_CORRUPTIONS))
def test_bad_adapter_files_are_rejected_naming_the_file(store, tmp_path, case):
    corrupt, pattern = WEIGHT_CORRUPTIONS[case]
    corrupt(store, tmp_path)
    lora_model, fingerprint = fresh_lora(store)
    with pytest.raises(ArtifactError) as info:
        store.load_adapter(lora_model, "a", fingerprint)
    message = str(info.value)
    file = ADAPTER_CONFIG if case.startswith("config-") else ADAPTER_METRICS if case.startswith("metrics-") else None
    assert (file or ADAPTER_WEIGHTS) in message
    assert pattern in message
    assert not isinstance(info.value, StaleAdapterError)
    assert lora_model.adapters == {}  # nothing half-loaded
    assert lora_model.lora_layers() == {}


def test_pickle_adapter_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "unpickled-marker"
    payload = pickle.dumps(_Evil(marker))
    # the payload is live: unpickling it elsewhere does create a marker
    probe = tmp_path / "probe-marker"
    pickle.loads(pickle.dumps(_Evil(probe))).close()
    assert probe.exists()
    (store.adapter_dir("a") / ADAPTER_WEIGHTS).write_bytes(payload)
    lora_model, fingerprint = fresh_lora(store)
    with pytest.raises(ArtifactError, match=ADAPTER_WEIGHTS):
        store.load_adapter(lora_model, "a", fingerprint)
    assert not marker.exists()
    # torch.save's zip format holds a pickle too; it is refused the same way
    torch.save({"base_model.model.linear1.lora_A.weight": _Evil(marker)}, store.adapter_dir("a") / ADAPTER_WEIGHTS)
    with pytest.raises(ArtifactError, match=ADAPTER_WEIGHTS):
        store.load_adapter(lora_model, "a", fingerprint)
    assert not marker.exists()


def test_broken_adapter_is_listed_with_its_error(store, tmp_path):
    (store.adapter_dir("a") / ADAPTER_CONFIG).write_text("not json")
    records = store.list_adapters()
    assert [r.name for r in records] == ["a"]
    assert records[0].config is None and ADAPTER_CONFIG in records[0].error


@pytest.mark.parametrize("damage", ["truncated", "empty", "32-bytes-overwritten", "weights-missing"])
def test_damaged_weights_are_listed_with_their_error(store, tmp_path, damage):
    assert store.list_adapters()[0].error is None  # listed once as sound: the check is not remembered past a change
    WEIGHT_CORRUPTIONS[damage][0](store, tmp_path)
    (record,) = store.list_adapters()
    assert record.config is None and str(store.adapter_dir("a") / ADAPTER_WEIGHTS) in record.error
    with pytest.raises(ArtifactError, match=re.escape(record.error)):
        store.read_adapter("a")


def test_saved_metrics_record_the_weights_sha256(store):
    recorded = json.loads((store.adapter_dir("a") / ADAPTER_METRICS).read_text())["weights_sha256"]
    assert recorded == sha256_bytes((store.adapter_dir("a") / ADAPTER_WEIGHTS).read_bytes())


def test_unknown_adapter_is_an_artifact_error(store):
    lora_model, fingerprint = fresh_lora(store)
    with pytest.raises(ArtifactError, match="nosuch"):
        store.load_adapter(lora_model, "nosuch", fingerprint)
    with pytest.raises(ConfigError):
        store.load_adapter(lora_model, "../base", fingerprint)


def test_stale_adapter_after_base_retrained(store):
    old = store.base_meta()["sha256"]
    model = store.load_base().model
    with torch.no_grad():
        model.linear2.weight[0, 0] += 1e-3  # "retrained": a different base model
    new_meta = store.save_base(model, {})
    assert new_meta["sha256"] != old
    record = store.load_base()
    lora_model = LoraModel(record.model)
    with pytest.raises(StaleAdapterError, match="different base model"):
        store.load_adapter(lora_model, "a", record.fingerprint)
    assert lora_model.adapters == {}
    assert store.list_adapters()[0].base_sha256 == old
    # still loadable against the fingerprint it was trained on
    store.load_adapter(lora_model, "a", old)


def test_rename_delete_and_zip(store):
    data = store.adapter_zip("a")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted(f"a/{n}" for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_METRICS))
        assert zf.read(f"a/{ADAPTER_WEIGHTS}") == (store.adapter_dir("a") / ADAPTER_WEIGHTS).read_bytes()
    store.rename_adapter("a", "b")
    assert store.adapter_names() == ["b"]
    assert json.loads((store.adapter_dir("b") / ADAPTER_METRICS).read_text())["name"] == "b"
    lora_model, fingerprint = fresh_lora(store)
    store.load_adapter(lora_model, "b", fingerprint)
    store.delete_adapter("b")
    assert store.adapter_names() == []
    assert list(store.adapters_dir.iterdir()) == []
    with pytest.raises(ArtifactError):
        store.delete_adapter("b")


def test_saving_over_an_adapter_replaces_it_whole(store):
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("a", LoraConfig(r=2, target_modules=("linear2",)), seed=1)
    store.save_adapter(lora_model, "a", {}, fingerprint, overwrite=True)
    lm, _ = fresh_lora(store)
    record = store.load_adapter(lm, "a", fingerprint)
    assert record.config.r == 2 and record.config.target_modules == ("linear2",)
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == ["a"]


def test_saving_over_an_adapter_needs_overwrite(store):
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("a", LoraConfig(r=2, target_modules=("linear2",)), seed=1)
    before = file_bytes(store.adapter_dir("a"))
    with pytest.raises(AdapterExistsError, match="'a'"):
        store.save_adapter(lora_model, "a", {}, fingerprint)
    assert file_bytes(store.adapter_dir("a")) == before


# --- atomic writes -------------------------------------------------------------------------------
def test_failed_rename_mid_save_keeps_the_previous_base(store, monkeypatch):
    before = file_bytes(store.base_dir)
    real_rename = os.rename
    calls = []

    def failing_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # base -> .base.previous worked; staging -> base "crashes"
            raise OSError("simulated crash between the two renames")
        return real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        store.save_base(random_mlp(9), {})
    monkeypatch.undo()
    assert len(calls) == 2
    assert not store.base_dir.exists()  # the crash left only the backup...
    fresh = ArtifactStore(store.root)
    listing = sorted(p.name for p in store.root.iterdir())
    record = fresh.load_base()  # ...which a reader reads as it is, changing nothing...
    assert fresh.has_base() and sorted(p.name for p in store.root.iterdir()) == listing
    fresh.recover()  # ...and the next writer puts back
    assert file_bytes(store.base_dir) == before
    assert record.fingerprint == json.loads(before["model.json"])["sha256"]
    assert [p.name for p in store.root.iterdir() if p.name.startswith(".")] == []


def test_failed_replace_mid_write_keeps_the_previous_base(store, monkeypatch):
    before = file_bytes(store.base_dir)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("model.json"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store.save_base(random_mlp(9), {})
    monkeypatch.undo()
    assert len(calls) == 2  # model.safetensors was written, model.json failed
    assert file_bytes(store.base_dir) == before
    ArtifactStore(store.root).load_base()
    assert sorted(p.name for p in store.root.iterdir()) == ["adapters", "base"]  # no staging folder left
    assert [p.name for p in store.base_dir.iterdir() if p.name.startswith(".")] == []


def test_failed_adapter_save_keeps_the_previous_adapter(store, monkeypatch):
    before = file_bytes(store.adapter_dir("a"))
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("a", LoraConfig(r=1), seed=0)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError):
        store.save_adapter(lora_model, "a", {}, fingerprint, overwrite=True)
    monkeypatch.undo()
    assert file_bytes(store.adapter_dir("a")) == before
    assert store.adapter_names() == ["a"]


def test_recover_dir_restores_a_backup(tmp_path):
    final = tmp_path / "base"
    backup = tmp_path / ".base.previous"
    backup.mkdir()
    (backup / "model.json").write_text("old")
    fileio.recover_dir(final)
    assert (final / "model.json").read_text() == "old"
    assert not backup.exists()
    # when both exist, the complete new folder wins and the backup goes
    backup.mkdir()
    (backup / "model.json").write_text("older")
    fileio.recover_dir(final)
    assert (final / "model.json").read_text() == "old"
    assert not backup.exists()
    # nothing to do
    fileio.recover_dir(tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_replace_dir_swaps_whole_folders(tmp_path):
    final = tmp_path / "x"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = fileio.new_staging_dir(final)
    fileio.atomic_write_bytes(staging / "new.txt", b"new")
    fileio.replace_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    fileio.atomic_write_json(target, {"a": 1})

    def boom(src, dst):
        raise OSError("boom")

    monkeypatch.setattr(fileio.os, "replace", boom)
    with pytest.raises(OSError):
        fileio.atomic_write_json(target, {"a": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(ValueError):
        fileio.atomic_write_json(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1}


def test_save_after_an_interrupted_swap_never_loses_the_only_copy(store, monkeypatch):
    before = file_bytes(store.base_dir)
    # state left by a save that died between its two renames: only the backup holds the model
    os.rename(store.base_dir, store.root / ".base.previous")
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(dst) == store.base_dir:
            raise OSError("simulated crash while swapping in the new folder")
        return real_rename(src, dst)

    monkeypatch.setattr(fileio.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        store.save_base(random_mlp(9), {})
    monkeypatch.undo()
    ArtifactStore(store.root).load_base()  # a complete base model must still be found
    ArtifactStore(store.root).recover()
    assert file_bytes(store.base_dir) == before


def test_recover_dir_drops_stale_staging_folders(tmp_path):
    final = tmp_path / "base"
    final.mkdir()
    stale = tmp_path / ".base.staging-abc123"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    an_hour_ago = os.path.getmtime(stale) - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    fileio.recover_dir(final)
    assert final.is_dir()
    assert not stale.exists()


def test_saved_folders_open_like_any_other_folder(store_template):
    """A staging folder from mkdtemp is 0700; once swapped in, a saved base or adapter folder must be readable
    by others like its 0644 files (a shared artifacts folder, a container running as another user)."""
    store = ArtifactStore(store_template)
    for folder in (store.base_dir, store.adapter_dir("a")):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o755), folder


# --- exact contents, messages and repairs --------------------------------------------------------
def test_saved_adapter_files_hold_float32_pt_metadata_name_and_utc_time(store):
    lora_model, fingerprint = fresh_lora(store)
    lora_model.model.double()  # a float64 model still saves float32 tensors, like the base model
    lora_model.add_adapter("b", CONFIG, seed=0)
    folder = store.save_adapter(lora_model, "b", {"note": 1}, fingerprint)
    assert folder == store.adapter_dir("b")
    with safe_open(folder / ADAPTER_WEIGHTS, "pt") as weights:
        assert weights.metadata() == {"format": "pt"}
    assert {t.dtype for t in load_file(folder / ADAPTER_WEIGHTS).values()} == {torch.float32}
    metrics = json.loads((folder / ADAPTER_METRICS).read_text())
    assert metrics["name"] == "b" and metrics["base_sha256"] == fingerprint and metrics["note"] == 1
    assert datetime.fromisoformat(metrics["created"]).utcoffset() == timedelta(0)


def test_a_failed_adapter_save_leaves_no_staging_folder(store, monkeypatch):
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("b", CONFIG, seed=0)
    monkeypatch.setattr(fileio.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        store.save_adapter(lora_model, "b", {}, fingerprint)
    monkeypatch.undo()
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == ["a"]


def test_loading_an_adapter_keeps_the_active_one_and_records_its_metrics(store):
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("x", CONFIG, seed=0)
    lora_model.set_adapter("x")
    record = store.load_adapter(lora_model, "a", fingerprint, as_name="a2")
    assert lora_model.active_adapter == "x"
    assert record.name == "a" and record.path == store.adapter_dir("a")
    assert lora_model.adapter_meta("a2") == record.metrics and record.metrics["target_digits"] == [9]


def test_stale_adapter_message_gives_both_fingerprints(store):
    old = store.base_meta()["sha256"]
    lora_model, _ = fresh_lora(store)
    current = "f" * 64
    with pytest.raises(StaleAdapterError) as info:
        store.load_adapter(lora_model, "a", current)
    assert f"(fingerprint {old[:12]}, current base {current[:12]}); " in str(info.value)
    assert str(info.value).endswith("fine-tune it again on the current base model")


def test_unknown_adapter_messages_list_the_saved_ones(store):
    shutil.copytree(store.adapter_dir("a"), store.adapter_dir("b"))
    for action in (store.read_adapter, store.delete_adapter):
        with pytest.raises(ArtifactError) as info:
            action("nosuch")
        assert str(info.value) == f"no adapter called 'nosuch' in {store.adapters_dir} (saved: a, b)"
    store.delete_adapter("a")
    store.delete_adapter("b")
    for action in (store.read_adapter, store.delete_adapter):
        with pytest.raises(ArtifactError) as info:
            action("nosuch")
        assert str(info.value).endswith("(saved: none)")


def test_renaming_onto_an_existing_adapter_is_a_name_error(store):
    shutil.copytree(store.adapter_dir("a"), store.adapter_dir("b"))
    with pytest.raises(ConfigError) as info:
        store.rename_adapter("a", "b")
    assert info.value.field == "name" and info.value.reason == "an adapter called 'b' already exists"


def test_renaming_reports_a_bad_metrics_file_by_path(store, monkeypatch):
    (store.adapter_dir("a") / ADAPTER_METRICS).write_text("{not json")
    with pytest.raises(ArtifactError, match=f"^{store.adapter_dir('b') / ADAPTER_METRICS} is not valid JSON"):
        store.rename_adapter("a", "b")
    metrics = json.dumps({"name": "c", "base_sha256": "0" * 64}).encode()
    (store.adapter_dir("b") / ADAPTER_METRICS).write_bytes(metrics)
    monkeypatch.setattr(artifacts, "MAX_FILE_BYTES", len(metrics))  # a file of exactly the limit is read
    store.rename_adapter("b", "c")
    assert json.loads((store.adapter_dir("c") / ADAPTER_METRICS).read_text())["name"] == "c"
    (store.adapter_dir("c") / ADAPTER_METRICS).write_bytes(b" " * 3 * 2**20 + metrics)
    with pytest.raises(ArtifactError) as info:
        store.rename_adapter("c", "d")
    assert (
        str(info.value) == f"{store.adapter_dir('d') / ADAPTER_METRICS} is 3 MiB, larger than any model of this study"
    )


def test_a_delete_interrupted_before_cleanup_leaves_only_hidden_trash(store, monkeypatch):
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *args, **kwargs):
        if ".a.deleted-" in str(path):
            raise KeyboardInterrupt  # the process is stopped after the rename, before the cleanup
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        store.delete_adapter("a")
    monkeypatch.undo()
    left = [p.name for p in store.adapters_dir.iterdir()]
    assert len(left) == 1 and left[0].startswith(".a.deleted-"), left
    assert store.list_adapters() == []
    store.recover()
    assert list(store.adapters_dir.iterdir()) == []


def test_taking_the_lock_repairs_every_leftover_of_killed_writers(store):
    # an adapter swapped out but not yet back in, fresh staging folders (the lock holder knows no writer
    # is filling them), a killed delete's trash folder and a stray file with a trash name
    os.rename(store.adapter_dir("a"), store.adapters_dir / ".beta.previous")
    (store.adapters_dir / ".ghost.staging-abc123").mkdir()
    (store.root / ".base.staging-abc123").mkdir()
    (store.adapters_dir / ".zeta.deleted-abc123").mkdir()
    (store.adapters_dir / ".zeta.deleted-abc123" / "zeta").mkdir()
    (store.adapters_dir / ".eta.deleted-abc123").write_bytes(b"")
    assert [r.name for r in store.list_adapters()] == ["beta"]  # listed while the swap is unfinished
    store.recover()
    assert sorted(p.name for p in store.adapters_dir.iterdir()) == [".eta.deleted-abc123", "beta"]
    assert sorted(p.name for p in store.root.iterdir()) == ["adapters", "base"]
    assert [r.name for r in store.list_adapters()] == ["beta"]


def test_every_writer_says_what_it_is_doing(store, monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(ArtifactStore, "_recover", lambda self: seen.append(self.writer()["what"]))
    store.recover()
    lora_model, fingerprint = fresh_lora(store)
    lora_model.add_adapter("b", CONFIG, seed=0)
    store.save_adapter(lora_model, "b", {}, fingerprint)
    store.rename_adapter("b", "c")
    store.delete_adapter("c")
    assert seen == [
        "repairing the artifacts folder",
        "saving adapter 'b'",
        "renaming adapter 'b'",
        "deleting adapter 'c'",
    ]


def test_the_default_store_is_the_configured_artifacts_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ARTIFACTS_ENV, str(tmp_path / "elsewhere"))
    assert ArtifactStore().root == tmp_path / "elsewhere"


def test_base_errors_name_the_file_and_say_what_is_wrong(store):
    weights = store.base_dir / "model.safetensors"
    saved = weights.read_bytes()
    weights.unlink()
    with pytest.raises(ArtifactError) as info:
        store.load_base()
    assert str(info.value) == f"{weights} is missing"
    weights.write_bytes(saved + b" ")
    with pytest.raises(ArtifactError) as info:
        store.load_base()
    assert str(info.value).endswith("come from different saves. Retrain the base model.")
    weights.write_bytes(saved)
    record = store.load_base()
    assert record.path == store.base_dir
    _rewrite_meta(store, lambda m: m.update(format="other"))
    with pytest.raises(ArtifactError) as info:
        store.base_meta()
    assert str(info.value) == f"{store.base_dir / 'model.json'}: format is 'other', expected 'lora_core.base.v1'"


@pytest.mark.parametrize(("hidden", "ok"), [([1, 16_384], True), ([0, 8], False), ([8, 16_385], False)])
def test_base_hidden_sizes_from_1_to_16384_are_accepted(store, hidden, ok):
    _rewrite_meta(store, lambda m: m["architecture"].update(hidden=hidden))
    if ok:
        assert store.base_meta()["architecture"]["hidden"] == hidden
    else:
        with pytest.raises(ArtifactError, match="architecture.hidden must be two positive sizes"):
            store.base_meta()


def test_unreadable_and_oversized_files_are_named(store, monkeypatch):
    meta = store.base_dir / "model.json"
    meta.unlink()
    meta.symlink_to(meta)  # a symlink loop: opening it fails with ELOOP
    with pytest.raises(ArtifactError, match=f"^{store.base_dir} cannot be read "):
        store.base_meta()
    meta.unlink()
    meta.write_bytes(b" " * 3 * 2**20)
    monkeypatch.setattr(artifacts, "MAX_FILE_BYTES", 2**20)
    with pytest.raises(ArtifactError) as info:
        store.base_meta()
    assert str(info.value) == f"{meta} is 3 MiB, larger than any model of this study"


def test_a_folder_that_keeps_changing_asks_to_try_again(store, monkeypatch):
    def changing(final, names, max_bytes):
        raise fileio.FolderKeptChanging(f"{final} kept changing while it was being read")

    monkeypatch.setattr(artifacts, "read_dir_files", changing)
    with pytest.raises(ArtifactError) as info:
        store.base_meta()
    assert str(info.value) == f"{store.base_dir} kept changing while it was being read; try again"


def test_adapter_errors_name_the_file_type_and_keys(store):
    (store.adapter_dir("a") / ADAPTER_METRICS).write_text("[1, 2]")
    (record,) = store.list_adapters()
    assert record.path == store.adapter_dir("a")
    assert record.error == f"{store.adapter_dir('a') / ADAPTER_METRICS} should hold a JSON object, found an array"
    with pytest.raises(ArtifactError) as info:
        store.read_adapter("a")
    assert str(info.value) == record.error
    tensors = _good_tensors(store)
    tensors.pop("base_model.model.linear1.lora_A.weight")
    tensors.pop("base_model.model.linear1.lora_B.weight")
    tensors["extra"] = torch.zeros(1)
    tensors["extra2"] = torch.zeros(1)
    (store.adapter_dir("a") / ADAPTER_METRICS).write_text(json.dumps({"base_sha256": "f" * 64}))
    _save_weights(store, tensors)
    lora_model, _ = fresh_lora(store)
    with pytest.raises(ArtifactError) as info:
        store.load_adapter(lora_model, "a", "f" * 64)
    assert str(info.value).endswith(
        "does not fit the base model: missing base_model.model.linear1.lora_A.weight, "
        "base_model.model.linear1.lora_B.weight; unexpected extra, extra2"
    )


def test_the_zip_is_compressed(store):
    with zipfile.ZipFile(io.BytesIO(store.adapter_zip("a"))) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_DEFLATED}


def test_unused_adapter_names_count_from_2_and_see_unfinished_swaps(store):
    assert store.adapter_exists("a") and not store.adapter_exists("b")
    assert store.unused_adapter_name("b") == "b"
    assert store.unused_adapter_name("a") == "a-2"
    shutil.copytree(store.adapter_dir("a"), store.adapters_dir / ".a-2.previous")  # a swap in progress
    assert store.adapter_exists("a-2")
    assert store.unused_adapter_name("a") == "a-3"


def test_verified_base_meta_hashes_each_weights_file_once(store, monkeypatch):
    assert store.verified_base_meta() == store.base_meta()
    hashed: list[int] = []
    real_sha256 = artifacts.sha256_bytes
    monkeypatch.setattr(artifacts, "sha256_bytes", lambda data: hashed.append(len(data)) or real_sha256(data))
    assert store.verified_base_meta() == store.base_meta()
    assert hashed == []  # this file was checked already
    weights = store.base_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.unlink()
    weights.write_bytes(data)  # the same bytes in a new file: checked again, then remembered
    assert store.verified_base_meta() == store.base_meta()
    assert store.verified_base_meta() == store.base_meta()
    assert hashed == [len(data)]
    weights.unlink()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ArtifactError) as info:
        store.verified_base_meta()
    assert str(info.value).startswith(f"{weights} does not match the sha256 recorded in model.json")
    weights.unlink()
    with pytest.raises(ArtifactError) as info:
        store.verified_base_meta()
    assert str(info.value) == f"{weights} is missing"
    _rewrite_meta(store, lambda m: m.update(format="other"))
    with pytest.raises(ArtifactError, match=f"^{store.base_dir / 'model.json'}: format is 'other'"):
        store.verified_base_meta()


def test_read_adapter_gives_the_record_under_its_name(store):
    record = store.read_adapter("a")
    assert record.name == "a" and record.path == store.adapter_dir("a") and record.error is None
