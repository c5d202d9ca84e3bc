"""Several adapters at once, each with a weight: the forward maths, merging, refusals, the report and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from core_helpers import random_mlp, randomize_b

from lora_core.cli import main
from lora_core.errors import ConfigError, StaleAdapterError
from lora_core.evaluate import evaluate
from lora_core.lab.combine import adapter_task, combination_report, parse_weighted_adapters
from lora_core.lab.experiment_settings import ExperimentSettings
from lora_core.lab.experiments import run_experiment
from lora_core.lab.study import load_base_for_lora
from lora_core.lab.tasks import parse_task
from lora_core.lora import LoraConfig, LoraModel
from lora_core.store.artifacts import ADAPTER_METRICS, ArtifactStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(32, 784, generator=torch.Generator().manual_seed(42))


@pytest.fixture
def two_adapters() -> LoraModel:
    """'a': rank 4 on every layer; 'b': rank 2, another scale, on linear1 and linear2 only; both trained-like."""
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(lora_model, "a", seed=1)
    lora_model.add_adapter("b", LoraConfig(r=2, alpha=6, target_modules=("linear1", "linear2")), seed=1)
    randomize_b(lora_model, "b", seed=2)
    return lora_model


def by_hand(lora_model: LoraModel, x: torch.Tensor, weights: dict[str, float]) -> torch.Tensor:
    """Per layer h W^T + b + sum_k w_k scale_k (h A_k^T) B_k^T, in float64 from the raw tensors."""
    h = x.double()
    for i, layer in enumerate(lora_model.lora_layers().values()):
        base = layer.base_layer
        out = h @ base.weight.double().T + base.bias.double()
        for adapter, weight in weights.items():
            if adapter in layer.lora_A:
                a, b = layer.lora_A[adapter].weight.double(), layer.lora_B[adapter].weight.double()
                out = out + weight * layer.scaling[adapter] * (h @ a.T) @ b.T
        h = torch.relu(out) if i < 2 else out
    return h


# --- the forward maths ----------------------------------------------------------------------------------------
def test_combination_forward_is_the_weighted_sum_of_the_updates(two_adapters, x):
    weights = {"a": 0.7, "b": -1.3}
    two_adapters.set_adapter(["a", "b"], [0.7, -1.3])
    assert two_adapters.active_adapters == ["a", "b"] and two_adapters.adapter_weights == weights
    assert two_adapters.active_adapter is None  # no single adapter is active
    with torch.no_grad():
        out = two_adapters(x)
        expected = by_hand(two_adapters, x, weights)
        torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
        # and it differs from each adapter alone and from the plain sum at weight 1: the weights act
        for other in ({"a": 1.0}, {"b": 1.0}, {"a": 1.0, "b": 1.0}):
            assert (out.double() - by_hand(two_adapters, x, other)).abs().max() > 1e-3


def test_weights_one_and_zero_give_the_single_adapter_to_the_last_bit(two_adapters, x):
    with torch.no_grad():
        two_adapters.set_adapter("a")
        alone_a = two_adapters(x)
        two_adapters.set_adapter("b")
        alone_b = two_adapters(x)
        two_adapters.set_adapter(["a", "b"], [1.0, 0.0])
        assert torch.equal(two_adapters(x), alone_a)
        two_adapters.set_adapter(["b", "a"], [1.0, 0.0])
        assert torch.equal(two_adapters(x), alone_b)
        two_adapters.set_adapter(["a", "b"], [0.0, 0.0])
        with two_adapters.adapters_disabled():
            base_out = two_adapters(x)
        assert torch.equal(two_adapters(x), base_out)


def test_under_bfloat16_autocast_the_updates_stay_float32(two_adapters, x):
    """As for one adapter: the base matmul in bfloat16, the side paths and the sum in float32."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        two_adapters.set_adapter("a")
        alone = two_adapters(x)
        two_adapters.set_adapter(["a", "b"], [1.0, 0.0])
        assert torch.equal(two_adapters(x), alone)
        two_adapters.set_adapter(["a", "b"], [0.7, -1.3])
        out = two_adapters(x)
    assert out.dtype == torch.float32
    expected = by_hand(two_adapters, x, {"a": 0.7, "b": -1.3})
    torch.testing.assert_close(out.double(), expected, atol=0.01, rtol=0)  # bfloat16 base matmuls: ~1e-3 off
    assert (by_hand(two_adapters, x, {"a": 1.0}) - expected).abs().max() > 0.05  # the weights move it far more


def test_a_list_of_one_at_weight_one_is_the_single_adapter_path(two_adapters, x):
    """Training with a single adapter keeps its own autograd function (the fast path); a list of one is it."""
    two_adapters.set_adapter(["a"])
    assert two_adapters.active_adapter == "a" and two_adapters.active_adapters == ["a"]
    assert all(layer.combination is None for layer in two_adapters.lora_layers().values())
    two_adapters.set_adapter(["a"], [0.5])  # another weight: a combination of one
    assert two_adapters.active_adapter is None and two_adapters.adapter_weights == {"a": 0.5}


def test_a_combination_trains_by_plain_autograd(two_adapters, x):
    params = two_adapters.mark_only_lora_trainable("a") + two_adapters.mark_only_lora_trainable("b")
    for p in params:
        p.requires_grad_(True)
    two_adapters.set_adapter(["a", "b"], [1.0, 0.5])
    two_adapters(x).square().sum().backward()
    layer2 = two_adapters.lora_layers()["linear2"]
    assert layer2.lora_A["b"].weight.grad is not None and layer2.lora_B["a"].weight.grad is not None
    assert layer2.base_layer.weight.grad is None


def test_peft_computes_the_same_combination(peft, tmp_path, x):
    """PEFT itself, on our saved adapters: set_adapter with a list (weight 1 each), and add_weighted_adapter with
    combination_type="cat" (the exact sum of the weighted updates, ranks may differ) give our logits."""
    store = ArtifactStore(tmp_path)
    meta = store.save_base(random_mlp(1), {})
    ours = LoraModel(store.load_base().model)
    ours.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(ours, "a", seed=1, std=0.2)
    ours.add_adapter("b", LoraConfig(r=2, alpha=6, target_modules=("linear1", "linear2")), seed=1)
    randomize_b(ours, "b", seed=2, std=0.2)
    folders = {name: store.save_adapter(ours, name, {}, meta["sha256"]) for name in ("a", "b")}
    theirs = peft.PeftModel.from_pretrained(store.load_base().model, str(folders["a"]), adapter_name="a")
    theirs.load_adapter(str(folders["b"]), adapter_name="b")
    with torch.no_grad():
        ours.set_adapter(["a", "b"])
        theirs.base_model.set_adapter(["a", "b"])
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
        theirs.add_weighted_adapter(["a", "b"], [0.7, -1.3], "ab", combination_type="cat")
        theirs.set_adapter("ab")
        ours.set_adapter(["a", "b"], [0.7, -1.3])
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=0)
        ours.set_adapter("a")
        assert (theirs(x) - ours(x)).abs().max() > 1e-2  # the comparison can tell combinations apart


def test_add_weighted_adapter_saves_the_combination_as_one_adapter(peft, tmp_path, x):
    """PEFT's add_weighted_adapter (combination_type="cat"): one adapter with the combination's update, saved and
    loaded like any other. linear3's ranks add up to 4 + 8 = 12, above its limit of 10: kept as a rank-10 SVD."""
    store = ArtifactStore(tmp_path)
    meta = store.save_base(random_mlp(1), {})
    ours = LoraModel(store.load_base().model)
    ours.add_adapter("a", LoraConfig(r=4, alpha=8), seed=0)
    randomize_b(ours, "a", seed=1, std=0.2)
    ours.add_adapter("b", LoraConfig(r=2, alpha=6, target_modules=("linear1", "linear2")), seed=1)
    randomize_b(ours, "b", seed=2, std=0.2)
    ours.add_adapter("c", LoraConfig(r=8, alpha=4, target_modules=("linear1", "linear3")), seed=2)
    randomize_b(ours, "c", seed=3, std=0.2)
    ours.set_adapter("a")
    ours.add_weighted_adapter(["a", "b", "c"], [0.7, -1.3, 0.4], "abc")
    assert ours.active_adapter == "a"  # as PEFT: added, not activated
    config = ours.adapter_config("abc")
    assert [config.rank_for(n) for n in ("linear1", "linear2", "linear3")] == [14, 6, 10]
    assert all(config.scale_for(n) == 1.0 for n in config.target_modules)
    config.validate(ours.model)
    with torch.no_grad():
        ours.set_adapter(["a", "b", "c"], [0.7, -1.3, 0.4])
        expected = ours(x)
        ours.set_adapter("abc")
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)
        ours.set_adapter("a")
        assert (ours(x) - expected).abs().max() > 1e-2
    folder = store.save_adapter(ours, "abc", ours.adapter_meta("abc"), meta["sha256"])
    # Hugging Face PEFT reads the saved combination (rank_pattern and alpha_pattern included) to the same logits
    theirs = peft.PeftModel.from_pretrained(store.load_base().model, str(folder))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), expected, atol=1e-5, rtol=0)
    again = LoraModel(store.load_base().model)
    record = store.load_adapter(again, "abc", meta["sha256"])
    assert record.metrics["combination"] == {"adapters": ["a", "b", "c"], "weights": [0.7, -1.3, 0.4], "type": "cat"}
    again.set_adapter("abc")
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="already loaded"):
        ours.add_weighted_adapter(["a", "b"], [1.0, 1.0], "abc")


# --- merging -------------------------------------------------------------------------------------------------------
def test_merge_and_unmerge_of_a_combination_leave_w_bit_identical(two_adapters, x):
    weights = [0.7, -1.3]
    two_adapters.set_adapter(["a", "b"], weights)
    before = {k: v.detach().clone() for k, v in two_adapters.base_state_dict().items()}
    layers = two_adapters.lora_layers()
    versions = {name: layer.base_layer.weight._version for name, layer in layers.items()}
    # the check has teeth: folding the update into W and taking it out again is not exact in floating point,
    # so a merge that wrote into W would leave it changed after unmerge
    naive_exact = []
    for layer in layers.values():
        delta = layer.combined_delta_weight()
        if delta is not None:
            w = layer.base_layer.weight.detach().clone()
            naive_exact.append(torch.equal((w + delta) - delta, layer.base_layer.weight))
    assert not all(naive_exact), "W + dW - dW happened to be exact; pick weights that show the rounding"
    with torch.no_grad():
        unmerged = two_adapters(x)
        two_adapters.merge()
        assert all(layer.merged for layer in layers.values())
        merged = two_adapters(x)
        torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            merged.double(), by_hand(two_adapters, x, dict(zip("ab", weights))), atol=1e-5, rtol=0
        )
        two_adapters.unmerge()
        assert torch.equal(two_adapters(x), unmerged)
    for key, value in two_adapters.base_state_dict().items():
        assert torch.equal(value, before[key]), key
    assert {name: layer.base_layer.weight._version for name, layer in layers.items()} == versions  # never written


def test_switching_away_from_a_merged_combination_drops_it(two_adapters, x):
    with torch.no_grad():
        two_adapters.set_adapter("a")
        alone = two_adapters(x)
        two_adapters.set_adapter(["a", "b"], [1.0, 1.0])
        two_adapters.merge()
        two_adapters.set_adapter("a")
        assert not any(layer.merged for layer in two_adapters.lora_layers().values())
        assert torch.equal(two_adapters(x), alone)


def test_deleting_an_adapter_of_the_combination_leaves_the_base(two_adapters, x):
    with torch.no_grad(), two_adapters.adapters_disabled():
        base_out = two_adapters(x)
    two_adapters.set_adapter(["a", "b"])
    two_adapters.delete_adapter("b")
    assert two_adapters.active_adapters == []
    with torch.no_grad():
        assert torch.equal(two_adapters(x), base_out)


def test_deleting_an_adapter_outside_the_combination_keeps_it(two_adapters, x):
    two_adapters.add_adapter("c", LoraConfig(r=1), seed=3)
    two_adapters.set_adapter(["a", "b"], [0.7, -1.3])
    two_adapters.delete_adapter("c")
    assert two_adapters.adapter_weights == {"a": 0.7, "b": -1.3}
    with torch.no_grad():
        expected = by_hand(two_adapters, x, {"a": 0.7, "b": -1.3})
        torch.testing.assert_close(two_adapters(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_deleting_the_one_adapter_of_a_combination_of_one_leaves_none_active(two_adapters):
    two_adapters.set_adapter(["b"], [0.5])
    two_adapters.delete_adapter("b")
    assert two_adapters.active_adapters == [] and two_adapters.adapter_weights == {}


# --- refusals ------------------------------------------------------------------------------------------------------
def test_adapters_of_different_base_models_are_refused(x):
    lora_model = LoraModel(random_mlp())
    lora_model.add_adapter("old", LoraConfig(r=2), seed=0, meta={"base_sha256": "a" * 64})
    lora_model.add_adapter("new", LoraConfig(r=2), seed=1, meta={"base_sha256": "b" * 64})
    lora_model.add_adapter("same", LoraConfig(r=2), seed=2, meta={"base_sha256": "b" * 64})
    lora_model.set_adapter("new")
    with pytest.raises(StaleAdapterError) as info:
        lora_model.set_adapter(["old", "new"])
    assert str(info.value) == (
        "adapters 'old' and 'new' were trained on different base models (fingerprints aaaaaaaaaaaa and "
        "bbbbbbbbbbbb); only adapters of the same base model can be combined"
    )
    assert lora_model.active_adapter == "new"  # nothing changed
    lora_model.set_adapter(["new", "same"], [1.0, 1.0])  # the same base: fine
    lora_model.add_adapter("third", LoraConfig(r=2), seed=3, meta={"base_sha256": "c" * 64})
    with pytest.raises(StaleAdapterError, match="'old' and 'new' were trained on different base models"):
        lora_model.set_adapter(["old", "new", "third"])  # three bases: the first two are named


@pytest.mark.parametrize(
    ("names", "weights", "field", "reason"),
    [
        (["a", "nosuch"], None, "adapter", "no adapter called 'nosuch' (loaded: a, b)"),
        (["a", 1], None, "adapters", "adapter names must be strings, got 1"),
        (["b", "a", "b", "a"], None, "adapters", "lists 'a', 'b' more than once"),
        (["a", "b"], [1.0], "weights", "got 1 weights for 2 adapters; give one each"),
        (["a", "b"], [1.0, float("nan")], "weights", "the weight of 'b' must be a finite number, got nan"),
        ([], None, "adapters", "give at least one adapter to activate"),
        (  # 'b' has scale 6/2 = 3: its weight may reach 1e6 / 3 either way
            ["a", "b"],
            [1.0, -1e300],
            "weights",
            "the weight of 'b' (-1e+300) times its scale (3) is above the 1e+06 allowed (float32 could not carry "
            "the update); give a weight between -3.33e+05 and 3.33e+05",
        ),
        (
            ["a", "b"],
            [5e5 + 1, 1.0],
            "weights",
            "the weight of 'a' (5e+05) times its scale (2) is above the 1e+06 "
            "allowed (float32 could not carry the update); give a weight between -5e+05 and 5e+05",
        ),
    ],
)
def test_bad_combinations_are_refused(two_adapters, names, weights, field, reason):
    with pytest.raises(ConfigError) as info:
        two_adapters.set_adapter(names, weights)
    assert (info.value.field, info.value.reason) == (field, reason)


def test_weights_at_the_bound_are_accepted(two_adapters):
    two_adapters.set_adapter(["a", "b"], [5e5, -1e6 / 3])
    assert two_adapters.adapter_weights == {"a": 5e5, "b": -1e6 / 3}


def test_weights_need_a_list(two_adapters):
    with pytest.raises(ConfigError) as info:
        two_adapters.set_adapter("a", [0.5])
    assert info.value.field == "weights"
    assert info.value.reason == "weights go with a list of adapters; give set_adapter a list of names"


# --- parsing NAME:WEIGHT -------------------------------------------------------------------------------------------
def test_parse_weighted_adapters():
    assert parse_weighted_adapters("digit-9:1.0,rotate-45:0.5") == [("digit-9", 1.0), ("rotate-45", 0.5)]
    assert parse_weighted_adapters(["v1.2", "x:-1"]) == [("v1.2", 1.0), ("x", -1.0)]
    for text, word in (("a:x", "'x'"), ("a:nan", "finite"), ("a,,b", "expected"), ("a,a", "twice"), ("../a", "../a")):
        with pytest.raises(ConfigError) as info:
            parse_weighted_adapters(text)
        assert word in str(info.value), str(info.value)


def test_adapter_task_from_saved_metrics():
    assert adapter_task({"task": {"spec": "rotate:45"}, "target_digits": list(range(10))}) == parse_task("rotate:45")
    assert adapter_task({"task": {"spec": "weakest"}, "target_digits": [4]}) == parse_task("digits:4")
    assert adapter_task({"target_digits": [9]}) == parse_task("digits:9")
    assert adapter_task({}) is None


# --- the report on real data, and the command line -------------------------------------------------------------
@pytest.fixture(scope="module")
def combo_artifacts(trained_artifacts, tiny_mnist, tmp_path_factory) -> Path:
    """The small trained artifacts ('small', a digit adapter) plus a few-step rotate:45 LoRA adapter."""
    root = tmp_path_factory.mktemp("combine") / "artifacts"
    shutil.copytree(trained_artifacts, root)
    settings = ExperimentSettings(methods=("lora",), steps=30, batch_size=64, rank=2, seed=0, device="cpu")
    # the adapter is what matters here: its own figures are measured on the first 1,000 test images only
    data = dataclasses.replace(tiny_mnist, test_x=tiny_mnist.test_x[:1000], test_y=tiny_mnist.test_y[:1000])
    run_experiment(ArtifactStore(root), data, parse_task("rotate:45"), settings)
    return root


def test_report_scores_each_adapter_alone_and_the_combination(combo_artifacts, tiny_mnist):
    store = ArtifactStore(combo_artifacts)
    base, lora_model = load_base_for_lora(store, "cpu")
    for name in ("small", "rotate-45"):
        store.load_adapter(lora_model, name, base.fingerprint)
    lora_model.set_adapter("small")
    data = dataclasses.replace(tiny_mnist, test_x=tiny_mnist.test_x[:3000], test_y=tiny_mnist.test_y[:3000])
    report = combination_report(lora_model, [("small", 1.0), ("rotate-45", 0.0)], data)
    assert lora_model.active_adapter == "small"  # restored
    digits = store.read_adapter("small").metrics["target_digits"]
    keys = [c.key for c in report.columns]
    assert keys == ["plain", f"digits:{','.join(map(str, digits))}", "rotate:45"]
    assert [r["kind"] for r in report.rows] == ["base", "alone", "alone", "combined"]
    # each figure is the plain evaluation of that model on that test set
    rotated_x = parse_task("rotate:45").transform_normalized(data.test_x)
    lora_model.set_adapter("rotate-45")
    rotated = evaluate(lora_model, rotated_x, data.test_y)
    assert report.row("alone", "rotate-45")["accuracy"]["rotate:45"] == rotated.accuracy
    lora_model.set_adapter(None)
    assert report.row("base")["accuracy"]["plain"] == evaluate(lora_model, data.test_x, data.test_y).accuracy
    # weights (1, 0): the combination is 'small' alone, figure for figure
    assert report.row("combined")["accuracy"] == report.row("alone", "small")["accuracy"]
    assert report.row("alone", "rotate-45")["accuracy"]["rotate:45"] > report.row("base")["accuracy"]["rotate:45"]
    assert len(report.readings()) == 3 and "the combination reads" in report.readings()[0]


def test_cli_combine_reports_each_alone_and_the_combination(combo_artifacts, tmp_path):
    out = tmp_path / "combine.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["combine", "--artifacts", str(combo_artifacts), "--adapters", "small:1,rotate-45:0.5", "--json", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "lora_core", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["combination"] == "small ×1 + rotate-45 ×0.5"
    assert [r["model"] for r in result["rows"]] == ["base model", "small", "rotate-45", "small ×1 + rotate-45 ×0.5"]
    assert [c["key"] for c in result["columns"]][::2] == ["plain", "rotate:45"]
    assert "small ×1 + rotate-45 ×0.5" in run.stdout and "rotate:45" in run.stdout


@pytest.mark.parametrize(
    ("adapters", "words"),
    [
        ("small:1", ["--adapters:", "two or more"]),
        ("small:1e300,rotate-45:1", ["--adapters:", "weight of 'small' (1e+300)", "give a weight between"]),
        ("small:x,rotate-45", ["--adapters:", "'x'"]),
        ("small,nosuch", ["nosuch"]),
        ("small,stale", ["'stale'", "different base model"]),
        # an adapter of a separate base (as `experiment unseen:8,9` saves them) is named with its base
        ("small,elsewhere", ["'elsewhere'", "separate base model 'unseen-x'", "--artifacts", "bases/unseen-x"]),
    ],
)
def test_cli_combine_errors_are_one_line(combo_artifacts, tmp_path, capsys, adapters, words):
    root = tmp_path / "artifacts"
    shutil.copytree(combo_artifacts, root)
    stale = root / "adapters" / "stale"
    shutil.copytree(root / "adapters" / "rotate-45", stale)
    metrics = json.loads((stale / ADAPTER_METRICS).read_text())
    (stale / ADAPTER_METRICS).write_text(json.dumps({**metrics, "base_sha256": "0" * 64}))
    shutil.copytree(root / "base", root / "bases" / "unseen-x" / "base")
    shutil.copytree(root / "adapters" / "rotate-45", root / "bases" / "unseen-x" / "adapters" / "elsewhere")
    assert main(["combine", "--artifacts", str(root), "--adapters", adapters]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert all(w in err for w in words), err


def test_cli_combine_with_a_chosen_task(combo_artifacts, tmp_path, capsys):
    out = tmp_path / "task.json"
    args = ["combine", "--artifacts", str(combo_artifacts), "--adapters", "small,rotate-45", "--task", "invert"]
    assert main([*args, "--json", str(out)]) == 0
    assert [c["key"] for c in json.loads(out.read_text())["columns"]] == ["plain", "invert"]


def test_the_weight_map_scores_every_pair_and_keeps_the_active_adapters(two_adapters: LoraModel) -> None:
    from lora_core.lab.combine import MAP_WEIGHTS, PLAIN, ScoreColumn, combination_map, score

    generator = torch.Generator().manual_seed(5)
    images, labels = torch.randn(300, 784, generator=generator), torch.randint(0, 10, (300,), generator=generator)
    columns = [ScoreColumn(PLAIN, "all"), ScoreColumn("digits:3", "digit 3", digits=(3,))]
    sets = {PLAIN: images}
    two_adapters.set_adapter(["a", "b"], weights=[0.3, 0.7])
    mapped = combination_map(two_adapters, ["a", "b"], columns, sets, labels)
    assert two_adapters.adapter_weights == {"a": 0.3, "b": 0.7}  # what was active before is active again
    assert MAP_WEIGHTS == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5) and len(mapped.scores) == 49
    # each point is the pair acting at those weights: (0, 0) the base, (1, 0) adapter a alone, (0.5, 1.25) a mix
    with two_adapters.adapters_disabled():
        assert mapped.at(0.0, 0.0) == score(two_adapters, columns, sets, labels)
    two_adapters.set_adapter("a")
    assert mapped.at(1.0, 0.0) == score(two_adapters, columns, sets, labels)
    two_adapters.set_adapter(["a", "b"], weights=[0.5, 1.25])
    assert mapped.at(0.5, 1.25) == score(two_adapters, columns, sets, labels)
    grid = mapped.grid(PLAIN)  # rows: w2, columns: w1
    assert grid[5][2] == mapped.at(0.5, 1.25)[PLAIN] and grid[0][4] == mapped.at(1.0, 0.0)[PLAIN]
    assert len({value for row in grid for value in row}) > 1  # the weights do change the accuracy
    with pytest.raises(ConfigError, match="not on the map's grid"):
        mapped.at(0.1, 0.0)
    with pytest.raises(ConfigError, match="two different adapters"):
        combination_map(two_adapters, ["a", "a"], columns, sets, labels)
