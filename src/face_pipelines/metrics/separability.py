"""Identity separability and intra-class spread: how distinct the identities of a dataset are, and
how much each identity varies.

Cosine work is blockwise: a [C, D] set of centres is compared with itself (or with a reference set)
one `block_size x block_size` tile at a time, so the memory beyond the inputs is O(block_size^2) and
300K identities at D=512 fit on one GPU (or, slowly, on a CPU). Matrix products run in IEEE fp32 on
CUDA too (TF32 would move cosines by ~1e-3, enough to flip comparisons against a threshold).

Measures:
- `separability(centres, t)`: fraction of identities whose centre has cosine <= t to EVERY other
  centre (order-free; the measure reported as a curve over t).
- `separability_sequential(centres, t)`: the Vec2Face paper's counting variant - the number of
  centres whose cosine to every EARLIER centre is <= t (depends on the order; a greedily sampled set
  scores its full size at its own threshold).
- `intra_class_cosines` / `intra_class_summary`: each image's cosine to its identity's mean feature.
- `pixel_spread`: mean per-identity pixel standard deviation, to compare generated and real
  intra-class variation (a generator that ignores its noise scores low here, whatever the features
  say).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from face_pipelines.device import resolve_device
from face_pipelines.errors import DataError, ParameterError

DEFAULT_BLOCK_SIZE = 4096
DEFAULT_CURVE_THRESHOLDS = np.arange(0.3, 0.91, 0.05)
_EPS = 1e-12


# ----------------------------------------------------------------------------- shared helpers


def as_matrix(x, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`x` (array-like [N, D]) as a CPU tensor of `dtype`, after checking shape and finiteness.

    Raises:
        DataError: `x` is not 2-D, is empty in D, or holds NaN/inf (named by `name`).
    """
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise DataError(f"{name}: expected a 2-D array [N, D], got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise DataError(
            f"{name}: expected at least one feature dimension, got shape {tuple(t.shape)}"
        )
    t = t.detach().to("cpu", dtype)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise DataError(f"{name}: {bad} row(s) contain NaN or inf; expected finite features")
    return t


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (an all-zero row stays zero: cosine 0 to everything)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(_EPS)


@contextlib.contextmanager
def ieee_fp32_matmul(device: torch.device) -> Iterator[None]:
    """Force full fp32 (no TF32) CUDA matmuls inside the block; a no-op on CPU.

    Threshold comparisons on cosines need ~1e-6 accuracy; TF32 gives ~1e-3.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        previous, attribute = matmul.fp32_precision, "fp32_precision"
        matmul.fp32_precision = "ieee"
    except RuntimeError:
        # torch refuses to mix its new and legacy TF32 switches once the legacy one was used.
        previous, attribute = matmul.allow_tf32, "allow_tf32"
        matmul.allow_tf32 = False
    try:
        yield
    finally:
        setattr(matmul, attribute, previous)


def _check_block_size(block_size: int) -> int:
    if int(block_size) < 1:
        raise ParameterError(f"block_size: expected a positive integer, got {block_size!r}")
    return int(block_size)


def _check_threshold(t: float, name: str = "t") -> float:
    t = float(t)
    if not -1.0 <= t <= 1.0:
        raise ParameterError(f"{name}: a cosine threshold must lie in [-1, 1], got {t}")
    return t


def _unit_on_device(x, name: str, device: str | torch.device) -> tuple[torch.Tensor, torch.device]:
    dev = resolve_device(device)
    return unit_rows(as_matrix(x, name).to(dev)), dev


# ----------------------------------------------------------------------------- blockwise maxima


def max_cosine_to_others(
    centres, block_size: int = DEFAULT_BLOCK_SIZE, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Each centre's largest cosine similarity to any OTHER centre.

    Only tiles on or above the block diagonal are computed (the similarity matrix is symmetric):
    each tile updates the maxima of its rows and of its columns.

    Args:
        centres: [C, D] vectors (raw scale is fine: cosine ignores the norm).
        block_size: tile edge; memory beyond the inputs is about 4 * block_size^2 bytes.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto'.

    Returns:
        float32 [C]; -inf for a set of one centre (no other to compare with).
    """
    x, dev = _unit_on_device(centres, "centres", device)
    block = _check_block_size(block_size)
    n = x.shape[0]
    best = torch.full((n,), float("-inf"), device=dev)
    with ieee_fp32_matmul(dev):
        for a in range(0, n, block):
            rows = x[a : a + block]
            for c in range(a, n, block):
                sim = rows @ x[c : c + block].T
                if c == a:
                    sim.fill_diagonal_(float("-inf"))
                best[a : a + block] = torch.maximum(best[a : a + block], sim.amax(dim=1))
                if c != a:
                    best[c : c + block] = torch.maximum(best[c : c + block], sim.amax(dim=0))
    return best.cpu().numpy()


def max_cosine_to_earlier(
    centres, block_size: int = DEFAULT_BLOCK_SIZE, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Each centre's largest cosine similarity to any centre BEFORE it in row order.

    Returns:
        float32 [C]; the first entry is -inf (nothing precedes it).
    """
    x, dev = _unit_on_device(centres, "centres", device)
    block = _check_block_size(block_size)
    n = x.shape[0]
    best = torch.full((n,), float("-inf"), device=dev)
    with ieee_fp32_matmul(dev):
        for a in range(0, n, block):
            rows = x[a : a + block]
            for c in range(0, a + 1, block):
                sim = rows @ x[c : c + block].T
                if c == a:
                    # Within the diagonal tile only strictly earlier columns count.
                    sim = sim.masked_fill(
                        torch.ones_like(sim, dtype=torch.bool).triu(), float("-inf")
                    )
                best[a : a + block] = torch.maximum(best[a : a + block], sim.amax(dim=1))
    return best.cpu().numpy()


def max_cosine_to_reference(
    queries,
    reference,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's largest cosine similarity to any reference vector, and which one it is.

    The leakage check: queries = synthetic identity centres, reference = real identity centres.

    Returns:
        (float32 [Q] maxima, int64 [Q] index of the most similar reference row).

    Raises:
        DataError: shapes disagree in D, or the reference set is empty.
    """
    dev = resolve_device(device)
    q = unit_rows(as_matrix(queries, "queries").to(dev))
    r = unit_rows(as_matrix(reference, "reference").to(dev))
    if q.shape[1] != r.shape[1]:
        raise DataError(
            f"queries have D={q.shape[1]} but reference has D={r.shape[1]}; expected the same "
            "feature dimension (features from the same teacher)"
        )
    if r.shape[0] == 0:
        raise DataError("reference: expected at least one reference vector, got 0 rows")
    values, indices = max_cosine_unit(q, r, _check_block_size(block_size))
    return values.cpu().numpy(), indices.cpu().numpy()


def max_cosine_unit(
    q_unit: torch.Tensor, r_unit: torch.Tensor, block: int, with_index: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row maxima (and arg-maxima) of q_unit @ r_unit.T, one [block, block] tile at a time.

    Both inputs must already be unit rows on the same device (`unit_rows`); used by the sampler,
    which keeps its sets normalised on the device. With `with_index=False` the indices are not
    tracked (None is returned for them), which saves a slower arg-max reduction per tile.
    """
    dev = q_unit.device
    best = torch.full((q_unit.shape[0],), float("-inf"), device=dev)
    where = torch.zeros(q_unit.shape[0], dtype=torch.int64, device=dev) if with_index else None
    with ieee_fp32_matmul(dev):
        for a in range(0, q_unit.shape[0], block):
            rows = q_unit[a : a + block]
            for c in range(0, r_unit.shape[0], block):
                sim = rows @ r_unit[c : c + block].T
                if where is None:
                    best[a : a + block] = torch.maximum(best[a : a + block], sim.amax(dim=1))
                    continue
                values, idx = sim.max(dim=1)
                better = values > best[a : a + block]
                best[a : a + block] = torch.where(better, values, best[a : a + block])
                where[a : a + block] = torch.where(better, idx + c, where[a : a + block])
    return best, where


# ----------------------------------------------------------------------------- separability


def separability(
    centres,
    t: float,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
) -> float:
    """Fraction of identities whose centre has cosine <= t to every other centre."""
    t = _check_threshold(t)
    best = max_cosine_to_others(centres, block_size=block_size, device=device)
    return float(np.mean(best <= t)) if len(best) else float("nan")


def separability_curve(
    centres,
    ts: Sequence[float] | np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
) -> dict[float, float]:
    """`separability(centres, t)` for every t in `ts` from one blockwise pass.

    Args:
        ts: thresholds; default 0.30, 0.35, ..., 0.90.

    Returns:
        {t rounded to 4 decimals: fraction}; non-decreasing in t.
    """
    ts = DEFAULT_CURVE_THRESHOLDS if ts is None else np.asarray(ts, dtype=np.float64)
    thresholds = [_check_threshold(t, "ts") for t in np.atleast_1d(ts)]
    best = max_cosine_to_others(centres, block_size=block_size, device=device)
    if not len(best):
        return {round(t, 4): float("nan") for t in thresholds}
    return {round(t, 4): float(np.mean(best <= t)) for t in thresholds}


def separability_sequential(
    centres,
    t: float,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device = "cpu",
) -> int:
    """The paper's count: how many centres have cosine <= t to every EARLIER centre (row order).

    The first centre always counts.
    """
    t = _check_threshold(t)
    best = max_cosine_to_earlier(centres, block_size=block_size, device=device)
    return int(np.sum(best <= t))


# ----------------------------------------------------------------------------- intra-class spread


def identity_centres(features, labels) -> np.ndarray:
    """Mean raw feature per identity.

    Args:
        features: [N, D] raw (un-normalised) teacher features.
        labels: [N] integer identity labels.

    Returns:
        float32 [C, D]; row i belongs to the i-th smallest label (= label i for labels contiguous
        from 0, the manifest contract).

    Raises:
        DataError: misaligned/non-integer labels, or non-finite features.
    """
    feats = as_matrix(features, "features")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != feats.shape[0]:
        raise DataError(
            f"labels: expected one label per feature row ({feats.shape[0]}), got {labels.shape[0]}"
        )
    if feats.shape[0] == 0:
        raise DataError("features: expected at least one row, got 0")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: expected integer identity labels, got dtype {labels.dtype}")
    uniques, inverse = np.unique(labels, return_inverse=True)
    index = torch.from_numpy(inverse.reshape(-1).astype(np.int64))
    sums = torch.zeros((len(uniques), feats.shape[1]), dtype=torch.float64)
    sums.index_add_(0, index, feats.to(torch.float64))
    counts = torch.bincount(index, minlength=len(uniques)).to(torch.float64)
    return (sums / counts[:, None]).to(torch.float32).numpy()


def intra_class_cosines(features, labels) -> np.ndarray:
    """Each image's cosine similarity to its identity centre (the identity's mean raw feature).

    Args:
        features: [N, D] raw features.
        labels: [N] integer identity labels.

    Returns:
        float32 [N], aligned with the rows of `features`.
    """
    feats = as_matrix(features, "features")
    centres = torch.from_numpy(identity_centres(feats.numpy(), labels))
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    own = centres[torch.from_numpy(inverse.reshape(-1))]
    return (unit_rows(feats) * unit_rows(own)).sum(dim=1).numpy()


def intra_class_summary(cosines) -> dict[str, float]:
    """Mean, std and quantiles (5/25/50/75/95 %) of per-image cosines to their identity centres.

    Returns:
        {"n", "mean", "std", "q05", "q25", "median", "q75", "q95"} as plain floats (JSON-ready).
    """
    c = np.asarray(cosines, dtype=np.float64).reshape(-1)
    if c.size == 0:
        raise DataError("cosines: expected at least one value, got an empty array")
    q = np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {
        "n": float(c.size),
        "mean": float(c.mean()),
        "std": float(c.std()),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "median": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
    }


def pixel_spread(images, labels) -> float:
    """Mean over identities of the per-identity pixel standard deviation, on a [0, 1] scale.

    For each identity with at least two images: the standard deviation (ddof=1) of every pixel
    value across that identity's images, averaged over pixels and channels. Identities with a single
    image carry no spread and are left out; the result averages the rest with equal weight.

    Args:
        images: uint8 [N, H, W, C] (C = 3 for RGB), aligned images.
        labels: [N] integer identity labels.

    Raises:
        DataError: wrong dtype/shape, misaligned labels, or no identity with two or more images.
    """
    images = np.asarray(images)
    labels = _check_labels(labels, len(images) if images.ndim else 0, "images")
    if images.dtype != np.uint8 or images.ndim != 4:
        raise DataError(
            f"images: expected uint8 [N, H, W, C], got dtype {images.dtype} shape {images.shape}"
        )
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(order)]
    spreads = []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        group = images[order[s:e]].astype(np.float32) / 255.0
        spreads.append(float(group.std(axis=0, ddof=1).mean()))
    if not spreads:
        raise DataError("images: pixel_spread needs at least one identity with two or more images")
    return float(np.mean(spreads))


def _check_labels(labels, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(
            f"labels: expected one label per row of {what} ({n}), got {labels.shape[0]}"
        )
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels: expected integer identity labels, got dtype {labels.dtype}")
    return labels
