"""Intruder dimensions (lora_core.lab.analysis.intruders) on matrices whose answer is known, and a small run of
LoRA and full fine-tuning that saves, reads back and relates its counts to forgetting."""

from __future__ import annotations

import math

import pytest
import torch

from lora_core.errors import ConfigError
from lora_core.lab import readings
from lora_core.lab.analysis.intruders import (
    IntruderSettings,
    best_matches,
    correlation,
    intruder_count,
    left_singular_vectors,
    load_intruders,
    run_intruders,
    runs_of,
)
from lora_core.store.artifacts import ArtifactStore


def orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.fixture
def w0() -> torch.Tensor:
    """A 40 x 40 weight with singular values 40, 39, ..., 1."""
    u, v = orthonormal(40, 0), orthonormal(40, 1)
    return u @ torch.diag(torch.arange(40, 0, -1, dtype=torch.float32)) @ v.T


def test_an_update_along_w_s_own_top_direction_has_no_intruder(w0):
    u, v = left_singular_vectors(w0), torch.linalg.svd(w0)[2].T
    w1 = w0 + 25.0 * torch.outer(u[:, 0], v[:, 0])  # only stretches the top direction
    matches = best_matches(u, w1, 10)
    assert min(matches) > 0.99 and intruder_count(matches, 10, 0.9) == 0


def test_a_large_update_off_w_s_directions_is_exactly_one_intruder(w0):
    u = left_singular_vectors(w0)
    spread = u.sum(dim=1) / math.sqrt(40)  # an equal mix of all 40 directions: |cos| with each is 1/sqrt(40)
    w1 = w0 + 200.0 * torch.outer(spread, orthonormal(40, 2)[:, 0])
    matches = best_matches(u, w1, 10)
    assert matches[0] < 0.3  # the new top direction is the intruder
    assert intruder_count(matches, 10, 0.3) == 1 and intruder_count(matches, 10, 0.9) >= 1
    assert intruder_count(matches, 1, 0.3) == 1 and all(m > 0.3 for m in matches[1:])


def test_correlation_needs_three_runs_and_a_spread():
    assert correlation([(0, 1.0), (1, 2.0)]) is None
    assert correlation([(1, 1.0), (1, 2.0), (1, 3.0)]) is None
    assert correlation([(0, 0.0), (1, -1.0), (2, -2.0)]) == pytest.approx(-1.0)


def test_a_small_run_measures_lora_and_full_and_reads_back(artifacts_copy, tiny_mnist):
    store = ArtifactStore(artifacts_copy)
    settings = IntruderSettings(ranks=(1, 4), tasks=("weakest",), steps=3, batch_size=32, device="cpu")
    saved = run_intruders(store, tiny_mnist, settings)
    runs = runs_of(saved)
    assert [(r.method, r.rank) for r in runs] == [("lora", 1), ("lora", 4), ("full", None)]
    for run in runs:
        assert set(run.matches) == {"linear1", "linear2", "linear3"}
        assert len(run.matches["linear3"]) == 10 and len(run.matches["linear1"]) == 50  # linear3 has 10 directions
        assert run.counts["linear3"]["50"]["0.9"] == run.counts["linear3"]["10"]["0.9"]
        assert run.forgot_on == "the other digits" and all(0 <= m <= 1 + 1e-6 for m in run.matches["linear2"])
    assert load_intruders(store) == saved
    with pytest.raises(ConfigError):
        IntruderSettings(ranks=()).validate()


def test_the_reading_names_the_most_intruded_run_and_reads_each_task_apart():
    def run(task: str, method: str, rank: int | None, count: int) -> dict:
        return {"task": task, "method": method, "rank": rank, "counts": {"linear1": {"10": {"0.5": count}}}}

    saved = {
        "headline": {"k": 10, "eps": 0.5},
        "runs": [run("weakest", "lora", 1, 0), run("weakest", "lora", 64, 7), run("weakest", "full", None, 1)],
        "correlation": {"weakest": -0.5, "rotate:45": None},
    }
    assert readings.read_intruders(saved) == (
        "At k = 10 and eps = 0.5, LoRA r=64 on weakest had the most intruders (7 over its layers); on weakest more "
        "intruders went with more forgetting over 3 runs (Pearson r = -0.50); on rotate:45 too few runs, or no "
        "spread, to relate them to forgetting."
    )
    none = {**saved, "runs": [run("weakest", "lora", 1, 0)], "correlation": {"weakest": 0.0}}
    assert readings.read_intruders(none) == (
        "No run had an intruder among any layer's top 10 directions at eps 0.5; on weakest the count did not go with "
        "forgetting over 1 run (Pearson r = 0)."
    )
