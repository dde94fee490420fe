"""Intra-class noise shaped by the real within-identity covariance (sample.config.noise)."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.synthesis.sampling import intra_class_vectors, within_identity_noise_factor


def _world(seed=0):
    """8 identities in 6-d; their images vary along dimension 0 only."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 6)) * 10
    labels = np.repeat(np.arange(8), 20)
    feats = centres[labels].copy()
    feats[:, 0] += rng.normal(size=len(feats)) * 2.0
    return feats, labels


def test_factor_reproduces_the_within_identity_covariance():
    feats, labels = _world()
    factor = within_identity_noise_factor(feats, labels)
    cov = factor @ factor.T
    assert cov[0, 0] == pytest.approx(4.0, rel=0.3)
    assert np.abs(cov[1:, 1:]).max() < 1e-3 * cov[0, 0]


def test_noise_moves_vectors_only_where_real_images_move():
    feats, labels = _world()
    centres = np.array([[1.0, 30, 1, 1, 1, 1]])  # noise along dimension 0 keeps the norm ~equal
    shaped, _ = intra_class_vectors(
        centres, 400, [(1.0, 1.0)], noise_factor=within_identity_noise_factor(feats, labels),
        generator=0,
    )  # fmt: skip
    per_dim, _ = intra_class_vectors(
        centres, 400, [(1.0, 1.0)], feature_std=feats.std(0), generator=0
    )
    spread_shaped, spread_per_dim = shaped.std(0), per_dim.std(0)
    # per_dim noise moves every dimension by its total (between-identity) std
    assert spread_per_dim[1:].min() > 2.0
    # shaped noise moves dimension 0; the others only through the rescale to the centre's norm
    assert spread_shaped[0] > 1.0
    assert spread_shaped[1:].max() < 0.2


def test_bad_noise_arguments_are_named():
    feats, labels = _world()
    factor = within_identity_noise_factor(feats, labels)
    with pytest.raises(ParameterError, match="not both"):
        intra_class_vectors(feats[:2], 3, feature_std=feats.std(0), noise_factor=factor)
    with pytest.raises(ParameterError, match="noise_factor"):
        intra_class_vectors(feats[:2], 3, noise_factor=factor[:3, :3])
    with pytest.raises(DataError, match="at least 2 identities"):
        within_identity_noise_factor(feats[:3], np.arange(3))
