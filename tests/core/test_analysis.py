"""lora_core.lab.analysis: the LoRA paper's subspace similarity and amplification, linear1's input directions, and
the memory of training counted from the real tensors; the whole run on small settings, saved and read back."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import threading
from pathlib import Path

import pytest
import torch
from core_helpers import file_bytes, random_mlp

from lora_core.data import MnistData
from lora_core.errors import ConfigError, RunStopped
from lora_core.lab import analysis
from lora_core.lab.analysis import (
    Amplification,
    AnalysisSettings,
    LowRankUpdate,
    amplification,
    find_saved_adapter,
    initial_a,
    input_directions,
    load_analysis,
    memory_ratios,
    memory_rows,
    run_analysis,
    subspace_similarity,
    update_input_basis,
    update_svd,
)
from lora_core.lora import LoraModel
from lora_core.model import count_parameters
from lora_core.store.artifacts import ArtifactStore
from lora_core.train import FinetuneConfig

IN = 784
LORA_PARAMS_PER_RANK = 6794  # (784 + 1000) + (1000 + 2000) + (2000 + 10) per unit of rank, up to linear3's cap
FULL_PARAMS = count_parameters()  # 2,807,010


def gaussian(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- subspace similarity ------------------------------------------------------------------------------------------
def test_phi_of_an_adapter_with_itself_is_one_on_the_diagonal_and_ignores_mixing_its_rows() -> None:
    a = gaussian(8, IN, seed=0)
    phi = subspace_similarity(a, a)
    assert phi.shape == (8, 8)
    assert torch.allclose(phi.diagonal(), torch.ones(8), atol=1e-5)
    assert float(phi.min()) >= 0.0 and float(phi.max()) <= 1.0 + 1e-6
    # another basis of the same row space (an invertible mix of A's rows): all 8 directions are shared
    mixed = gaussian(8, 8, seed=1) @ a
    assert float(subspace_similarity(a, mixed)[7, 7]) == pytest.approx(1.0, abs=1e-5)


def test_phi_with_unrelated_random_adapters_is_about_max_i_j_over_in() -> None:
    """E||U1[:, :i]^T U2[:, :j]||^2 = i*j/in for random subspaces, so phi = i*j/(in*min(i, j)) = max(i, j)/in."""
    phis = torch.stack(
        [subspace_similarity(gaussian(8, IN, seed=s), gaussian(64, IN, seed=100 + s)) for s in range(30)]
    )
    mean = phis.mean(0)
    for i, j in ((1, 1), (8, 8), (1, 64), (8, 64), (4, 16)):
        assert float(mean[i - 1, j - 1]) == pytest.approx(max(i, j) / IN, rel=0.35), (i, j)


def test_phi_sees_a_small_adapter_inside_a_large_one() -> None:
    """A rank-64 A whose 8 strongest rows are the rank-8 A: every top-i direction of the small one lies inside
    the large one's top 8 (phi(i, 8) = 1), and not inside an unrelated one."""
    small = gaussian(8, IN, seed=2)
    large = torch.cat([10 * small, gaussian(56, IN, seed=3)])
    phi = subspace_similarity(small, large)
    assert phi.shape == (8, 64)
    assert torch.allclose(phi[:, 7], torch.ones(8), atol=1e-4)
    assert torch.allclose(phi[:, 63], torch.ones(8), atol=1e-4)
    assert float(subspace_similarity(small, gaussian(64, IN, seed=4))[7, 7]) < 0.1


def test_phi_refuses_matrices_of_different_inputs() -> None:
    with pytest.raises(ConfigError, match="same in"):
        subspace_similarity(gaussian(8, IN, seed=0), gaussian(8, 1000, seed=0))


def test_the_update_basis_has_the_update_s_input_directions_in_order() -> None:
    delta = gaussian(1000, 8, seed=5) @ gaussian(8, IN, seed=6)
    basis = update_input_basis(delta, 8)
    assert basis.shape == (8, IN)
    assert float(subspace_similarity(basis, delta[:8])[7, 7]) == pytest.approx(1.0, abs=1e-6)


# --- amplification -------------------------------------------------------------------------------------------------
def layer_weight(seed: int = 0) -> torch.Tensor:
    """A 300 x 200 weight with a decaying spectrum, like a trained layer's (small: the test stays fast)."""
    u, _ = torch.linalg.qr(gaussian(300, 200, seed=seed).double())  # float64: the small singular values exact
    v, _ = torch.linalg.qr(gaussian(200, 200, seed=seed + 1).double())
    sv = 10.0 * torch.exp(-torch.arange(200, dtype=torch.float64) / 15.0)
    return u @ torch.diag(sv) @ v.T


def test_amplification_recognises_an_update_along_w_own_top_directions() -> None:
    w = layer_weight()
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    along_top = 0.1 * u[:, :8] @ vh[:8]
    a = amplification(w, along_top, 8, "linear1")
    assert a.projected_norm == pytest.approx(a.weight_top_norm, rel=1e-6)
    assert a.weight_top_norm == pytest.approx(float(sv[:8].square().sum().sqrt()), rel=1e-6)
    assert a.factor == pytest.approx(math.sqrt(8) * 0.1 / a.weight_top_norm, rel=1e-6)
    assert a.emphasised is True and "already emphasises" in a.reading()
    assert a.random_norm < 0.5 * a.weight_top_norm


@pytest.mark.parametrize("delta", [0.374, 1.0, 20.0])
@pytest.mark.parametrize("projected", [1.0, 1.5, 1.6, 2.41, 3.0, 9.0])
def test_every_amplification_sentence_is_true_for_its_numbers(delta: float, projected: float) -> None:
    """Whatever the norms: "amplifies" only for a factor of 1 or more, "no more than random" only when W carries
    no more along the update's directions than along random ones (1.59 here), and the multiple of random it states
    is the real one."""
    row = Amplification(
        layer="linear1",
        rank=4,
        delta_norm=delta,
        projected_norm=projected,
        weight_top_norm=10.0,
        random_norm=1.59,
        weight_norm=20.0,
    )
    reading, factor = row.reading(), delta / projected
    assert ("amplifies them by a factor" in reading) is (factor >= 1), reading
    assert ("does not amplify them" in reading) is (factor < 1), reading
    assert ("no more than random ones carry" in reading) is (projected <= 1.59), reading
    if not row.emphasised and projected > 1.59:
        assert f"{projected / 1.59:.2g}× what random ones carry" in reading, reading


def test_amplification_recognises_directions_w_barely_uses() -> None:
    w = layer_weight()
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    along_weak = u[:, 150:158] @ vh[150:158]  # W's singular values there are 10 e^-10: next to nothing
    a = amplification(w, along_weak, 8, "linear2")
    assert a.projected_norm == pytest.approx(float(sv[150:158].square().sum().sqrt()), rel=1e-5)
    assert a.emphasised is False and "barely uses" in a.reading()
    assert a.factor == pytest.approx(math.sqrt(8) / a.projected_norm, rel=1e-6)
    assert a.factor > 1e3
    zero = amplification(w, torch.zeros_like(w), 8, "linear3")
    assert zero.factor is None and "zero" in zero.reading()
    with pytest.raises(ConfigError, match="rank"):
        amplification(w, along_weak, 0)


def test_an_update_kept_as_factors_gives_what_the_dense_matrix_gives() -> None:
    update = LowRankUpdate(gaussian(300, 8, seed=9), gaussian(8, 200, seed=10), 2.0)
    dense = update.dense()
    w = layer_weight()
    factored, full = amplification(w, update, 8), amplification(w, dense, 8)
    for field in ("delta_norm", "projected_norm", "weight_top_norm", "random_norm"):
        assert getattr(factored, field) == pytest.approx(getattr(full, field), rel=1e-9), field
    assert float(subspace_similarity(update_input_basis(update, 8), update_input_basis(dense, 8))[7, 7]) == (
        pytest.approx(1.0, abs=1e-9)
    )
    _, sv, _ = update_svd(update)
    assert torch.allclose(sv, torch.linalg.svdvals(dense)[:8], rtol=1e-9)


# --- linear1's input directions ---------------------------------------------------------------------------------------
def test_input_directions_are_the_update_s_right_singular_vectors_as_pictures() -> None:
    v, _ = torch.linalg.qr(gaussian(IN, 3, seed=7))
    u, _ = torch.linalg.qr(gaussian(1000, 3, seed=8))
    delta = u @ torch.diag(torch.tensor([3.0, 2.0, 1.0])) @ v.T
    images, sv = input_directions(delta, 2)
    assert images.shape == (2, 28, 28)
    assert torch.allclose(sv[:3], torch.tensor([3.0, 2.0, 1.0]), atol=1e-5)
    for k in range(2):
        flat = images[k].flatten()
        assert abs(float(flat @ v[:, k])) == pytest.approx(1.0, abs=1e-5)  # the k-th direction, up to sign
        assert float(flat[flat.abs().argmax()]) > 0  # signed so that its strongest pixel is positive


# --- memory -------------------------------------------------------------------------------------------------------
def lora_trainable(rank: int) -> int:
    """A and B of every layer; linear3 (10 outputs) caps its rank at 10."""
    return (784 + 1000) * rank + (1000 + 2000) * rank + (2000 + 10) * min(rank, 10)


def test_memory_byte_counts_equal_hand_computed_values(small_mnist: MnistData) -> None:
    ranks = (1, 8, 16)
    rows = {}
    for batch in (16, 32):
        settings = AnalysisSettings(memory_ranks=ranks, batch_size=batch, device="cpu")
        rows[batch] = {r.label: r for r in memory_rows(random_mlp(), small_mnist, (4,), settings, measure_peak=False)}
    full = rows[32]["full fine-tuning"]
    assert full.trainable_params == FULL_PARAMS
    assert full.weights_bytes == full.gradient_bytes == FULL_PARAMS * 4
    assert full.adam_bytes == 2 * FULL_PARAMS * 4
    assert full.adam_step_bytes == 6 * 4  # one float32 step counter per trained tensor (3 weights, 3 biases)
    for r in ranks:
        lora = rows[32][f"LoRA r={r}"]
        assert lora.trainable_params == lora_trainable(r)
        assert lora.gradient_bytes == lora_trainable(r) * 4
        assert lora.weights_bytes == (FULL_PARAMS + lora_trainable(r)) * 4
        assert lora.adam_bytes == 2 * lora.gradient_bytes
        if r <= 10:
            assert lora.gradient_bytes == r * LORA_PARAMS_PER_RANK * 4
        # LoRA saves what full fine-tuning saves, plus x·Aᵀ (batch x r) in each layer
        assert lora.activation_bytes - full.activation_bytes == 32 * 4 * (r + r + min(r, 10))
    # 16 more images: 16 x (784 inputs + 1000 + 2000 ReLU outputs + 10 log-probabilities) float32, 16 int64 labels
    extra = rows[32]["full fine-tuning"].activation_bytes - rows[16]["full fine-tuning"].activation_bytes
    assert extra == 16 * (784 + 1000 + 2000 + 10) * 4 + 16 * 8
    ratio = memory_ratios(list(rows[32].values()), 8)
    assert ratio is not None
    assert ratio["trainable_params"] == pytest.approx(FULL_PARAMS / (8 * LORA_PARAMS_PER_RANK))
    assert ratio["train_state"] == pytest.approx((FULL_PARAMS * 12 + 24) / (8 * LORA_PARAMS_PER_RANK * 12 + 24))


def test_the_measured_peak_of_full_fine_tuning_is_above_lora_s(small_mnist: MnistData) -> None:
    """A real short run per method, measured from an empty start: full fine-tuning holds gradients and Adam for
    2.8M parameters (about 34 MB more than LoRA at rank 8), which a measurement must see."""
    settings = AnalysisSettings(memory_ranks=(8,), batch_size=64, memory_steps=3, device="cpu")
    full, lora = memory_rows(random_mlp(), small_mnist, (4,), settings)
    assert full.peak_bytes is not None and lora.peak_bytes is not None and full.peak_measure
    assert full.peak_bytes > lora.peak_bytes + 20e6, (full.peak_bytes, lora.peak_bytes)
    assert full.peak_bytes > 0.5 * full.total_bytes


def right_svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and right singular vectors (rows, largest first) of a wide r x in matrix M, from the
    eigenvectors U of the r x r matrix M·Mᵀ = U·S²·Uᵀ: Vᵀ = S⁻¹·Uᵀ·M (far cheaper than an SVD of M here)."""
    eigenvalues, u = torch.linalg.eigh(m @ m.T)
    sv = eigenvalues.flip(0).sqrt()
    return sv, (u.flip(1).T @ m) / sv[:, None]


def update_right_svd(a: torch.Tensor, b: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and right singular vectors (rows) of scale·B·A, from the r x in matrix C = scale·Lᵀ·A with
    BᵀB = L·Lᵀ (Cholesky): (BA)ᵀ(BA) = CᵀC, so both share them (another route than the analysis' QRs)."""
    low = torch.linalg.cholesky(b.T @ b)
    return right_svd(scale * low.T @ a)


def input_rows(a: torch.Tensor, b: torch.Tensor, scale: float, basis: str) -> torch.Tensor:
    """The orthonormal input directions (rows, largest first) compared under `basis`: A's own, or the update's."""
    return right_svd(a)[1] if basis == "A" else update_right_svd(a, b, scale)[1]


def phi_by_definition(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """phi(i, j) = ||V1[:i] V2[:j]ᵀ||_F² / min(i, j), entry by entry: V1[:i] V2[:j]ᵀ is the top-left i x j block
    of V1 V2ᵀ."""
    overlap = v1 @ v2.T
    return torch.tensor(
        [
            [float(overlap[:i, :j].square().sum()) / min(i, j) for j in range(1, v2.shape[0] + 1)]
            for i in range(1, v1.shape[0] + 1)
        ],
        dtype=torch.float64,
    )


def assert_reads_amplification(row: dict) -> None:
    """A table 7 row's sentence states its norms and factor, and the verdict its numbers give: W's weight along
    the update's directions, on a log scale from random directions (0) to W's own top ones (1), at 0.5 or more
    means directions W already emphasises."""
    projected, top, random, delta = (row[k] for k in ("projected_norm", "weight_top_norm", "random_norm", "delta_norm"))
    assert row["factor"] == pytest.approx(delta / projected)
    assert f"||UᵀWVᵀ||_F = {projected:.3g}, against {top:.3g} along W's own top {row['rank']}" in row["reading"]
    assert f"{random:.3g} along random ones" in row["reading"]
    if delta / projected >= 1:
        assert f"amplifies them by a factor of {delta / projected:.3g} (||ΔW||_F = {delta:.3g})" in row["reading"]
    else:  # below 1 is no amplification, and the sentence must not call it one
        assert f"is {delta / projected:.3g} (||ΔW||_F = {delta:.3g}), below 1" in row["reading"]
        assert "amplifies them" not in row["reading"]
    assert top > 1.0001 * random, row  # trained layers: W's top directions carry more than random ones
    emphasised = math.log(projected / random) / math.log(top / random) >= 0.5
    assert row["emphasised"] is emphasised
    verdict = "its directions are ones W already emphasises" if emphasised else "its directions are ones W barely uses"
    assert verdict in row["reading"], row["reading"]


# --- the whole run ---------------------------------------------------------------------------------------------------
SMALL = dict(small_rank=4, large_rank=8, steps=40, batch_size=64, memory_ranks=(2, 4), memory_steps=2, device="cpu")


def test_a_small_analysis_reuses_the_saved_adapter_saves_json_and_reads_it_back(
    artifacts_copy: Path, small_mnist: MnistData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trained_artifacts' adapter 'small' (rank 4, alpha 8, seed 0, 40 steps of 64) is exactly the rank-4 seed-0
    analysis adapter: it is loaded, not trained again, and not changed."""
    store = ArtifactStore(artifacts_copy)
    adapters_before = file_bytes(store.adapters_dir)
    base_before = file_bytes(store.base_dir)
    settings = AnalysisSettings(**SMALL)
    # what the analysis computes from: each adapter's A, B and scale and its layer's W, and each A before training
    analysed: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]]] = {}
    initial_as: dict[str, dict[str, torch.Tensor]] = {}
    real_analyze = analysis.analyze_adapters

    def recording_analyze(lora_model, settings, keys=None, initial=None):  # noqa: ANN001, ANN202
        for name, layer in lora_model.lora_layers().items():
            for key in layer.lora_A:
                a, b = (m[key].weight.detach().double().clone() for m in (layer.lora_A, layer.lora_B))
                analysed.setdefault(key, {})[name] = (
                    a,
                    b,
                    layer.scaling[key],
                    layer.base_layer.weight.detach().double(),
                )
        initial_as.update(initial or {})
        return real_analyze(lora_model, settings, keys, initial)

    monkeypatch.setattr(analysis, "analyze_adapters", recording_analyze)
    result = run_analysis(store, small_mnist, settings)
    assert file_bytes(store.adapters_dir) == adapters_before and file_bytes(store.base_dir) == base_before

    adapters = result.adapters
    sources = {s["key"]: s["source"] for s in adapters["adapters"]}
    assert sources == {
        "r4-seed0": "saved adapter 'small'",
        "r8-seed0": "trained for the analysis",
        "r4-seed1": "trained for the analysis",
    }
    # r4-seed0 is the saved adapter's own A and B
    base = store.load_base("cpu")
    lora_model = LoraModel(base.model)
    store.load_adapter(lora_model, "small", base.fingerprint)
    for name, layer in lora_model.lora_layers().items():
        a, b, _, _ = analysed["r4-seed0"][name]
        assert torch.equal(a, layer.lora_A["small"].weight.double()) and torch.equal(
            b, layer.lora_B["small"].weight.double()
        )
    assert {key: {name: f[0].shape[0] for name, f in layers.items()} for key, layers in analysed.items()} == {
        "r4-seed0": {"linear1": 4, "linear2": 4, "linear3": 4},
        "r8-seed0": {"linear1": 8, "linear2": 8, "linear3": 8},
        "r4-seed1": {"linear1": 4, "linear2": 4, "linear3": 4},
    }

    # phi, recomputed from each adapter's matrices by the definition, entry by entry
    for basis in ("A", "update"):
        for pair, keys in (("ranks", ["r4-seed0", "r8-seed0"]), ("seeds", ["r4-seed0", "r4-seed1"])):
            entries = adapters["similarity"][basis][pair]
            assert [e["layer"] for e in entries] == ["linear1", "linear2", "linear3"]
            for e in entries:
                assert e["adapters"] == keys
                v1, v2 = (input_rows(*analysed[key][e["layer"]][:3], basis) for key in keys)
                expected = phi_by_definition(v1, v2)
                assert e["ranks"] == list(expected.shape)
                assert torch.allclose(torch.tensor(e["phi"], dtype=torch.float64), expected, atol=1e-5), (
                    basis,
                    pair,
                    e,
                )
                k = min(8, *expected.shape)
                assert e["top1"] == pytest.approx(float(expected[0, 0]), abs=1e-5)
                assert e["top_k"] == pytest.approx(float(expected[k - 1, k - 1]), abs=1e-5)
                assert e["top1_in_all"] == pytest.approx(float(expected[0, -1]), abs=1e-5)
                # the sentence states these numbers
                assert f"lies {e['top1_in_all']:.0%} inside all of {keys[1]}'s" in e["reading"]
                assert f"φ(1,1) = {e['top1']:.2f}" in e["reading"] and f"φ({k},{k}) = {e['top_k']:.2f}" in e["reading"]
    ranks = {e["layer"]: e for e in adapters["similarity"]["A"]["ranks"]}
    # linear1's A of both seed-0 adapters start with the same 4 rows (one seed, drawn in order), linear2's do not
    assert ranks["linear1"]["init"]["top_k_in_all"] == pytest.approx(1.0, abs=1e-5)
    assert ranks["linear2"]["init"]["top_k_in_all"] < 0.5
    assert all(e["init"] is None for e in adapters["similarity"]["update"]["ranks"])
    moved = adapters["a_moved"]
    assert set(moved) == set(sources)
    for key, layers in moved.items():
        for name, value in layers.items():
            a0 = initial_as[key][name].double()
            assert value == pytest.approx(float((analysed[key][name][0] - a0).norm() / a0.norm()), rel=1e-6)
            assert 0 < value < 100

    # table 7, recomputed from B, A and W; each sentence reads its own numbers
    for key in ("r4-seed0", "r8-seed0"):
        rows = adapters["amplification"][key]["rows"]
        assert [a["layer"] for a in rows] == ["linear1", "linear2", "linear3"]
        for row in rows:
            a, b, scale, w = analysed[key][row["layer"]]
            sv, vh = update_right_svd(a, b, scale)
            u = (scale * b @ (a @ vh.T)) / sv  # the update's left singular vectors: M V = U S
            assert row["rank"] == a.shape[0]
            assert row["delta_norm"] == pytest.approx(float((scale * b @ a).norm()), rel=1e-6)
            assert row["projected_norm"] == pytest.approx(float((u.T @ w @ vh.T).norm()), rel=1e-6)
            assert row["weight_norm"] == pytest.approx(float(w.norm()), rel=1e-6)
            if row["layer"] == "linear3":  # W's own singular values: cheap only for the 10 x 2000 layer
                top = torch.linalg.svdvals(w)[: a.shape[0]]
                assert row["weight_top_norm"] == pytest.approx(float(top.square().sum().sqrt()), rel=1e-6)
            assert_reads_amplification(row)
    # other numbers, another sentence: the same row with W's weight along the update's directions set 40% and 60%
    # of the way (log scale) from random directions to W's own top ones: just below and above the verdict's line
    row = adapters["amplification"]["r4-seed0"]["rows"][1]
    fields = {
        k: row[k]
        for k in ("layer", "rank", "delta_norm", "projected_norm", "weight_top_norm", "random_norm", "weight_norm")
    }
    top, random = row["weight_top_norm"], row["random_norm"]
    at = {f: Amplification(**{**fields, "projected_norm": random * (top / random) ** f}).to_dict() for f in (0.4, 0.6)}
    assert at[0.4]["emphasised"] is False and at[0.6]["emphasised"] is True
    for other in at.values():
        assert_reads_amplification(other)
    assert len({row["reading"], at[0.4]["reading"], at[0.6]["reading"]}) == 3

    # linear1's input directions: r4-seed0's update's right singular vectors, each with its largest pixel positive
    directions = adapters["directions"]
    sv, vh = update_right_svd(*analysed["r4-seed0"]["linear1"][:3])
    signed = vh * torch.sign(vh.gather(1, vh.abs().argmax(dim=1, keepdim=True)))
    assert directions["adapter"] == "r4-seed0" and len(directions["images"]) == 4  # min(directions 8, rank 4)
    assert torch.allclose(torch.tensor(directions["images"], dtype=torch.float64), signed.reshape(4, 28, 28), atol=1e-6)
    assert torch.allclose(torch.tensor(directions["singular_values"], dtype=torch.float64), sv, rtol=1e-6)

    memory = result.memory
    assert [r["label"] for r in memory["rows"]] == ["full fine-tuning", "LoRA r=2", "LoRA r=4"]
    assert memory["ratio"]["rank"] == 2  # 8 is not among the ranks measured: the first one

    saved = load_analysis(store)
    assert saved.errors == []
    assert saved.adapters == json.loads(json.dumps(adapters)) and saved.memory == json.loads(json.dumps(memory))
    assert saved.adapters["base_sha256"] == base.fingerprint


def test_a_stopped_analysis_saves_nothing(artifacts_copy: Path, small_mnist: MnistData) -> None:
    store = ArtifactStore(artifacts_copy)
    before = file_bytes(artifacts_copy)
    stop = threading.Event()
    stop.set()  # as the dashboard's Stop button: the first training step ends the run
    with pytest.raises(RunStopped):
        run_analysis(store, small_mnist, AnalysisSettings(**{**SMALL, "small_rank": 2}), stop=stop)
    assert file_bytes(artifacts_copy) == before and not (artifacts_copy / "analysis").exists()


def test_initial_a_is_where_finetune_starts(small_base_record) -> None:  # noqa: ANN001 - fixture
    config = FinetuneConfig(rank=4, alpha=8.0, seed=3)
    init = initial_a(small_base_record.model, config)
    lora_model = LoraModel(copy.deepcopy(small_base_record.model))
    lora_model.add_adapter("fresh", config.lora_config(), seed=config.seed)
    for name, layer in lora_model.lora_layers().items():
        assert torch.equal(layer.lora_A["fresh"].weight, init[name])
    larger = initial_a(small_base_record.model, dataclasses.replace(config, rank=8, alpha=16.0))
    assert torch.equal(larger["linear1"][:4], init["linear1"])  # the same seed draws the same first rows
    assert not torch.equal(larger["linear2"][:4], init["linear2"])


def test_find_saved_adapter_needs_every_training_setting_to_match(trained_artifacts: Path) -> None:
    store = ArtifactStore(trained_artifacts)
    base_sha = store.base_meta()["sha256"]
    settings = AnalysisSettings(**SMALL)
    digit = store.read_adapter("small").metrics["target_digits"][0]
    assert find_saved_adapter(store, base_sha, settings.finetune_config(4, 0, (digit,))) == "small"
    assert find_saved_adapter(store, base_sha, settings.finetune_config(4, 1, (digit,))) is None
    assert find_saved_adapter(store, base_sha, settings.finetune_config(8, 0, (digit,))) is None
    assert find_saved_adapter(store, "0" * 64, settings.finetune_config(4, 0, (digit,))) is None


def test_a_broken_saved_result_is_reported_not_raised(trained_artifacts: Path, tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    shutil.copytree(trained_artifacts, root)
    folder = root / "analysis"
    folder.mkdir()
    (folder / "adapters.json").write_text("{not json")
    (folder / "memory.json").write_text(json.dumps({"format": "something else"}))
    saved = load_analysis(ArtifactStore(root))
    assert saved.adapters is None and saved.memory is None
    assert len(saved.errors) == 2 and "adapters.json" in saved.errors[0] and "memory.json" in saved.errors[1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"large_rank": 4}, "large_rank"),
        ({"other_seed": 0}, "other_seed"),
        ({"memory_ranks": ()}, "memory_ranks"),
        ({"steps": 0}, "steps"),
        ({"memory_steps": 0}, "memory_steps"),
    ],
)
def test_bad_settings_name_their_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AnalysisSettings(**{**SMALL, **change}).validate()
    assert info.value.field == field
