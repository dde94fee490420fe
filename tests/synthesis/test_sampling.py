"""Identity sampling: centre distributions, calibrated thresholds, greedy separated sampling with a
leakage guard, and intra-class vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.separability import identity_centres
from face_pipelines.synthesis.sampling import (
    calibrate_threshold,
    fit_centre_distribution,
    intra_class_vectors,
    sample_identity_centres,
)


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_gaussian(
    n: int, d: int = 6, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples of a strongly correlated Gaussian, with its mean and covariance."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))
    cov = mix @ mix.T + 0.05 * np.eye(d)
    mean = rng.normal(size=d)
    x = rng.multivariate_normal(mean, cov, size=n)
    return x.astype(np.float32), mean, cov


def correlation(cov: np.ndarray) -> np.ndarray:
    s = np.sqrt(np.diag(cov))
    return cov / np.outer(s, s)


@pytest.fixture(scope="module")
def real_centres() -> np.ndarray:
    """'Real' identity centres with structure: correlated dims and an offset mean (D=16)."""
    rng = np.random.default_rng(7)
    d = 16
    mix = rng.normal(size=(d, d)) * np.linspace(1.0, 0.2, d)
    return (rng.normal(size=(300, d)) @ mix.T + 0.5).astype(np.float32)


def naive_greedy(candidates, n, threshold, real=None, leakage_threshold=None):
    """One candidate at a time, in draw order (the definition the sampler must reproduce)."""
    kept, leaked, separated, examined = [], 0, 0, 0
    real_u = None if real is None else unit(real)
    for x in unit(candidates):
        if len(kept) == n:
            break
        examined += 1
        if leakage_threshold is not None and (real_u @ x).max() >= leakage_threshold:
            leaked += 1
            continue
        if kept and (np.asarray(kept) @ x).max() >= threshold:
            separated += 1
            continue
        kept.append(x)
    return np.asarray(kept), leaked, separated, examined


# ----------------------------------------------------------------------------- identity_centres


def test_identity_centres_are_per_label_means_in_sorted_label_order():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5)).astype(np.float32)
    labels = rng.choice([3, 10, 11, 42], size=40)
    centres = identity_centres(feats, labels)
    expected = np.stack([feats[labels == lab].mean(axis=0) for lab in (3, 10, 11, 42)])
    assert centres.dtype == np.float32 and centres.shape == (4, 5)
    np.testing.assert_allclose(centres, expected, rtol=1e-5, atol=1e-6)


def test_identity_centres_rejects_misaligned_or_float_labels():
    feats = np.zeros((4, 3), np.float32)
    with pytest.raises(DataError, match="one label per feature row"):
        identity_centres(feats, [0, 1, 2])
    with pytest.raises(DataError, match="integer"):
        identity_centres(feats, [0.0, 1.0, 1.0, 0.0])


# ----------------------------------------------------------------------------- distributions


def test_pca_and_full_reproduce_mean_and_covariance_diagonal_does_not():
    centres, mean, cov = planted_gaussian(6000)
    emp_mean = centres.astype(np.float64).mean(axis=0)
    emp_cov = np.cov(centres.astype(np.float64), rowvar=False)
    assert np.abs(correlation(cov)[np.triu_indices(6, 1)]).max() > 0.5  # really correlated

    pca = fit_centre_distribution(centres, kind="pca")
    full = fit_centre_distribution(centres, kind="full", shrinkage=0.01)
    diag = fit_centre_distribution(centres, kind="diagonal")
    assert (pca.kind, full.kind, diag.kind) == ("pca", "full", "diagonal")
    for dist in (pca, full, diag):
        np.testing.assert_allclose(dist.mean, emp_mean, atol=1e-6)
    # The models themselves: PCA with C > D is the sample covariance; full is shrunk by 1%.
    np.testing.assert_allclose(pca.covariance(), emp_cov, atol=1e-6)
    np.testing.assert_allclose(full.covariance(), emp_cov, atol=0.02 * np.trace(emp_cov) / 6)

    # Their samples, against the planted Gaussian.
    for dist in (pca, full):
        s = dist.sample(20000, generator=1).astype(np.float64)
        assert s.shape == (20000, 6)
        np.testing.assert_allclose(s.mean(axis=0), mean, atol=0.1 * np.sqrt(np.diag(cov)).max())
        np.testing.assert_allclose(
            correlation(np.cov(s, rowvar=False)), correlation(cov), atol=0.05
        )
        np.testing.assert_allclose(np.diag(np.cov(s, rowvar=False)), np.diag(cov), rtol=0.1)
    s = diag.sample(20000, generator=1).astype(np.float64)
    np.testing.assert_allclose(np.diag(np.cov(s, rowvar=False)), np.diag(cov), rtol=0.1)
    off = np.triu_indices(6, 1)
    diag_corr_error = np.abs(correlation(np.cov(s, rowvar=False))[off] - correlation(cov)[off])
    assert diag_corr_error.max() > 0.5  # correlations are lost


def test_fewer_centres_than_dims_uses_pca_with_residual():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 32)).astype(np.float32) * 3.0
    dist = fit_centre_distribution(centres)
    assert dist.kind == "pca" and dist.components == 9 and dist.residual_std > 0
    eig = np.linalg.eigvalsh(dist.covariance())
    assert eig.min() > 0  # non-singular thanks to the isotropic residual
    # The kept axes carry the data's exact variances.
    proj = (centres - centres.mean(axis=0)) @ dist.axes
    np.testing.assert_allclose(proj.var(axis=0, ddof=1), dist.scales**2, rtol=1e-4)
    with pytest.warns(UserWarning, match="singular"):
        full = fit_centre_distribution(centres, kind="full")
    assert full.kind == "pca" and full.components == 9
    with pytest.raises(ParameterError, match="pca_components"):
        fit_centre_distribution(centres, pca_components=10)
    with pytest.raises(ParameterError, match="kind"):
        fit_centre_distribution(centres, kind="gaussian")
    with pytest.raises(DataError, match="at least 2"):
        fit_centre_distribution(centres[:1])


def test_samples_stay_at_the_raw_feature_scale(real_centres):
    dist = fit_centre_distribution(real_centres)
    s = dist.sample(2000, generator=0)
    ratio = np.linalg.norm(s, axis=1).mean() / np.linalg.norm(real_centres, axis=1).mean()
    assert s.dtype == np.float32 and 0.9 < ratio < 1.1


# ----------------------------------------------------------------------------- threshold


def test_calibrate_threshold_is_quantile_of_real_nearest_neighbour_cosines(real_centres):
    u = unit(real_centres)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.max(axis=1)
    for q in (0.5, 0.95):
        got = calibrate_threshold(real_centres, quantile=q, block_size=64)
        assert got == pytest.approx(np.quantile(nearest, q), abs=1e-5)
    with pytest.raises(ParameterError, match="quantile"):
        calibrate_threshold(real_centres, quantile=1.5)


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("block_size", [7, 64, 4096])
def test_sampled_centres_are_separated_and_match_one_at_a_time_greedy(real_centres, block_size):
    dist = fit_centre_distribution(real_centres)
    threshold = calibrate_threshold(real_centres, quantile=0.5)
    n, per_round = 120, 200
    centres, report = sample_identity_centres(
        dist, n, threshold, candidates_per_round=per_round, block_size=block_size,
        generator=3, progress=False,
    )  # fmt: skip
    assert centres.shape == (n, 16) and centres.dtype == np.float32
    sim = unit(centres) @ unit(centres).T
    np.fill_diagonal(sim, -1.0)
    assert sim.max() < threshold  # brute force over the full matrix

    gen = torch.Generator().manual_seed(3)
    stream = torch.cat([dist.sample_tensor(per_round, gen) for _ in range(report["rounds"])])
    expected, _, separated, examined = naive_greedy(stream.numpy(), n, threshold)
    np.testing.assert_allclose(unit(centres), expected, atol=1e-6)
    assert report["kept"] == n
    assert report["drawn"] == examined
    assert report["rejected_by_separation"] == separated > 0
    assert report["rejected_by_leakage"] == 0
    assert report["generated"] == per_round * report["rounds"]
    assert report["threshold"] == threshold and report["seconds"] >= 0


def test_leakage_guard_rejects_candidates_near_real_centres(real_centres):
    dist = fit_centre_distribution(real_centres)
    threshold = calibrate_threshold(real_centres, quantile=0.9)
    leak_t = calibrate_threshold(real_centres, quantile=0.5)
    n, per_round = 60, 256
    centres, report = sample_identity_centres(
        dist, n, threshold, real_centres=real_centres, leakage_threshold=leak_t,
        candidates_per_round=per_round, block_size=32, generator=5, progress=False,
    )  # fmt: skip
    to_real = (unit(centres) @ unit(real_centres).T).max(axis=1)
    assert to_real.max() < leak_t
    assert report["max_cosine_to_real"] == pytest.approx(to_real.max(), abs=1e-5)

    gen = torch.Generator().manual_seed(5)
    stream = torch.cat([dist.sample_tensor(per_round, gen) for _ in range(report["rounds"])])
    expected, leaked, separated, examined = naive_greedy(
        stream.numpy(), n, threshold, real_centres, leak_t
    )
    np.testing.assert_allclose(unit(centres), expected, atol=1e-6)
    assert report["rejected_by_leakage"] == leaked > 0
    assert report["rejected_by_separation"] == separated
    assert report["drawn"] == examined == n + leaked + separated


def test_sampling_is_deterministic_for_a_seed(real_centres):
    dist = fit_centre_distribution(real_centres)
    kwargs = dict(threshold=0.6, candidates_per_round=128, block_size=50, progress=False)
    a, ra = sample_identity_centres(dist, 40, generator=11, **kwargs)
    b, rb = sample_identity_centres(dist, 40, generator=np.int64(11), **kwargs)
    c, _ = sample_identity_centres(dist, 40, generator=12, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert ra["drawn"] == rb["drawn"]
    assert not np.array_equal(a, c)


def test_too_strict_threshold_gives_a_clear_error(real_centres):
    dist = fit_centre_distribution(real_centres[:, :3])
    with pytest.raises(ParameterError, match=r"found only \d+ of 200 .*raise `threshold`"):
        sample_identity_centres(
            dist, 200, 0.0, candidates_per_round=64, max_rounds=3, generator=0, progress=False
        )


def test_sampling_argument_errors(real_centres):
    dist = fit_centre_distribution(real_centres)
    with pytest.raises(ParameterError, match="real_centres"):
        sample_identity_centres(dist, 5, 0.5, leakage_threshold=0.9, progress=False)
    with pytest.raises(DataError, match="real_centres"):
        sample_identity_centres(
            dist, 5, 0.5, real_centres=real_centres[:, :4], leakage_threshold=0.9, progress=False
        )
    with pytest.raises(ParameterError, match="threshold"):
        sample_identity_centres(dist, 5, 1.5, progress=False)


# ----------------------------------------------------------------------------- intra-class vectors


def test_intra_class_vectors_counts_mix_and_norms(real_centres):
    centres = real_centres[:30]
    vectors, plan = intra_class_vectors(centres, 50, generator=0)
    assert vectors.shape == (1500, 16) and vectors.dtype == np.float32
    assert list(plan.columns) == ["identity", "index", "sigma"] and len(plan) == 1500
    assert (plan.groupby("identity")["index"].apply(list) == [list(range(50))] * 30).all()
    per_identity = plan.groupby(["identity", "sigma"]).size().unstack()
    assert (per_identity[0.3] == 20).all() and (per_identity[0.5] == 20).all()
    assert (per_identity[0.7] == 10).all()
    np.testing.assert_allclose(
        np.linalg.norm(vectors, axis=1),
        np.repeat(np.linalg.norm(centres, axis=1), 50),
        rtol=1e-5,
    )


def test_intra_class_mix_with_uneven_counts_is_close_per_identity_and_overall(real_centres):
    k, n_ids = 7, 200
    centres = np.repeat(real_centres[:1], n_ids, axis=0)
    _, plan = intra_class_vectors(centres, k, generator=0)
    counts = plan.groupby(["identity", "sigma"]).size().unstack(fill_value=0)
    for sigma, p in ((0.3, 0.4), (0.5, 0.4), (0.7, 0.2)):
        assert counts[sigma].isin([np.floor(k * p), np.ceil(k * p)]).all()
        assert abs(counts[sigma].sum() - p * k * n_ids) <= 2
    assert (counts.sum(axis=1) == k).all()


def test_larger_sigma_gives_lower_cosine_to_centre(real_centres):
    centres = real_centres[:20]
    std = real_centres.std(axis=0)
    means = []
    for sigma in (0.1, 0.5, 1.0):
        vectors, plan = intra_class_vectors(
            centres, 10, sigma_mix=((sigma, 1.0),), feature_std=std, generator=1
        )
        assert (plan["sigma"] == sigma).all()
        own = np.repeat(centres, 10, axis=0)
        means.append(float((unit(vectors) * unit(own)).sum(axis=1).mean()))
    assert means[0] > means[1] > means[2]
    # Within the default mix too.
    vectors, plan = intra_class_vectors(centres, 50, feature_std=std, generator=2)
    cos = (unit(vectors) * unit(np.repeat(centres, 50, axis=0))).sum(axis=1)
    by_sigma = plan.assign(cos=cos).groupby("sigma")["cos"].mean()
    assert by_sigma[0.3] > by_sigma[0.5] > by_sigma[0.7]


def test_intra_class_vectors_deterministic_and_validated(real_centres):
    a, plan_a = intra_class_vectors(real_centres[:5], 4, generator=9)
    b, plan_b = intra_class_vectors(real_centres[:5], 4, generator=9)
    np.testing.assert_array_equal(a, b)
    assert plan_a.equals(plan_b)
    with pytest.raises(ParameterError, match="sum to 1"):
        intra_class_vectors(real_centres[:5], 4, sigma_mix=((0.3, 0.5), (0.5, 0.4)))
    with pytest.raises(ParameterError, match="images_per_identity"):
        intra_class_vectors(real_centres[:5], 0)
    with pytest.raises(ParameterError, match="feature_std"):
        intra_class_vectors(real_centres[:5], 4, feature_std=np.ones(3))
