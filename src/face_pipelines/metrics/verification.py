"""Face verification accuracy with insightface's 10-fold protocol, VAL@FAR, and flip-test embedding.

Protocol (insightface eval/verification.py): L2-normalise both embeddings of each pair, squared
Euclidean distance in [0, 4], "same" when distance < threshold. Pairs are split into contiguous
folds (sklearn KFold(n_splits, shuffle=False): the first n % folds folds get one extra pair). For
each fold the threshold on the grid 0, 0.01, ..., 3.99 (np.arange(0, 4, 0.01)) with the highest
accuracy on the other folds is chosen (ties -> smallest threshold) and scored on the held-out fold.

The ROC and TAR at fixed FARs (`verification_curve`) use all pairs at once, as papers that compare
ROC curves do: no folds, every distinct distance a threshold.
"""

from __future__ import annotations

import numpy as np
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.image_tensors import normalise

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
TAR_FAR_LEVELS = (1e-4, 1e-3, 1e-2, 1e-1)


def _pair_distances(
    embeddings_a, embeddings_b, issame, folds: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(embeddings_a, dtype=np.float64)
    b = np.asarray(embeddings_b, dtype=np.float64)
    same = np.asarray(issame)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(
            f"verification needs two [N, D] embedding arrays of equal shape, got {a.shape} and "
            f"{b.shape}"
        )
    if same.shape != (a.shape[0],):
        raise DataError(f"issame must have shape ({a.shape[0]},), got {same.shape}")
    if same.dtype != bool and not np.isin(same, (0, 1)).all():
        raise DataError("issame must be boolean (or 0/1)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise DataError("verification embeddings contain NaN or inf")
    if folds is not None and (folds < 2 or a.shape[0] < folds):
        raise ParameterError(f"folds must be in [2, number of pairs={a.shape[0]}], got {folds}")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum((a - b) ** 2, axis=1), same.astype(bool)


def fold_ids(n: int, folds: int) -> np.ndarray:
    """Fold index of each of `n` items under KFold(folds, shuffle=False) (contiguous blocks)."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.repeat(np.arange(folds), sizes)


def _count_below(
    dist: np.ndarray, fold: np.ndarray, folds: int, thresholds: np.ndarray
) -> np.ndarray:
    """[folds, T] number of items of each fold with dist < threshold (vectorised by sorting)."""
    out = np.zeros((folds, thresholds.size), dtype=np.int64)
    for f in range(folds):
        out[f] = np.searchsorted(np.sort(dist[fold == f]), thresholds, side="left")
    return out


def verification_folds(embeddings_a, embeddings_b, issame, folds: int = 10) -> dict:
    """Per-fold results of the 10-fold protocol: accuracies [folds] and chosen thresholds."""
    dist, same = _pair_distances(embeddings_a, embeddings_b, issame, folds)
    fold = fold_ids(dist.size, folds)
    thr = ACCURACY_THRESHOLDS
    same_below = _count_below(dist[same], fold[same], folds, thr)  # true accepts
    diff_below = _count_below(dist[~same], fold[~same], folds, thr)  # false accepts
    n_diff = np.bincount(fold[~same], minlength=folds)
    correct = same_below + (n_diff[:, None] - diff_below)  # [folds, T]
    train_correct = correct.sum(axis=0, keepdims=True) - correct
    best = np.argmax(train_correct, axis=1)  # first maximum = smallest threshold
    n_fold = np.bincount(fold, minlength=folds)
    accuracies = correct[np.arange(folds), best] / n_fold
    return {"accuracies": accuracies, "thresholds": thr[best]}


def verification_accuracy(
    embeddings_a, embeddings_b, issame, folds: int = 10
) -> tuple[float, float]:
    """Mean and (population) std of the held-out fold accuracies under insightface's protocol.

    embeddings_a/b: [N, D] (any scale; normalised here); issame: [N] bool.
    """
    acc = verification_folds(embeddings_a, embeddings_b, issame, folds)["accuracies"]
    return float(np.mean(acc)), float(np.std(acc))


def tar_at_far(embeddings_a, embeddings_b, issame, far: float = 1e-3, folds: int = 10) -> float:
    """VAL (true accept rate) at a target FAR, insightface style, averaged over held-out folds.

    On the other folds the FAR over the grid 0..4 step 0.001 is computed; the threshold where it
    reaches `far` is found by linear interpolation between grid points (the largest grid threshold
    if the training FAR never reaches it), then VAL = accepted same pairs / same pairs on the
    held-out fold. Folds without same pairs are left out of the mean.
    """
    if not 0.0 < far < 1.0:
        raise ParameterError(f"far must be in (0, 1), got {far}")
    dist, same = _pair_distances(embeddings_a, embeddings_b, issame, folds)
    if same.all() or not same.any():
        raise DataError("tar_at_far needs both same and different pairs")
    fold = fold_ids(dist.size, folds)
    thr = VAL_THRESHOLDS
    diff_below = _count_below(dist[~same], fold[~same], folds, thr)
    n_diff = np.bincount(fold[~same], minlength=folds)
    vals = []
    for f in range(folds):
        n_train_diff = n_diff.sum() - n_diff[f]
        if n_train_diff == 0:
            continue
        far_train = (diff_below.sum(axis=0) - diff_below[f]) / n_train_diff  # non-decreasing
        k = int(np.searchsorted(far_train, far, side="left"))  # first grid point with FAR >= far
        if k >= thr.size:
            # FAR stays below the target on the whole grid: the most permissive threshold still
            # meets it (insightface uses 0 here, which scores a perfectly separable set as 0).
            threshold = thr[-1]
        elif k == 0 or far_train[k] == far:
            threshold = thr[k]
        else:
            lo, hi = far_train[k - 1], far_train[k]
            threshold = thr[k - 1] + (far - lo) / (hi - lo) * (thr[k] - thr[k - 1])
        test_same = same & (fold == f)
        if test_same.any():
            vals.append(np.mean(dist[test_same] < threshold))
    if not vals:
        raise DataError("tar_at_far: no fold could be scored")
    return float(np.mean(vals))


def far_label(far: float) -> str:
    """A FAR level as it is written in keys and columns: 1e-4, 1e-3, 0.05 -> "5e-2"."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def verification_curve(
    embeddings_a, embeddings_b, issame, fars: tuple[float, ...] = TAR_FAR_LEVELS
) -> dict:
    """ROC and TAR at each FAR in `fars`, over all pairs (no folds).

    As in the 10-fold protocol a pair is accepted as "same" when its squared distance between
    L2-normalised embeddings is < threshold; every distinct distance is a threshold. TAR at a FAR
    is the highest TAR of a threshold whose FAR is <= the target (no interpolation), reported
    with that FAR, threshold and number of false accepts. It is null (`reliable: false`) when the
    target allows fewer than one false accept (impostor_pairs * FAR < 1): at 3000 impostor pairs a
    FAR of 1e-4 would be read at FAR 0, which says nothing about 1e-4.

    Returns {"genuine_pairs", "impostor_pairs", "tar_at_far": {far_label: {...}},
    "roc": {"far", "tar", "threshold": lists}}. The ROC runs from (0, 0) (nothing accepted) to
    (1, 1), both rates non-decreasing; points on a straight line between their neighbours are
    left out (the drawn curve is the same, a good recognizer's has few points).
    """
    dist, same = _pair_distances(embeddings_a, embeddings_b, issame)
    n_genuine, n_impostor = int(same.sum()), int((~same).sum())
    if n_genuine == 0 or n_impostor == 0:
        raise DataError("verification_curve needs both same and different pairs")
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(d)), d.size - 1]  # last pair of each distinct distance
    tp = np.r_[0, np.cumsum(s)[last]]  # accepted genuine pairs below each threshold
    fp = np.r_[0, np.cumsum(~s)[last]]  # accepted impostor pairs
    # Point k accepts the pairs with the k smallest distinct distances: threshold = the next one.
    thr = np.r_[d[last], np.nextafter(d[-1], np.inf)]

    levels = {}
    for far in fars:
        if not 0.0 < far < 1.0:
            raise ParameterError(f"FAR levels must be in (0, 1), got {far}")
        allowed = n_impostor * far
        n_allowed = int(np.floor(allowed + 1e-9))  # FAR <= far <=> false accepts <= this
        entry = {"tar": None, "far": None, "threshold": None, "false_accepts": None}
        if n_allowed >= 1:
            k = int(np.searchsorted(fp, n_allowed, side="right")) - 1  # the loosest such threshold
            entry = {
                "tar": float(tp[k] / n_genuine),
                "far": float(fp[k] / n_impostor),
                "threshold": float(thr[k]),
                "false_accepts": int(fp[k]),
            }
        levels[far_label(far)] = entry | {
            "false_accepts_allowed": float(allowed),
            "reliable": n_allowed >= 1,
        }

    turn = np.r_[True, (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), True]
    return {
        "genuine_pairs": n_genuine,
        "impostor_pairs": n_impostor,
        "tar_at_far": levels,
        "roc": {
            "far": (fp[turn] / n_impostor).tolist(),
            "tar": (tp[turn] / n_genuine).tolist(),
            "threshold": thr[turn].tolist(),
        },
    }


@torch.no_grad()
def embed_with_flip(model: torch.nn.Module, images_uint8, batch_size: int, device) -> np.ndarray:
    """Flip-test embeddings: model(x) + model(hflip(x)) for uint8 RGB images [N, H, W, 3].

    Images are normalised as (x/255 - 0.5)/0.5 and fed as [B, 3, H, W]; the sum is returned
    un-normalised (float32 [N, D]) - the caller (or `verification_accuracy`) L2-normalises. The
    model is run in eval mode and its previous mode is restored.
    """
    images = torch.as_tensor(np.asarray(images_uint8))
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"embed_with_flip expects uint8 images [N, H, W, 3], got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            x = normalise(batch.permute(0, 3, 1, 2))
            emb = model(torch.cat([x, torch.flip(x, dims=[3])]))
            n = x.shape[0]
            chunks.append((emb[:n].float() + emb[n:].float()).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise DataError("embed_with_flip got no images")
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)
