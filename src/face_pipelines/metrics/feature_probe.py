"""What a recognizer's raw features carry: identity-disjoint linear probes to known attributes.

Vec2Face inverts a recognizer's raw feature into a face, and AttrOP steers pose and quality through
it. Both rest on the feature still carrying pose, lighting, age, accessories..., not only identity.
`probe_features` measures that: for every known attribute of a manifest it fits a linear model from
the standardised features to the attribute and scores it on images of identities the model never saw.

- Folds are identity-disjoint, with scikit-learn GroupKFold semantics (no identity in both a training
  and a test fold; identities placed largest first on the fold with the fewest images, so the split is
  deterministic and needs no seed). Without that, a probe could read an attribute that is constant per
  identity (age, beard) off the identity itself and look like it reads the attribute.
- Features are standardised with the training fold's mean and standard deviation.
- Continuous attributes: closed-form ridge regression, objective ||y - Xw - b||^2 + alpha ||w||^2
  (scikit-learn's Ridge(alpha) on standardised features), one fixed alpha (no inner search: the probe
  measures what is linearly there, not the best model). Scored by R^2 and mean absolute error of the
  pooled out-of-fold predictions; yaw also by the error on |yaw| > 30 deg, where a generator has to
  draw a turned head.
- Binary and categorical attributes (bool, 0/1, or integers with at most MAX_CATEGORIES values):
  multinomial logistic regression with class-balanced sample weights and L2 penalty alpha / 2 ||W||^2
  (scikit-learn's C = 1 / alpha), fitted by LOGISTIC_STEPS Nesterov-accelerated full-batch gradient
  steps from zero, preconditioned by a bound on the loss's curvature (Boehning's) in the eigenbasis
  of the training fold's features, so ill-conditioned features converge as fast as whitened ones
  (on FaceWorld's 10k x 512-d teacher features the balanced accuracies settle by step 100). Scored
  by balanced accuracy (mean recall over classes; chance = 1 / classes) of the pooled out-of-fold
  predictions.
- Cost: one eigendecomposition per fold serves every attribute labelled on the same rows, and the
  classifiers of all class attributes step together (one pass over the features per step).
- Columns that are all null (real face sets mostly have no labels) or constant are skipped and
  reported as such; rows with a null label are left out of that attribute's probe only.

Pure numpy; deterministic for fixed inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from face_pipelines.errors import DataError

__all__ = [
    "NOT_ATTRIBUTES",
    "identity_folds",
    "r2_score",
    "balanced_accuracy",
    "attribute_kind",
    "probe_features",
    "probe_headline",
    "probe_summary",
]

# Manifest columns that are bookkeeping, not attributes of the face.
NOT_ATTRIBUTES = frozenset(
    {
        "path",
        "record",
        "identity",
        "source_identity",
        "global_identity",
        "source_label",
        "noise_seed",
        "sigma",
        "attrop",
        "attrop_steps",
        "attrop_met",
        "id_cos_to_centre",
        "yaw_pred",
        "yaw_target",
    }
)
# Attributes whose error is also reported on the tail |value| > threshold.
TAIL_THRESHOLDS = {"yaw": 30.0}
MAX_CATEGORIES = 12
LOGISTIC_STEPS = 150
# The attributes named first in summaries, when present.
_HEADLINE_ORDER = ("yaw", "pitch", "age", "light_azimuth", "blur", "bg_r", "expression")


def identity_folds(identities: np.ndarray, folds: int) -> np.ndarray:
    """Fold index (0..folds-1) per row, no identity in two folds (GroupKFold semantics).

    Raises DataError when a fold would hold fewer than 2 identities: a test fold of one identity
    scores one person, not the features.
    """
    if folds < 2:
        raise DataError(f"feature probe: folds must be >= 2, got {folds}")
    ids, inverse, counts = np.unique(
        np.asarray(identities), return_inverse=True, return_counts=True
    )
    if len(ids) < 2 * folds:
        raise DataError(
            f"only {len(ids)} identities; {folds} identity-disjoint folds need at least "
            f"{2 * folds} (2 per fold)"
        )
    order = np.argsort(-counts, kind="stable")
    load = np.zeros(folds, dtype=np.int64)
    members = np.zeros(folds, dtype=np.int64)
    fold_of_id = np.empty(len(ids), dtype=np.int64)
    for i in order:
        f = int(np.argmin(load))
        fold_of_id[i] = f
        load[f] += counts[i]
        members[f] += 1
    if members.min() < 2:
        raise DataError(
            f"fold {int(np.argmin(members))} of {folds} holds {int(members.min())} identity "
            f"(identity sizes too unequal: largest {int(counts.max())} of {int(counts.sum())} "
            "images); use fewer folds"
        )
    return fold_of_id[inverse]


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _softmax_blocks(logits: np.ndarray, edges: np.ndarray) -> np.ndarray:
    out = np.empty_like(logits)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        block = logits[:, lo:hi] - logits[:, lo:hi].max(axis=1, keepdims=True)
        np.exp(block, out=block)
        out[:, lo:hi] = block / block.sum(axis=1, keepdims=True)
    return out


def _logistic_scores(
    z: np.ndarray,
    z_test: np.ndarray,
    lam: np.ndarray,
    codes: list[np.ndarray],
    n_classes: list[int],
    alpha: float,
    steps: int,
) -> np.ndarray:
    """Class scores on z_test of one class-balanced softmax regression per target, fitted jointly.

    `z` are the standardised training features in the eigenbasis of their Gram matrix (eigenvalues
    `lam`), so the penalty keeps its form and the loss's curvature bound is diagonal: each target's
    cross-entropy Hessian is at most 1/2 max(weight) Z^T Z (Boehning's bound), which makes the
    preconditioned gradient step safe and independent of how ill-conditioned the features are.
    """
    n = len(z)
    edges = np.cumsum([0, *n_classes])
    onehot = np.zeros((n, edges[-1]))
    weight = np.zeros((n, edges[-1]))
    curvature = np.empty((len(lam) + 1, edges[-1]))
    for y, k, lo, hi in zip(codes, n_classes, edges[:-1], edges[1:], strict=True):
        counts = np.bincount(y, minlength=k)
        # Each present class weighs the same in total; a target's weights sum to 1 (mean loss).
        w = 1.0 / (int((counts > 0).sum()) * counts[y])
        onehot[np.arange(n), lo + y] = 1.0
        weight[:, lo:hi] = w[:, None]
        curvature[:-1, lo:hi] = (0.5 * w.max() * lam + alpha / n)[:, None]
        curvature[-1, lo:hi] = 0.5 * w.max() * n  # the intercept: z is centred, so Z^T 1 = 0
    # float32 in the loop: it is memory-bound, and class scores need no more precision.
    zb = np.hstack([z, np.ones((n, 1))]).astype(np.float32)
    onehot, weight = onehot.astype(np.float32), weight.astype(np.float32)
    curvature = curvature.astype(np.float32)
    coef = np.zeros((zb.shape[1], edges[-1]), dtype=np.float32)
    look, t = coef, 1.0
    for _ in range(steps):
        grad = zb.T @ ((_softmax_blocks(zb @ look, edges) - onehot) * weight)
        grad[:-1] += np.float32(alpha / n) * look[:-1]  # the intercept is not penalised
        nxt = look - grad / curvature
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        look = nxt + np.float32((t - 1.0) / t_next) * (nxt - coef)
        coef, t = nxt, t_next
    return np.hstack([z_test, np.ones((len(z_test), 1))]) @ coef


def _out_of_fold(
    x: np.ndarray,
    fold: np.ndarray,
    folds: int,
    continuous: np.ndarray,
    classes: list[tuple[np.ndarray, int]],
    alpha: float,
    steps: int = LOGISTIC_STEPS,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Out-of-fold predictions: ridge for each column of `continuous` [n, T], class codes for each
    (codes, n_classes) of `classes`. One eigendecomposition per fold serves every target."""
    pred = np.empty_like(continuous)
    pred_classes = [np.empty(len(x), dtype=np.int64) for _ in classes]
    edges = np.cumsum([0, *(k for _, k in classes)])
    for f in range(folds):
        test = fold == f
        xs, xt = _standardise(x[~test], x[test])
        lam, vec = np.linalg.eigh(xs.T @ xs)
        lam = np.clip(lam, 0.0, None)
        z, z_test = xs @ vec, xt @ vec
        if continuous.shape[1]:
            y = continuous[~test]
            mean = y.mean(axis=0)
            pred[test] = z_test @ ((z.T @ (y - mean)) / (lam + alpha)[:, None]) + mean
        if classes:
            codes = [c[~test] for c, _ in classes]
            scores = _logistic_scores(z, z_test, lam, codes, [k for _, k in classes], alpha, steps)
            for out, lo, hi in zip(pred_classes, edges[:-1], edges[1:], strict=True):
                out[test] = np.argmax(scores[:, lo:hi], axis=1)
    return pred, pred_classes


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / total if total > 0 else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in y."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def attribute_kind(values: pd.Series) -> tuple[str, str]:
    """('continuous' | 'binary' | 'categorical', '') or ('skip', reason) for a manifest column."""
    # A bool or int column with nulls is stored as object (or as a float) - judge the labelled values.
    valid = values.dropna().infer_objects()
    if len(valid) == 0:
        return "skip", "all values null (no labels)"
    if not (pd.api.types.is_numeric_dtype(valid) or pd.api.types.is_bool_dtype(valid)):
        return "skip", f"not numeric (dtype {values.dtype})"
    distinct = pd.unique(valid)
    if len(distinct) < 2:
        return "skip", f"constant ({distinct[0]!r})"
    if pd.api.types.is_bool_dtype(valid) or set(distinct.tolist()) <= {0, 1}:
        return "binary", ""
    if pd.api.types.is_integer_dtype(valid) and len(distinct) <= MAX_CATEGORIES:
        return "categorical", ""
    return "continuous", ""


def _continuous_scores(name: str, y: np.ndarray, pred: np.ndarray) -> dict:
    err = np.abs(pred - y)
    out = {
        "kind": "continuous",
        "r2": r2_score(y, pred),
        "mae": float(err.mean()),
        "target_std": float(y.std()),
    }
    if name in TAIL_THRESHOLDS:
        thr = TAIL_THRESHOLDS[name]
        tail = np.abs(y) > thr
        out[f"mae_abs_gt_{thr:g}"] = float(err[tail].mean()) if tail.any() else None
        out[f"images_abs_gt_{thr:g}"] = int(tail.sum())
    return out


def _class_scores(kind: str, codes: np.ndarray, n_classes: int, pred: np.ndarray) -> dict:
    out = {
        "kind": kind,
        "balanced_accuracy": balanced_accuracy(codes, pred),
        "chance": 1.0 / n_classes,
    }
    if kind == "binary":
        out["positive_rate"] = float(np.mean(codes == n_classes - 1))
    else:
        out["classes"] = int(n_classes)
    return out


def _attribute_columns(manifest: pd.DataFrame, attributes: Sequence[str] | None) -> list[str]:
    if attributes is None:
        return [c for c in manifest.columns if c not in NOT_ATTRIBUTES]
    missing = [a for a in attributes if a not in manifest.columns]
    if missing:
        raise DataError(
            f"feature probe: attributes {missing} are not columns of the manifest; it has "
            f"{list(manifest.columns)}"
        )
    return list(attributes)


def _probe_method(folds: int, ridge_alpha: float) -> dict:
    """The section's `method`: how the probes split, standardise, fit and score."""
    return {
        "folds": int(folds),
        "split": "identity-disjoint (GroupKFold semantics; deterministic)",
        "features": "standardised with the training fold's mean and std",
        "continuous": f"closed-form ridge regression, alpha={ridge_alpha:g} (fixed); "
        "R^2 and mean absolute error of pooled out-of-fold predictions",
        "binary_categorical": f"class-balanced multinomial logistic regression, L2 "
        f"alpha={ridge_alpha:g} (C=1/alpha), {LOGISTIC_STEPS} accelerated gradient steps; "
        "balanced accuracy of pooled out-of-fold predictions",
    }


def probe_features(
    features: np.ndarray,
    manifest: pd.DataFrame,
    folds: int = 5,
    ridge_alpha: float = 1.0,
    attributes: Sequence[str] | None = None,
    max_images: int | None = None,
    seed: int = 0,
) -> dict:
    """Identity-disjoint linear probes from `features` (row i = manifest row i) to attributes.

    Args:
        features: [N, D] raw features, aligned with `manifest`.
        manifest: DESIGN.md manifest (`identity` + attribute columns).
        folds: identity-disjoint folds.
        ridge_alpha: L2 strength of the ridge and logistic probes (see the module docstring).
        attributes: columns to probe; None = every column except NOT_ATTRIBUTES.
        max_images: probe a random subset of this many rows (drawn with `seed`); None = all.

    Returns a JSON-ready dict: `method`, sizes, `ran` (probed attributes in manifest order),
    `skipped` (attribute -> reason) and `probes` (attribute -> scores).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(manifest):
        raise DataError(
            f"feature probe: features of shape {x.shape} do not match the manifest's "
            f"{len(manifest)} rows (expected [{len(manifest)}, D])"
        )
    if "identity" not in manifest.columns:
        raise DataError(f"feature probe: manifest has no 'identity' column: {list(manifest)}")
    columns = _attribute_columns(manifest, attributes)
    total = len(manifest)
    table = manifest.reset_index(drop=True)
    if max_images is not None and max_images < total:
        rows = np.sort(np.random.default_rng(seed).choice(total, size=max_images, replace=False))
        x, table = x[rows], table.iloc[rows].reset_index(drop=True)
    identities = table["identity"].to_numpy()
    section: dict = {
        "what": "identity-disjoint linear probes from the raw features to each known attribute: "
        "how much of what a generator must draw the features carry (R^2 ~ 0 / balanced accuracy "
        "~ chance: not carried)",
        "method": _probe_method(folds, ridge_alpha),
        "images": int(len(table)),
        "images_total": int(total),
        "identities": int(len(np.unique(identities))),
        "feature_dim": int(x.shape[1]),
        "ran": [],
        "skipped": {},
        "probes": {},
    }
    # Attributes labelled on the same rows share folds and fits (usually all of them).
    groups: dict[bytes, list[tuple[str, str]]] = {}
    for name in columns:
        kind, reason = attribute_kind(table[name])
        if kind == "skip":
            section["skipped"][name] = reason
        else:
            groups.setdefault(table[name].notna().to_numpy().tobytes(), []).append((name, kind))
    probes: dict[str, dict] = {}
    for key, members in groups.items():
        valid = np.frombuffer(key, dtype=bool)
        try:
            fold = identity_folds(identities[valid], folds)
        except DataError as e:
            section["skipped"].update({name: str(e) for name, _ in members})
            continue
        cont = [name for name, kind in members if kind == "continuous"]
        cat = [(name, kind) for name, kind in members if kind != "continuous"]
        y = table.loc[valid, cont].to_numpy(np.float64).reshape(int(valid.sum()), len(cont))
        coded = [
            np.unique(table.loc[valid, name].infer_objects().to_numpy(), return_inverse=True)
            for name, _ in cat
        ]
        targets = [(codes.ravel(), len(levels)) for levels, codes in coded]
        pred, pred_classes = _out_of_fold(x[valid], fold, folds, y, targets, ridge_alpha)
        for j, name in enumerate(cont):
            probes[name] = _continuous_scores(name, y[:, j], pred[:, j])
        for (name, kind), (codes, k), p in zip(cat, targets, pred_classes, strict=True):
            probes[name] = _class_scores(kind, codes, k, p)
        for name, _ in members:
            probes[name]["images"] = int(valid.sum())
            probes[name]["identities"] = int(len(np.unique(identities[valid])))
    section["ran"] = [name for name in columns if name in probes]
    section["probes"] = {name: probes[name] for name in section["ran"]}
    return section


def probe_headline(section: dict) -> dict[str, float]:
    """`<attribute>.r2` / `.mae` / `.mae_abs_gt_30` / `.balanced_accuracy` of the probes that ran."""
    out: dict[str, float] = {}
    for name, scores in section.get("probes", {}).items():
        for key in ("r2", "mae", "balanced_accuracy", *(k for k in scores if k.startswith("mae_"))):
            value = scores.get(key)
            if isinstance(value, float) and np.isfinite(value):
                out[f"{name}.{key}"] = value
    return out


def probe_summary(section: dict, limit: int = 12) -> str:
    """One line: the headline attributes first, e.g. 'yaw R^2 0.31, ..., glasses bal.acc 0.70'."""
    probes = section.get("probes", {})
    if not probes:
        return (
            "no attribute probed ("
            + "; ".join(f"{k}: {v}" for k, v in list(section.get("skipped", {}).items())[:3])
            + ")"
        )
    names = [n for n in _HEADLINE_ORDER if n in probes]
    names += [n for n in probes if n not in names]
    parts = []
    for n in names[:limit]:
        s = probes[n]
        if s["kind"] == "continuous":
            parts.append(f"{n} R^2 {s['r2']:.2f}")
        else:
            parts.append(f"{n} bal.acc {s['balanced_accuracy']:.2f}")
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(parts) + more
