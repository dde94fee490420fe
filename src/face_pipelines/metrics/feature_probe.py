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
  (scikit-learn's C = 1 / alpha), fitted by LOGISTIC_STEPS steps of Nesterov-accelerated full-batch
  gradient descent from zero with step 1 / L (L bounds the loss's curvature). On ill-conditioned
  features that stops short of the optimum, which only shrinks the weights further. Scored by balanced
  accuracy (mean recall over classes; chance = 1 / classes) of the pooled out-of-fold predictions.
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
    "ridge_fit_predict",
    "logistic_fit_predict",
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
LOGISTIC_STEPS = 300
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


def ridge_fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float
) -> np.ndarray:
    """Ridge with an unpenalised intercept on standardised features; y may hold several columns."""
    xs, xt = _standardise(x_train, x_test)
    y_mean = y_train.mean(axis=0)
    gram = xs.T @ xs
    gram[np.diag_indices_from(gram)] += alpha
    w = np.linalg.solve(gram, xs.T @ (y_train - y_mean))
    return xt @ w + y_mean


def logistic_fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    n_classes: int,
    alpha: float,
    steps: int = LOGISTIC_STEPS,
) -> np.ndarray:
    """Class codes predicted for x_test by class-balanced multinomial logistic regression."""
    xs, xt = _standardise(x_train, x_test)
    n = len(xs)
    xb = np.hstack([xs, np.ones((n, 1))])
    counts = np.bincount(y_train, minlength=n_classes)
    present = int((counts > 0).sum())
    # Each present class weighs the same in total; weights sum to 1 (mean loss).
    sw = (1.0 / (present * counts[y_train]))[:, None]
    onehot = np.eye(n_classes)[y_train]
    penalty = np.full((xb.shape[1], 1), alpha / n)
    penalty[-1] = 0.0  # the intercept is not penalised
    # The softmax cross-entropy's Hessian is at most 1/2 X^T diag(sw) X (+ the penalty).
    curvature = 0.5 * np.linalg.eigvalsh(xb.T @ (xb * sw))[-1] + alpha / n
    step = 1.0 / curvature
    w = np.zeros((xb.shape[1], n_classes))
    v, t = w, 1.0
    for _ in range(steps):
        logits = xb @ v
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        grad = xb.T @ ((p - onehot) * sw) + penalty * v
        w_next = v - step * grad
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = w_next + ((t - 1.0) / t_next) * (w_next - w)
        w, t = w_next, t_next
    xtb = np.hstack([xt, np.ones((len(xt), 1))])
    return np.argmax(xtb @ w, axis=1)


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


def _probe_continuous(
    name: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int, alpha: float
) -> dict:
    pred = np.empty_like(y)
    for f in range(folds):
        test = fold == f
        pred[test] = ridge_fit_predict(x[~test], y[~test, None], x[test], alpha)[:, 0]
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
        key = f"abs_gt_{thr:g}"
        out[f"mae_{key}"] = float(err[tail].mean()) if tail.any() else None
        out[f"images_{key}"] = int(tail.sum())
    return out


def _probe_classes(
    kind: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, folds: int, alpha: float
) -> dict:
    classes, codes = np.unique(y, return_inverse=True)
    pred = np.empty_like(codes)
    for f in range(folds):
        test = fold == f
        pred[test] = logistic_fit_predict(x[~test], codes[~test], x[test], len(classes), alpha)
    out = {
        "kind": kind,
        "balanced_accuracy": balanced_accuracy(codes, pred),
        "chance": 1.0 / len(classes),
    }
    if kind == "binary":
        out["positive_rate"] = float(np.mean(codes == len(classes) - 1))
    else:
        out["classes"] = int(len(classes))
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
        "method": {
            "folds": int(folds),
            "split": "identity-disjoint (GroupKFold semantics; deterministic)",
            "features": "standardised with the training fold's mean and std",
            "continuous": f"closed-form ridge regression, alpha={ridge_alpha:g} (fixed); "
            "R^2 and mean absolute error of pooled out-of-fold predictions",
            "binary_categorical": f"class-balanced multinomial logistic regression, L2 "
            f"alpha={ridge_alpha:g} (C=1/alpha), {LOGISTIC_STEPS} accelerated gradient steps; "
            "balanced accuracy of pooled out-of-fold predictions",
        },
        "images": int(len(table)),
        "images_total": int(total),
        "identities": int(len(np.unique(identities))),
        "feature_dim": int(x.shape[1]),
        "ran": [],
        "skipped": {},
        "probes": {},
    }
    for name in columns:
        kind, reason = attribute_kind(table[name])
        if kind == "skip":
            section["skipped"][name] = reason
            continue
        valid = table[name].notna().to_numpy()
        try:
            fold = identity_folds(identities[valid], folds)
        except DataError as e:
            section["skipped"][name] = str(e)
            continue
        xv = x[valid]
        if kind == "continuous":
            y = table.loc[valid, name].to_numpy(np.float64)
            scores = _probe_continuous(name, xv, y, fold, folds, ridge_alpha)
        else:
            y = table.loc[valid, name].infer_objects().to_numpy()
            scores = _probe_classes(kind, xv, y, fold, folds, ridge_alpha)
        scores["images"] = int(valid.sum())
        scores["identities"] = int(len(np.unique(identities[valid])))
        section["probes"][name] = scores
        section["ran"].append(name)
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
