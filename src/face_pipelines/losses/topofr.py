"""TopoFR loss components: invariant structure alignment (ISA) and structure damage estimation (SDE).

ISA compares the 0-dimensional persistent homology of a batch in input space with that of the same
batch in latent space. For a Vietoris-Rips filtration the 0-dim persistence pairs are exactly the
edges of a minimum spanning tree (MST) of the pairwise-distance matrix: every point is born at 0 and
dies when Kruskal's algorithm first joins its component to another, at the length of that MST edge.
So "persistence pairs" = MST edges and "death times" = their lengths.

    L_sa = 1/2 * ( sum_{e in MST(X)} (D_X[e] - D_Z[e])^2 + sum_{e in MST(Z)} (D_Z[e] - D_X[e])^2 )

(the paper's symmetric form; the released code instead matched the i-th smallest death of each space
and divided by B). The MSTs are picked without gradient; the gradient reaches the latent distances
through their entries at the picked edges.

SDE fits a (half-)Gaussian(0, sigma^2) + Uniform(0, Omega) mixture to the per-sample prediction
entropies of a batch by EM; the posterior of the uniform component, h, flags samples near the
decision boundary, and the per-sample ArcFace loss is multiplied by (1 + h)^lambda * (1 - p_gt).
The released code truncated p_gt to an integer (so 1 - p_gt was always 1); here p_gt is the
real-valued softmax probability of the true class.

MST backends (all return the same edges, ties included; see `mst_edges`):
- "boruvka": torch, on the tensor's device. At most ceil(log2 B) vectorised rounds, each an O(B^2)
  masked row-argmin plus pointer jumping; on CUDA a fixed number of rounds (no host sync inside).
- "prim": torch, on the tensor's device, B-1 sequential vectorised O(B) steps. Less arithmetic
  than Boruvka (O(B^2) in total instead of O(B^2 log B)) but B-1 steps of several tiny kernels
  each, so it is bound by kernel-launch / interpreter overhead: slower than Boruvka on CPU already
  at B=128, and on CUDA (~10 launches per step, B-1 steps) expected to be worse still.
- "scipy": scipy.sparse.csgraph.minimum_spanning_tree (Kruskal) on a CPU copy; needs an edge sort
  and a sparse-matrix build, and a device->host copy on CUDA.
- "auto": boruvka on every device: the fastest measured on CPU at B=128 and 512
  (benchmarks/bench_topofr.py), and on CUDA the only one that needs neither a host copy nor a
  per-vertex loop (CUDA timings: run the benchmark on a GPU machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from face_pipelines.errors import DataError, ParameterError

MstBackend = Literal["auto", "boruvka", "prim", "scipy"]
_BACKENDS = ("auto", "boruvka", "prim", "scipy")

# Relative tolerance of the symmetry check: distance matrices computed with matrix products
# (cdist's mm path) are symmetric only up to rounding.
_SYMMETRY_RTOL = 1e-4


# --------------------------------------------------------------------------------------------
# Minimum spanning tree
# --------------------------------------------------------------------------------------------


def _validate_distance_matrix(dist: Tensor, name: str) -> None:
    """Raise DataError unless `dist` is a finite, square, (numerically) symmetric matrix."""
    if not isinstance(dist, Tensor):
        raise DataError(
            f"{name}: expected a torch.Tensor distance matrix, got {type(dist).__name__}"
        )
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise DataError(
            f"{name}: expected a square [B, B] pairwise-distance matrix, got shape "
            f"{tuple(dist.shape)}"
        )
    if dist.shape[0] == 0:
        raise DataError(f"{name}: expected at least one point (B >= 1), got an empty [0, 0] matrix")
    if not dist.is_floating_point():
        raise DataError(
            f"{name}: expected a floating-point distance matrix, got dtype {dist.dtype}"
        )
    d = dist.detach()
    if not bool(torch.isfinite(d).all()):
        raise DataError(f"{name}: distance matrix contains NaN or Inf values")
    if d.shape[0] > 1:
        asym = (d - d.T).abs().max()
        scale = d.abs().max()
        if bool(asym > _SYMMETRY_RTOL * scale + 1e-12):
            raise DataError(
                f"{name}: distance matrix is not symmetric (max |D - D^T| = {float(asym):.3g}, "
                f"max |D| = {float(scale):.3g}); pass a pairwise-distance matrix D[i, j] = d(i, j)"
            )


def _symmetric_weights(dist: Tensor) -> Tensor:
    """[B, B] weights mirrored from the strict upper triangle (exactly symmetric), +inf diagonal.

    Reading one triangle only means a matrix that is symmetric up to rounding gives the same tree
    whichever way round an edge is looked at. Half precision is widened to float32.
    """
    w = dist.detach()
    if w.dtype in (torch.float16, torch.bfloat16):
        w = w.float()
    upper = torch.triu(w, diagonal=1)
    w = upper + upper.T
    return w.fill_diagonal_(float("inf"))


def _edge_ids(b: int, device: torch.device) -> Tensor:
    """[B, B] int64 edge id min(i, j) * B + max(i, j): the (i, j), i < j, row-major order.

    Within any row the ids increase with the column, so a first-index argmin over a row breaks
    weight ties by edge id - the property the torch backends rely on for the (weight, id) order.
    """
    idx = torch.arange(b, device=device)
    lo = torch.minimum(idx[:, None], idx[None, :])
    hi = torch.maximum(idx[:, None], idx[None, :])
    return lo * b + hi


def _mst_ids_boruvka(w: Tensor) -> Tensor:
    """Edge ids of the MST by Boruvka's algorithm, vectorised over components (unsorted).

    Edges are compared by (weight, edge id), a strict total order, so the MST is unique and the
    only cycles among the edges picked in a round are two components picking the same edge,
    which the smaller component id breaks. Each round every component picks its cheapest
    outgoing edge (masked row argmin, then a two-stage per-component min: weight, then id); the
    picked edges join the tree and components merge by pointer jumping. Every round at least
    halves the number of components, so ceil(log2 B) rounds always suffice. On CUDA the round and
    pointer-jumping counts are fixed at that bound (no host sync inside); on CPU, where a check is
    free, both loops stop as soon as they are done (random data needs ~log4 B rounds).
    """
    b = w.shape[0]
    device = w.device
    n_ids = b * b  # also the "no edge" id: in_tree's last slot absorbs it
    rounds = max(1, math.ceil(math.log2(b)))
    vertex = torch.arange(b, device=device)
    comp = vertex.clone()
    in_tree = torch.zeros(n_ids + 1, dtype=torch.bool, device=device)
    inf = torch.full((b,), float("inf"), dtype=w.dtype, device=device)
    no_id = torch.full((b,), n_ids, dtype=torch.long, device=device)
    early_exit = device.type == "cpu"
    for _ in range(rounds):
        masked = w.masked_fill(comp[:, None] == comp[None, :], float("inf"))
        vj = masked.argmin(dim=1)
        vw = masked.gather(1, vj[:, None]).squeeze(1)
        vid = torch.minimum(vertex, vj) * b + torch.maximum(vertex, vj)
        cw = inf.scatter_reduce(0, comp, vw, reduce="amin", include_self=True)
        candidate = torch.where((vw == cw[comp]) & torch.isfinite(vw), vid, no_id)
        cid = no_id.scatter_reduce(0, comp, candidate, reduce="amin", include_self=True)
        in_tree[cid] = True
        has_edge = cid < n_ids
        if early_exit and not bool(has_edge.any()):
            break
        safe = torch.where(has_edge, cid, torch.zeros_like(cid))
        ca, cb = comp[safe // b], comp[safe % b]
        parent = torch.where(has_edge, torch.where(ca == vertex, cb, ca), vertex)
        mutual = (parent[parent] == vertex) & (vertex < parent)
        parent = torch.where(mutual, vertex, parent)
        for _ in range(rounds):
            jumped = parent[parent]
            if early_exit and torch.equal(jumped, parent):
                break
            parent = jumped
        comp = parent[comp]
    return in_tree[:n_ids].nonzero().squeeze(1)


def _mst_ids_prim(w: Tensor) -> Tensor:
    """Edge ids of the MST by Prim's algorithm from vertex 0: B-1 vectorised O(B) steps.

    Keys are (weight, edge id) pairs compared lexicographically, so the tree is the same unique
    MST the other backends find, ties included.
    """
    b = w.shape[0]
    device = w.device
    eid = _edge_ids(b, device)
    big = b * b
    in_tree = torch.zeros(b, dtype=torch.bool, device=device)
    in_tree[0] = True
    best_w = w[0].clone()
    best_id = eid[0].clone()
    picked = torch.empty(b - 1, dtype=torch.long, device=device)
    for k in range(b - 1):
        cand_w = best_w.masked_fill(in_tree, float("inf"))
        tied = cand_w == cand_w.min()
        u = best_id.masked_fill(~tied, big).argmin()
        picked[k] = best_id[u]
        in_tree[u] = True
        row_w, row_id = w[u], eid[u]
        better = (row_w < best_w) | ((row_w == best_w) & (row_id < best_id))
        best_w = torch.where(better, row_w, best_w)
        best_id = torch.where(better, row_id, best_id)
    return picked


def _mst_ids_scipy(w: Tensor) -> Tensor:
    """Edge ids of the MST from scipy's Kruskal on a CPU copy.

    scipy is given the ranks + 1 of the edges in (weight, id) order instead of the weights: it
    treats a zero weight as a missing edge (coincident points would be silently disconnected),
    and distinct integer weights reproduce the other backends' tie-break exactly.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    b = w.shape[0]
    wn = w.cpu().numpy()
    iu, ju = np.triu_indices(b, k=1)
    order = np.argsort(wn[iu, ju], kind="stable")  # triu_indices is row-major: ties by id
    ranks = np.empty(order.size, dtype=np.float64)
    ranks[order] = np.arange(1, order.size + 1, dtype=np.float64)
    tree = minimum_spanning_tree(coo_matrix((ranks, (iu, ju)), shape=(b, b)).tocsr())
    picked = order[tree.data.astype(np.int64) - 1]
    ids = iu[picked].astype(np.int64) * b + ju[picked]
    return torch.from_numpy(ids).to(w.device)


def resolve_mst_backend(device: torch.device | str, backend: MstBackend = "auto") -> str:
    """The MST backend `backend` stands for on `device` ("auto" is boruvka on every device)."""
    if backend not in _BACKENDS:
        raise ParameterError(f"mst backend: expected one of {_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "boruvka"


def mst_edges(dist: Tensor, backend: MstBackend = "auto") -> Tensor:
    """Minimum-spanning-tree edges (= 0-dim persistence pairs) of a pairwise-distance matrix.

    Args:
        dist: [B, B] symmetric pairwise distances (only the strict upper triangle is read; the
            diagonal is ignored). Never differentiated.
        backend: "auto" | "boruvka" | "prim" | "scipy" (see the module docstring).

    Returns:
        LongTensor [B-1, 2] on dist's device, rows (i, j) with i < j, sorted by increasing weight
        (row k is the k-th smallest death time). Edges are ordered by (weight, i, j), so tied
        distances give one deterministic tree, the same for every backend. B=1 gives [0, 2].

    Raises:
        DataError: dist is not square, empty, non-finite or not symmetric.
    """
    _validate_distance_matrix(dist, "mst_edges(dist)")
    return _mst_edges_validated(dist, backend)


def _mst_edges_validated(dist: Tensor, backend: MstBackend) -> Tensor:
    """`mst_edges` without the input checks (for callers that already ran them)."""
    backend = resolve_mst_backend(dist.device, backend)
    b = dist.shape[0]
    if b == 1:
        return torch.empty((0, 2), dtype=torch.long, device=dist.device)
    with torch.no_grad():
        w = _symmetric_weights(dist)
        if backend == "scipy":
            ids = _mst_ids_scipy(w)
        elif backend == "prim":
            ids = _mst_ids_prim(w)
        else:
            ids = _mst_ids_boruvka(w)
        ids = ids.sort().values  # id order first, so the stable weight sort breaks ties by id
        ids = ids[torch.argsort(w.reshape(-1)[ids], stable=True)]
        edges = torch.stack([ids // b, ids % b], dim=1)
    if edges.shape[0] != b - 1:  # only a bug can get here: a connected graph has B-1 tree edges
        raise RuntimeError(
            f"MST backend {backend!r} returned {edges.shape[0]} edges, expected {b - 1}"
        )
    return edges


def persistence_deaths(dist: Tensor, backend: MstBackend = "auto") -> Tensor:
    """Sorted 0-dim death times (MST edge lengths) of a distance matrix, [B-1], detached."""
    edges = mst_edges(dist, backend)
    return dist.detach()[edges[:, 0], edges[:, 1]]


# --------------------------------------------------------------------------------------------
# ISA
# --------------------------------------------------------------------------------------------


def structure_alignment_loss(
    x_dist: Tensor, z_dist: Tensor, *, backend: MstBackend = "auto"
) -> Tensor:
    """TopoFR invariant structure alignment loss between input-space and latent-space distances.

    L_sa = 1/2 ( sum_{e in MST(x_dist)} (x_dist[e] - z_dist[e])^2
               + sum_{e in MST(z_dist)} (z_dist[e] - x_dist[e])^2 ),
    sums of squares over the B-1 MST edges of each space, no further normalisation (scale the
    distance matrices before the call, e.g. with `input_space_distances` /
    `latent_space_distances`).

    Args:
        x_dist: [B, B] input-space distances. Treated as a constant (detached): the input space
            has no parameters, and the reference propagates gradient only through latent distances.
        z_dist: [B, B] latent-space distances; the loss is differentiable w.r.t. it (through its
            entries at the MST edges of both spaces, which are picked without gradient).
        backend: MST backend (see `mst_edges`).

    Returns:
        0-dim tensor in z_dist's dtype (0 for B=1, still attached to z_dist's graph).
    """
    _validate_distance_matrix(x_dist, "structure_alignment_loss(x_dist)")
    _validate_distance_matrix(z_dist, "structure_alignment_loss(z_dist)")
    if x_dist.shape != z_dist.shape:
        raise DataError(
            f"structure_alignment_loss: x_dist {tuple(x_dist.shape)} and z_dist "
            f"{tuple(z_dist.shape)} must describe the same batch (same [B, B] shape)"
        )
    if x_dist.device != z_dist.device:
        raise DataError(
            f"structure_alignment_loss: x_dist on {x_dist.device} but z_dist on {z_dist.device}"
        )
    x = x_dist.detach().to(z_dist.dtype)
    ex = _mst_edges_validated(x, backend)
    ez = _mst_edges_validated(z_dist, backend)
    term_x = (x[ex[:, 0], ex[:, 1]] - z_dist[ex[:, 0], ex[:, 1]]).pow(2).sum()
    term_z = (z_dist[ez[:, 0], ez[:, 1]] - x[ez[:, 0], ez[:, 1]]).pow(2).sum()
    return 0.5 * (term_x + term_z)


def topology_discrepancy(x_dist: Tensor, z_dist: Tensor, *, backend: MstBackend = "auto") -> float:
    """Mean |death_X - death_Z| over the sorted 0-dim death times of the two spaces (a diagnostic).

    0 when both batches have the same persistence diagram (same sorted MST edge lengths); in the
    distance units of the inputs. Returns a Python float (one host sync) for metric logging.
    """
    dx = persistence_deaths(x_dist, backend)
    dz = persistence_deaths(z_dist, backend)
    if dx.shape != dz.shape:
        raise DataError(
            f"topology_discrepancy: x_dist {tuple(x_dist.shape)} and z_dist {tuple(z_dist.shape)} "
            "must describe the same batch"
        )
    if dx.numel() == 0:
        return 0.0
    return float((dx.double() - dz.double()).abs().mean())


def _pairwise_l2(points: Tensor) -> Tensor:
    """Exactly symmetric [B, B] L2 distances with a zero diagonal and finite gradients.

    Uses |a|^2 + |b|^2 - 2ab after centring (distances are translation invariant, and centring
    shrinks the norms, so the cancellation error of the matrix-product form shrinks too). The
    squared distances are clamped away from 0 before the square root so coincident points (and
    the diagonal) give a zero, not an infinite, gradient.
    """
    p = points - points.mean(dim=0, keepdim=True)
    sq = p.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (p @ p.T)
    d2 = 0.5 * (d2 + d2.T)
    d = d2.clamp_min(1e-12).sqrt()
    eye = torch.eye(d.shape[0], dtype=torch.bool, device=d.device)
    return d.masked_fill(eye, 0.0)


def input_space_distances(images_unperturbed: Tensor) -> Tensor:
    """Input-space distances of a batch: flattened L2 / (2 * sqrt(C*H*W)), in [0, 1], detached.

    Images are expected in [-1, 1], where the largest possible per-pixel difference is 2, so
    2*sqrt(C*H*W) is the largest possible distance (the reference's normalisation). Computed in
    float32 with autocast off (bf16 matrix products would swamp small distances).

    Args:
        images_unperturbed: [B, C, H, W] float images (the batch before RSP).
    Returns:
        [B, B] float32 tensor, no gradient.
    """
    if not isinstance(images_unperturbed, Tensor) or images_unperturbed.dim() != 4:
        shape = getattr(images_unperturbed, "shape", None)
        raise DataError(f"input_space_distances: expected images [B, C, H, W], got shape {shape}")
    b = images_unperturbed.shape[0]
    dim = images_unperturbed[0].numel()
    with torch.no_grad(), torch.autocast(images_unperturbed.device.type, enabled=False):
        flat = images_unperturbed.reshape(b, dim).float()
        return _pairwise_l2(flat) / (2.0 * math.sqrt(dim))


def pairwise_distance_scale(dist: Tensor) -> Tensor:
    """Mean off-diagonal entry of a [B, B] distance matrix (detached 0-dim tensor; 1 if B < 2)."""
    b = dist.shape[0]
    if b < 2:
        return torch.ones((), dtype=dist.dtype, device=dist.device)
    return dist.detach().sum() / (b * (b - 1))


def latent_space_distances(embeddings_raw: Tensor, reference_dist: Tensor | None = None) -> Tensor:
    """Latent-space distances: L2 between raw (un-normalised) embeddings, scale-matched.

    The raw embeddings' scale is arbitrary (ArcFace only sees their directions, and it drifts
    during training), while the input distances live in [0, 1]. So the L2 distances are divided
    by their own mean off-diagonal value and, when `reference_dist` is given, multiplied by its
    mean off-diagonal value: both spaces then have the same average pairwise distance and the
    loss compares the shape of the structure, not units.

    The normaliser is detached on purpose: with gradient through it, the loss could be lowered by
    inflating the batch mean (pushing a few points far away) instead of fixing the MST edges, and
    every edge's gradient would spread over all B^2 pairs. Detached, the gradient acts only on the
    MST edges the loss is about.

    Args:
        embeddings_raw: [B, D] embeddings before L2 normalisation (of the perturbed batch).
        reference_dist: optional [B, B] distances whose scale to match (the input-space distances).
    Returns:
        [B, B] float32 distances, differentiable w.r.t. embeddings_raw (finite gradient also for
        coincident embeddings).
    """
    if not isinstance(embeddings_raw, Tensor) or embeddings_raw.dim() != 2:
        shape = getattr(embeddings_raw, "shape", None)
        raise DataError(f"latent_space_distances: expected embeddings [B, D], got shape {shape}")
    with torch.autocast(embeddings_raw.device.type, enabled=False):
        d = _pairwise_l2(embeddings_raw.float())
        scale = pairwise_distance_scale(d).clamp_min(1e-12)
        target = (
            pairwise_distance_scale(reference_dist).float().to(d.device)
            if reference_dist is not None
            else torch.ones((), device=d.device)
        )
        return d * (target / scale)


# --------------------------------------------------------------------------------------------
# SDE
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SdeDiagnostics:
    """What SDE found in one batch (all detached tensors; `to_metrics` turns the scalars to floats).

    Attributes:
        entropy: [B] prediction entropy per sample (nats).
        hard_posterior: [B] h, posterior probability of the uniform (hard) component.
        p_gt: [B] softmax probability of the true class.
        mean_weight: mean SDE weight over the batch.
        hard_fraction: fraction of samples with h > 0.5.
        sigma: fitted standard deviation of the zero-mean half-Gaussian (easy) component.
        mixing_uniform: fitted mixing proportion of the uniform component (1 - pi).
        uniform_upper: Omega, the upper end of the uniform component's support.
    """

    entropy: Tensor
    hard_posterior: Tensor
    p_gt: Tensor
    mean_weight: Tensor
    hard_fraction: Tensor
    sigma: Tensor
    mixing_uniform: Tensor
    uniform_upper: Tensor

    def to_metrics(self, prefix: str = "sde/") -> dict[str, float]:
        """Scalar diagnostics as floats for a `log(metrics, step)` callback (one host sync each)."""
        return {
            f"{prefix}mean_weight": float(self.mean_weight),
            f"{prefix}hard_fraction": float(self.hard_fraction),
            f"{prefix}sigma": float(self.sigma),
            f"{prefix}mixing_uniform": float(self.mixing_uniform),
            f"{prefix}mean_entropy": float(self.entropy.mean()),
        }


def fit_entropy_mixture(
    entropy: Tensor, uniform_upper: Tensor | float, em_iters: int = 20
) -> tuple[Tensor, Tensor, Tensor]:
    """EM fit of pi * HalfNormal(0, sigma^2) + (1 - pi) * Uniform(0, Omega) to entropies.

    The Gaussian is zero-mean and restricted to [0, inf) (entropies are non-negative), so its
    density is 2 * N(e | 0, sigma^2); its variance MLE is sum(r * e^2) / sum(r). A fixed number of
    iterations keeps it free of host syncs. sigma and pi are clamped so a degenerate batch (all
    entropies equal, or all zero) yields finite values instead of NaN.

    Args:
        entropy: [B] non-negative values.
        uniform_upper: Omega (> 0).
        em_iters: EM iterations (>= 1).
    Returns:
        (h, sigma, pi): h [B] posterior of the uniform component, fitted sigma and pi (0-dim).
    """
    if em_iters < 1:
        raise ParameterError(f"sde em_iters: expected an integer >= 1, got {em_iters}")
    e = entropy.detach().double()
    omega = torch.as_tensor(uniform_upper, dtype=torch.float64, device=e.device).clamp_min(1e-12)
    e = torch.minimum(e.clamp_min(0.0), omega)
    # sigma floor: a fraction of the support, so an all-zero batch does not collapse to a delta
    sigma_min = 1e-4 * omega
    log_u = -torch.log(omega)
    # start the Gaussian on the lower half of the batch, where easy samples live
    k = max(1, e.numel() // 2)
    low = e.sort().values[:k]
    var = low.pow(2).mean().clamp_min(sigma_min**2)
    pi = torch.tensor(0.5, dtype=torch.float64, device=e.device)
    half_log_2pi = 0.5 * math.log(2.0 * math.pi)
    for _ in range(em_iters):
        log_g = math.log(2.0) - half_log_2pi - 0.5 * torch.log(var) - e.pow(2) / (2.0 * var)
        r = torch.sigmoid(torch.log(pi) + log_g - torch.log1p(-pi) - log_u)  # P(easy | e)
        pi = r.mean().clamp(1e-4, 1.0 - 1e-4)
        var = ((r * e.pow(2)).sum() / r.sum().clamp_min(1e-12)).clamp_min(sigma_min**2)
    log_g = math.log(2.0) - half_log_2pi - 0.5 * torch.log(var) - e.pow(2) / (2.0 * var)
    h = torch.sigmoid(torch.log1p(-pi) + log_u - torch.log(pi) - log_g)
    return h, var.sqrt(), pi


def sde_weights(
    logits: Tensor,
    labels: Tensor,
    lam: float = 1.0,
    em_iters: int = 20,
    *,
    inputs_are_probs: bool = False,
    uniform_upper: Literal["max_entropy", "observed"] = "max_entropy",
) -> tuple[Tensor, SdeDiagnostics]:
    """TopoFR structure damage scores: per-sample weights for the classification loss.

    entropy_i = H(softmax(margin logits_i)); a half-Gaussian(0, sigma^2) + Uniform(0, Omega) mixture
    is fitted to the batch's entropies by EM; h_i = posterior of the uniform (hard) component;
    weight_i = (1 + h_i)^lam * (1 - p_gt_i), with p_gt_i the real-valued softmax probability of the
    true class. Multiply the per-sample ArcFace loss by the weights. Note the weights are not
    normalised: as training makes predictions confident, (1 - p_gt) and so the effective loss scale
    shrink (the paper's Focal-loss-like behaviour).

    Args:
        logits: [B, K] margin logits (s * cos with the margin on the target), or probabilities if
            inputs_are_probs.
        labels: [B] int class indices in [0, K).
        lam: exponent lambda (the paper uses 1).
        em_iters: EM iterations.
        inputs_are_probs: `logits` already holds probabilities (rows summing to 1).
        uniform_upper: Omega = "max_entropy" (log K, the support of any entropy) or "observed"
            (the batch's largest entropy).
    Returns:
        (weights [B] float32 detached, SdeDiagnostics).
    """
    if logits.dim() != 2:
        raise DataError(f"sde_weights: expected logits [B, K], got shape {tuple(logits.shape)}")
    b, k = logits.shape
    if labels.shape != (b,):
        raise DataError(
            f"sde_weights: expected labels of shape ({b},) matching logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"sde_weights: labels must be integer class indices, got {labels.dtype}")
    if b and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise DataError(
            f"sde_weights: labels must lie in [0, {k}) (the logits' class count), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    if uniform_upper not in ("max_entropy", "observed"):
        raise ParameterError(
            f"sde uniform_upper: expected 'max_entropy' or 'observed', got {uniform_upper!r}"
        )
    if not math.isfinite(lam) or lam < 0:
        raise ParameterError(f"sde lambda: expected a finite value >= 0, got {lam}")
    with torch.no_grad():
        x = logits.detach().float()
        if inputs_are_probs:
            probs = x.clamp_min(0.0)
            log_probs = torch.log(probs.clamp_min(1e-30))
        else:
            log_probs = torch.log_softmax(x, dim=1)
            probs = log_probs.exp()
        entropy = (-(probs * log_probs).sum(dim=1)).clamp_min(0.0)
        p_gt = probs.gather(1, labels.long().view(-1, 1)).squeeze(1).clamp(0.0, 1.0)
        if uniform_upper == "max_entropy":
            omega = torch.tensor(max(math.log(k), 1e-12), device=x.device)
        else:
            omega = entropy.max().clamp_min(1e-12)
        h, sigma, pi = fit_entropy_mixture(entropy, omega, em_iters)
        h = h.float()
        weights = (1.0 + h).pow(lam) * (1.0 - p_gt)
        diag = SdeDiagnostics(
            entropy=entropy,
            hard_posterior=h,
            p_gt=p_gt,
            mean_weight=weights.mean(),
            hard_fraction=(h > 0.5).float().mean(),
            sigma=sigma.float(),
            mixing_uniform=(1.0 - pi).float(),
            uniform_upper=omega.float(),
        )
    return weights, diag
