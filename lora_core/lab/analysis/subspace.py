"""The LoRA paper's analysis (Hu et al. 2021, arXiv 2106.09685, section 7) of an adapter's update, as
tensors in and numbers out: nothing here trains, loads or saves.

    phi = subspace_similarity(a_r8, a_r64)        # figure 3: phi[i-1, j-1] for the top i and top j directions
    amp = amplification(w, delta, r, "linear1")     # table 7: ||U^T W V^T||_F beside W's own and random directions
    images, sv = input_directions(delta_linear1, 8) # linear1's top input directions as 28x28 images
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lora_core.errors import ConfigError
from lora_core.model import IN_FEATURES, SIDE


# --- subspace similarity (figure 3) ----------------------------------------------------------------------------
def right_singular_vectors(a: torch.Tensor) -> torch.Tensor:
    """The right singular vectors of A (r x in) as columns, largest singular value first: shape (in, r)."""
    _, _, vh = torch.linalg.svd(a.detach().to("cpu", torch.float64), full_matrices=False)
    return vh.T


def subspace_similarity(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """The paper's phi(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) for i <= r1, j <= r2, with U the
    right singular vectors of each A (r x in): entry [i-1, j-1], in [0, 1]. 1 means the top-i directions of one
    lie inside the top-j of the other (or the other way round); unrelated random subspaces give about
    max(i, j) / in."""
    if a1.ndim != 2 or a2.ndim != 2 or a1.shape[1] != a2.shape[1]:
        raise ConfigError(
            "adapters", f"A matrices must be r x in with the same in, got {tuple(a1.shape)} and {tuple(a2.shape)}"
        )
    u1, u2 = right_singular_vectors(a1), right_singular_vectors(a2)
    # [i-1, j-1] = sum over the first i rows and j columns of (U1^T U2)^2 = ||U1[:, :i]^T U2[:, :j]||_F^2
    overlap = (u1.T @ u2).square().cumsum(0).cumsum(1)
    i = torch.arange(1, overlap.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, overlap.shape[1] + 1, dtype=torch.float64)[None, :]
    return (overlap / torch.minimum(i, j)).to(torch.float32)


@dataclass(frozen=True)
class LowRankUpdate:
    """An adapter's update scale·B·A kept as its factors: its SVD then costs two thin QRs and an r x r SVD
    instead of the SVD of a dense out x in matrix (2000 x 1000 for linear2), with the same result."""

    b: torch.Tensor  # out x r
    a: torch.Tensor  # r x in
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])

    def dense(self) -> torch.Tensor:
        return (self.b.detach().double() @ self.a.detach().double()) * self.scale


Update = torch.Tensor | LowRankUpdate


def update_svd(delta: Update) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U, S, Vh of an update (float64, largest first): of the dense matrix, or from its factors."""
    with torch.no_grad():
        if isinstance(delta, LowRankUpdate):
            qb, rb = torch.linalg.qr(delta.b.detach().to("cpu", torch.float64))
            qa, ra = torch.linalg.qr(delta.a.detach().to("cpu", torch.float64).T)
            um, sv, vmh = torch.linalg.svd(delta.scale * rb @ ra.T)  # scale·B·A = Qb (scale Rb Raᵀ) Qaᵀ
            return qb @ um, sv, vmh @ qa.T
        return torch.linalg.svd(delta.detach().to("cpu", torch.float64), full_matrices=False)


def update_input_basis(delta: Update, rank: int) -> torch.Tensor:
    """The update's top `rank` right singular vectors as rows, each scaled by its singular value (rank x in): a
    matrix whose right singular vectors, in order, are the update's, for subspace_similarity."""
    _, sv, vh = update_svd(delta)
    return sv[:rank, None] * vh[:rank]


def similarity_summary(phi: torch.Tensor, in_features: int, k: int = 8) -> dict[str, Any]:
    """The figures the paper reads off figure 3, with what unrelated random subspaces would give."""
    r1, r2 = phi.shape
    k = min(k, r1, r2)
    return {
        "top1": float(phi[0, 0]),
        "k": k,
        "top_k": float(phi[k - 1, k - 1]),
        "top1_in_all": float(phi[0, r2 - 1]),  # the first direction of A1 inside all of A2's
        "top_k_in_all": float(phi[k - 1, r2 - 1]),
        "random_top1": 1 / in_features,
        "random_top_k": k / in_features,
        "random_top1_in_all": r2 / in_features,
        "random_top_k_in_all": max(k, r2) / in_features,
    }


def similarity_reading(
    layer: str, names: tuple[str, str], summary: dict[str, Any], init: dict[str, Any] | None = None
) -> str:
    """One sentence reading figure 3's numbers for a layer; with `init` (the same figures for the two adapters'
    A before training), what training changed."""
    k = summary["k"]
    text = (
        f"{layer}: the top direction of {names[0]} lies {summary['top1_in_all']:.0%} inside all of {names[1]}'s "
        f"(random: {summary['random_top1_in_all']:.1%}) and overlaps its top direction by φ(1,1) = "
        f"{summary['top1']:.2f} (random: {summary['random_top1']:.2g}); the top {k} directions overlap by "
        f"φ({k},{k}) = {summary['top_k']:.2f} (random: {summary['random_top_k']:.2g})."
    )
    if init is not None:
        text += (
            f" Before training, their random A gave φ(1, all) = {init['top1_in_all']:.2f} and φ({k},{k}) = "
            f"{init['top_k']:.2f}"
            + (" (the same seed draws the same first rows)" if init["top_k_in_all"] > 0.99 else "")
            + "."
        )
    return text


# --- how the update relates to W (table 7) ---------------------------------------------------------------------
@dataclass
class Amplification:
    """||U^T W V^T||_F for the update's top-r singular directions U (left) and V (right, rows), beside the same
    projection onto W's own top-r directions and onto random orthonormal ones, and ||dW||_F."""

    layer: str
    rank: int
    delta_norm: float  # ||dW||_F
    projected_norm: float  # ||U^T W V^T||_F, U and V from dW
    weight_top_norm: float  # the same with W's own top-r singular directions
    random_norm: float  # the same with random orthonormal directions (mean over draws)
    weight_norm: float  # ||W||_F

    @property
    def factor(self) -> float | None:
        """The amplification factor ||dW||_F / ||U^T W V^T||_F (None where W has nothing along dW's directions)."""
        return self.delta_norm / self.projected_norm if self.projected_norm > 0 else None

    @property
    def position(self) -> float | None:
        """Where W's weight along dW's directions lies between random directions (0) and W's own top ones (1),
        on a log scale; None where W's top directions carry no more than random ones."""
        if self.projected_norm <= 0 or self.random_norm <= 0 or self.weight_top_norm <= self.random_norm * 1.0001:
            return None
        return math.log(self.projected_norm / self.random_norm) / math.log(self.weight_top_norm / self.random_norm)

    @property
    def emphasised(self) -> bool | None:
        """True: dW amplifies directions W already emphasises (closer to W's top directions than to random ones)."""
        position = self.position
        return None if position is None else position >= 0.5

    def reading(self) -> str:
        """One sentence reading the numbers for the user."""
        head = (
            f"{self.layer}: along the update's top {self.rank} directions W has "
            f"||UᵀWVᵀ||_F = {self.projected_norm:.3g}, against {self.weight_top_norm:.3g} along W's own top "
            f"{self.rank} and {self.random_norm:.3g} along random ones"
        )
        factor = self.factor
        if factor is None:
            return head + "; the update is zero, so it amplifies nothing."
        times_random = self.projected_norm / self.random_norm if self.random_norm > 0 else float("inf")
        share = self.projected_norm / self.weight_top_norm if self.weight_top_norm > 0 else 0.0
        if self.emphasised is None:
            verdict = "W's top directions carry no more than random ones at this rank, so which it favours is moot"
        elif self.emphasised:
            verdict = f"its directions are ones W already emphasises ({share:.0%} of what W's top directions carry)"
        else:
            if times_random <= 1.0:
                related = "no more than random ones carry"
            else:
                related = f"{times_random:.2g}× what random ones carry" + (
                    ": related to W" if times_random >= 2 else ""
                )
            verdict = f"its directions are ones W barely uses ({share:.1%} of what W's top directions carry, {related})"
        norm = f"||ΔW||_F = {self.delta_norm:.3g}"
        if factor >= 1:
            return f"{head}: {verdict}, and it amplifies them by a factor of {factor:.3g} ({norm})."
        return (
            f"{head}: {verdict}; its factor ||ΔW||_F / ||UᵀWVᵀ||_F is {factor:.3g} ({norm}), below 1: the update is "
            "weaker along them than W itself, so it does not amplify them."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "factor": self.factor,
            "position": self.position,
            "emphasised": self.emphasised,
            "reading": self.reading(),
        }


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A rows x cols matrix with orthonormal columns, uniformly random (QR of a Gaussian, signs fixed)."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


@torch.no_grad()
def amplification(
    weight: torch.Tensor,
    delta: Update,
    rank: int,
    layer: str = "",
    draws: int = 20,
    seed: int = 0,
    weight_singular_values: torch.Tensor | None = None,
) -> Amplification:
    """The paper's table 7 for one layer: W (out x in), its update dW = scale B A (same shape), r directions.
    `weight_singular_values` (W's, largest first) saves computing them again for another adapter."""
    if tuple(weight.shape) != tuple(delta.shape) or weight.ndim != 2:
        raise ConfigError(
            "delta", f"W and dW must be matrices of one shape, got {tuple(weight.shape)} and {tuple(delta.shape)}"
        )
    if not 1 <= rank <= min(weight.shape):
        raise ConfigError(
            "rank", f"must be from 1 to {min(weight.shape)} for a {tuple(weight.shape)} layer, got {rank}"
        )
    w = weight.detach().to("cpu", torch.float64)
    u, sv, vh = update_svd(delta)
    u, vh = u[:, :rank], vh[:rank]
    delta_norm = float(sv.square().sum().sqrt())
    # a zero update has no directions (its singular vectors would be arbitrary): nothing of W lies along them
    projected = float(torch.linalg.matrix_norm(u.T @ w @ vh.T)) if delta_norm > 0 else 0.0
    w_sv = torch.linalg.svdvals(w) if weight_singular_values is None else weight_singular_values.double()
    top = float(w_sv[:rank].square().sum().sqrt())  # ||Uw^T W Vw^T||_F = the norm of W's top-r singular values
    generator = torch.Generator().manual_seed(seed)
    random_norms = [
        float(
            torch.linalg.matrix_norm(
                random_orthonormal(w.shape[0], rank, generator).T @ w @ random_orthonormal(w.shape[1], rank, generator)
            )
        )
        for _ in range(draws)
    ]
    return Amplification(
        layer=layer,
        rank=rank,
        delta_norm=delta_norm,
        projected_norm=projected,
        weight_top_norm=top,
        random_norm=sum(random_norms) / len(random_norms),
        weight_norm=float(torch.linalg.matrix_norm(w)),
    )


def amplification_summary(rows: Sequence[Amplification]) -> str:
    """One sentence over all layers."""
    barely = [a.layer for a in rows if a.emphasised is False]
    already = [a.layer for a in rows if a.emphasised]
    parts = []
    if barely:
        parts.append(f"on {', '.join(barely)} the update amplifies directions W barely uses")
    if already:
        parts.append(f"on {', '.join(already)} it amplifies directions W already emphasises")
    if not parts:
        return "No layer's update could be read against W (zero updates, or W as strong in every direction)."
    factors = ", ".join(f"{a.layer} {a.factor:.3g}" for a in rows if a.factor is not None)
    text = "; ".join(parts)
    return f"{text[0].upper()}{text[1:]} (amplification factors: {factors})."


# --- linear1's input directions ------------------------------------------------------------------------------------
@torch.no_grad()
def input_directions(delta: Update, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top `count` right singular vectors of linear1's update (rows of V^T, length 784) as (count, 28, 28)
    images, each signed so that its largest-magnitude pixel is positive, and the update's singular values."""
    if len(delta.shape) != 2 or delta.shape[1] != IN_FEATURES:
        raise ConfigError("delta", f"expected linear1's update (out x {IN_FEATURES}), got {tuple(delta.shape)}")
    _, sv, vh = update_svd(delta)
    rows = vh[: max(0, min(count, vh.shape[0]))]
    peak = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True))
    rows = rows * torch.where(peak < 0, -1.0, 1.0)
    return rows.reshape(-1, SIDE, SIDE).to(torch.float32), sv.to(torch.float32)
