"""The identity plan: a fixed separation threshold still reports the calibrated one beside it, and the
centre distribution can be fitted on another set's centres (the paper's guard against re-drawing the
training identities) while leakage is still checked against the real subset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from face_pipelines.errors import DataError, MissingInputError
from face_pipelines.metrics.separability import identity_centres
from face_pipelines.pipelines.sample.nodes import sample_identities
from face_pipelines.synthesis.plan import SampleConfig, make_identity_plan
from face_pipelines.synthesis.sampling import calibrate_threshold

D = 16


@pytest.fixture(scope="module")
def real() -> tuple[np.ndarray, np.ndarray]:
    """12 identities x 5 images around random directions (D=16)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, D)) * 3
    labels = np.repeat(np.arange(12), 5)
    return (centres[labels] + rng.normal(size=(60, D))).astype(np.float32), labels


def test_fixed_threshold_reports_the_calibrated_one_beside_it(real):
    features, labels = real
    cfg = SampleConfig(n_ids=4, images_per_identity=2, threshold=0.4, calibration_quantile=0.9)
    _, _, _, report = make_identity_plan(features, labels, cfg, progress=False)
    assert (report["threshold"], report["threshold_calibrated"]) == (0.4, False)
    want = calibrate_threshold(identity_centres(features, labels), 0.9)
    assert report["calibrated_threshold"] == pytest.approx(want)
    assert report["distribution_fitted_on"] == "subset" and report["distribution_identities"] == 12
    calibrated = SampleConfig(n_ids=4, images_per_identity=2, calibration_quantile=0.9)
    _, _, _, report = make_identity_plan(features, labels, calibrated, progress=False)
    assert report["threshold"] == report["calibrated_threshold"] == pytest.approx(want)


def test_threshold_margin_samples_below_the_threshold_the_card_judges_at(real):
    from face_pipelines.metrics.separability import max_cosine_to_others

    features, labels = real
    base = dict(n_ids=6, images_per_identity=2, threshold=0.5, calibration_quantile=0.9)
    plain = make_identity_plan(features, labels, SampleConfig(**base), progress=False)
    strict = make_identity_plan(
        features, labels, SampleConfig(**base, threshold_margin=0.3), progress=False
    )
    assert plain[3]["sampling_threshold"] == pytest.approx(0.5)
    assert strict[3]["threshold"] == pytest.approx(0.5)  # what the card judges separability at
    assert strict[3]["sampling_threshold"] == pytest.approx(0.2)
    assert strict[3]["leakage_threshold"] == pytest.approx(0.5)
    # Every pair of kept centres sits below the sampling threshold, not just the judged one.
    assert max_cosine_to_others(strict[2]).max() <= 0.2 + 1e-6
    assert max_cosine_to_others(plain[2]).max() <= 0.5 + 1e-6


def test_distribution_fitted_on_another_sets_centres(real):
    features, labels = real
    other = np.random.default_rng(1).normal(size=(40, D)).astype(np.float32)
    other[:, 0] += 25.0  # far from the real centres' mean along dim 0
    cfg = SampleConfig(n_ids=8, images_per_identity=2, threshold=0.99, distribution="pca")
    _, _, centres, report = make_identity_plan(
        features, labels, cfg, progress=False, fit_centres=other
    )
    assert report["distribution_fitted_on"] == "other set"
    assert report["distribution_identities"] == 40
    assert centres[:, 0].mean() > 15  # drawn from the other set's Gaussian, not the subset's
    with pytest.raises(DataError, match=r"expected float \[C >= 2, 16\]"):
        make_identity_plan(features, labels, cfg, progress=False, fit_centres=other[:, :8])


def test_sample_node_reads_the_centres_file_by_path(real, tmp_path):
    features, labels = real
    manifest = pd.DataFrame({"identity": labels})
    sample = {"config": {"n_ids": 3, "images_per_identity": 2, "threshold": 0.99}}
    common = {"device": "cpu", "progress": False}
    path = tmp_path / "other_centres.npy"
    np.save(path, np.random.default_rng(2).normal(size=(20, D)).astype(np.float32))
    *_, report, _ = sample_identities(
        features, manifest, {**sample, "distribution_centres": str(path)}, common
    )
    assert report["distribution_centres"] == str(path)
    assert report["distribution_identities"] == 20
    with pytest.raises(MissingInputError, match="sample.distribution_centres"):
        sample_identities(
            features, manifest, {**sample, "distribution_centres": str(tmp_path / "no.npy")}, common
        )
    (tmp_path / "bad.npy").write_text("not an array")
    with pytest.raises(DataError, match="sample.distribution_centres .* not a .npy array"):
        sample_identities(
            features,
            manifest,
            {**sample, "distribution_centres": str(tmp_path / "bad.npy")},
            common,
        )
