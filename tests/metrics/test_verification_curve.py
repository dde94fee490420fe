"""ROC and TAR at fixed FARs over all pairs (metrics.verification.verification_curve)."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.verification import far_label, verification_curve


def pairs_at_distances(dist) -> tuple[np.ndarray, np.ndarray]:
    """Unit 2-D embedding pairs whose squared distance is `dist` (|a - b|^2 = 2 - 2 cos angle)."""
    angle = np.arccos(1.0 - np.asarray(dist, dtype=np.float64) / 2.0)
    a = np.tile([1.0, 0.0], (len(angle), 1))
    b = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return a, b


def test_tar_at_far_known_answers():
    # 1000 impostor pairs at increasing distances; 100 genuine pairs closer than every impostor
    # pair and genuine pair j just above impostor pair j (j < 100).
    impostor = np.linspace(1.0, 3.0, 1000)
    step = impostor[1] - impostor[0]
    genuine = np.r_[np.linspace(0.1, 0.5, 100), impostor[:100] + step / 2]
    a, b = pairs_at_distances(np.r_[impostor, genuine])
    issame = np.r_[np.zeros(1000, bool), np.ones(200, bool)]

    out = verification_curve(a, b, issame)

    assert (out["genuine_pairs"], out["impostor_pairs"]) == (200, 1000)
    levels = out["tar_at_far"]
    assert list(levels) == ["1e-4", "1e-3", "1e-2", "1e-1"]
    # FAR 1e-3 allows one false accept: every pair closer than impostor pair 1 is accepted.
    assert levels["1e-3"]["tar"] == pytest.approx(101 / 200)
    assert levels["1e-3"]["far"] == pytest.approx(1e-3)
    assert levels["1e-3"]["false_accepts"] == 1
    assert levels["1e-3"]["threshold"] == pytest.approx(impostor[1])
    assert levels["1e-2"]["tar"] == pytest.approx(110 / 200)
    assert levels["1e-2"]["false_accepts"] == 10
    assert levels["1e-1"]["tar"] == 1.0
    assert all(levels[k]["reliable"] for k in ("1e-3", "1e-2", "1e-1"))
    # FAR 1e-4 of 1000 impostor pairs is 0.1 of a pair: no number, and said so.
    assert levels["1e-4"] == {
        "tar": None,
        "far": None,
        "threshold": None,
        "false_accepts": None,
        "false_accepts_allowed": pytest.approx(0.1),
        "reliable": False,
    }


def test_too_few_impostor_pairs_flag_at_lfw_size():
    """6000 pairs (3000 impostor): 1e-4 rests on 0.3 of a pair, 1e-3 on 3."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6000, 8)), rng.normal(size=(6000, 8))
    levels = verification_curve(a, b, np.arange(6000) % 2 == 0)["tar_at_far"]
    assert not levels["1e-4"]["reliable"] and levels["1e-4"]["tar"] is None
    assert levels["1e-4"]["false_accepts_allowed"] == pytest.approx(0.3)
    assert levels["1e-3"]["reliable"] and levels["1e-3"]["false_accepts_allowed"] == 3.0
    assert levels["1e-3"]["false_accepts"] <= 3


def _brute_force_tar(dist, same, far):
    """Every distinct distance (and one above all) as a threshold; accept dist < threshold."""
    best = 0.0
    for t in np.r_[np.unique(dist), np.inf]:
        if np.mean(dist[~same] < t) <= far:
            best = max(best, np.mean(dist[same] < t))
    return best


def test_tar_at_far_matches_brute_force_with_tied_distances():
    rng = np.random.default_rng(1)
    same = rng.random(2500) < 0.4
    # Quantised distances: many ties, within and across the two classes.
    dist = np.round(np.where(same, rng.normal(1.0, 0.4, 2500), rng.normal(2.0, 0.4, 2500)), 1)
    dist = np.clip(dist, 0.0, 4.0)
    a, b = pairs_at_distances(dist)
    measured = np.sum((a - b) ** 2, axis=1)
    levels = verification_curve(a, b, same, fars=(1e-3, 1e-2, 5e-2, 1e-1))["tar_at_far"]
    for far in (1e-3, 1e-2, 5e-2, 1e-1):
        got = levels[far_label(far)]
        assert got["tar"] == pytest.approx(_brute_force_tar(measured, same, far)), far
        assert got["far"] <= far


def test_roc_is_monotone_from_origin_to_one_and_matches_sklearn():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3000, 16)), rng.normal(size=(3000, 16))
    same = rng.random(3000) < 0.5
    b[same] = a[same] + rng.normal(scale=1.5, size=(same.sum(), 16))
    roc = verification_curve(a, b, same)["roc"]
    far, tar, thr = (np.asarray(roc[k]) for k in ("far", "tar", "threshold"))
    assert (far[0], tar[0]) == (0.0, 0.0) and (far[-1], tar[-1]) == (1.0, 1.0)
    assert np.all(np.diff(far) >= 0) and np.all(np.diff(tar) >= 0)
    assert np.all(np.diff(thr) > 0)
    assert len(far) < 3000  # straight runs are left out

    metrics = pytest.importorskip("sklearn.metrics")
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    fpr, tpr, _ = metrics.roc_curve(same, -np.sum((an - bn) ** 2, axis=1))
    # sklearn prepends the origin after leaving out straight runs, so it keeps its first point,
    # (0, tpr) on the vertical run from the origin; the rest is the same curve.
    assert (fpr[0], tpr[0], fpr[1]) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(far[1:], fpr[2:])
    np.testing.assert_allclose(tar[1:], tpr[2:])


def test_far_labels_and_bad_input():
    assert [far_label(f) for f in (1e-4, 1e-3, 1e-2, 1e-1, 5e-2)] == [
        "1e-4",
        "1e-3",
        "1e-2",
        "1e-1",
        "5e-2",
    ]
    a = np.eye(4)
    with pytest.raises(DataError, match="both same and different"):
        verification_curve(a, a, np.ones(4, bool))
    with pytest.raises(ParameterError, match="FAR"):
        verification_curve(a, a[::-1], np.array([1, 0, 1, 0], bool), fars=(1.5,))
