"""TopoFR ISA / SDE tests against independent pure-Python computations."""

from __future__ import annotations

import math

import pytest
import torch

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.losses.topofr import (
    fit_entropy_mixture,
    input_space_distances,
    latent_space_distances,
    mst_edges,
    persistence_deaths,
    sde_weights,
    structure_alignment_loss,
    topology_discrepancy,
)

BACKENDS = ("boruvka", "prim", "scipy", "auto")


# ---- independent reference: Kruskal with union-find over all edges, pure Python -------------


def kruskal(d: list[list[float]]) -> list[tuple[int, int]]:
    """MST edges (i < j) in the order Kruskal adds them; ties broken by (i, j)."""
    n = len(d)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree = []
    all_edges = sorted((d[a][b], a, b) for a in range(n) for b in range(a + 1, n))
    for _, i, j in all_edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            tree.append((i, j))
    return tree


def reference_loss(x: list[list[float]], z: list[list[float]]) -> float:
    """The paper's L_sa, written out from the formula."""
    sx = sum((x[i][j] - z[i][j]) ** 2 for i, j in kruskal(x))
    sz = sum((z[i][j] - x[i][j]) ** 2 for i, j in kruskal(z))
    return 0.5 * (sx + sz)


def random_dist(b: int, dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(b, dim, generator=g, dtype=dtype)
    d = torch.cdist(pts, pts, compute_mode="donot_use_mm_for_euclid_dist")
    return 0.5 * (d + d.T)


def is_spanning_tree(edges: torch.Tensor, b: int) -> bool:
    parent = list(range(b))

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    if edges.shape != (b - 1, 2):
        return False
    for i, j in edges.tolist():
        ri, rj = find(i), find(j)
        if ri == rj:
            return False
        parent[ri] = rj
    return True


# ---- MST ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [3, 7, 20, 45])
def test_mst_is_a_minimal_spanning_tree(backend, b):
    d = random_dist(b, 5, seed=b)
    edges = mst_edges(d, backend)
    assert edges.dtype == torch.long
    assert is_spanning_tree(edges, b)
    assert bool((edges[:, 0] < edges[:, 1]).all())
    ref = kruskal(d.tolist())
    total = float(d[edges[:, 0], edges[:, 1]].sum())
    assert total == pytest.approx(sum(d[i, j].item() for i, j in ref), rel=1e-12)
    # distinct weights: the MST is unique, and rows come sorted by weight like Kruskal's order
    assert [tuple(e) for e in edges.tolist()] == ref


@pytest.mark.parametrize("backend", BACKENDS)
def test_mst_ties_are_broken_by_edge_index_like_kruskal(backend):
    d = random_dist(30, 3, seed=3).mul(2).round()  # many equal distances, and zeros
    assert [tuple(e) for e in mst_edges(d, backend).tolist()] == kruskal(d.tolist())
    all_equal = torch.zeros(6, 6)  # coincident points: every spanning tree is minimal
    assert mst_edges(all_equal, backend).tolist() == [[0, j] for j in range(1, 6)]


def test_mst_backends_agree_on_float32_cloud():
    d = random_dist(64, 16, seed=1, dtype=torch.float32)
    ref = mst_edges(d, "scipy")
    for backend in ("boruvka", "prim"):
        assert torch.equal(mst_edges(d, backend), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mst_small_batches(backend):
    assert mst_edges(torch.zeros(1, 1), backend).shape == (0, 2)
    assert mst_edges(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), backend).tolist() == [[0, 1]]


def test_mst_rejects_bad_input():
    with pytest.raises(DataError, match="square"):
        mst_edges(torch.zeros(3, 4))
    with pytest.raises(DataError, match="square"):
        mst_edges(torch.zeros(3))
    with pytest.raises(DataError, match="symmetric"):
        mst_edges(torch.tensor([[0.0, 1.0], [3.0, 0.0]]))
    with pytest.raises(DataError, match="NaN"):
        mst_edges(torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]))
    with pytest.raises(DataError, match="empty"):
        mst_edges(torch.zeros(0, 0))
    with pytest.raises(ParameterError, match="backend"):
        mst_edges(torch.zeros(2, 2), "kruskal")


def test_mst_tolerates_rounding_asymmetry():
    d = random_dist(10, 4, seed=5)
    d_noisy = d + torch.triu(torch.full_like(d, 1e-9), diagonal=1)
    assert torch.equal(mst_edges(d_noisy), mst_edges(d))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ("boruvka", "prim", "scipy"))
def test_mst_on_cuda_matches_cpu(backend):
    d = random_dist(100, 8, seed=2, dtype=torch.float32)
    edges = mst_edges(d.cuda(), backend)
    assert edges.device.type == "cuda"
    assert torch.equal(edges.cpu(), mst_edges(d, "scipy"))


# ---- ISA loss -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("b", [2, 5, 16, 33])
def test_structure_alignment_loss_matches_formula(backend, b):
    x = random_dist(b, 8, seed=10 + b)
    z = random_dist(b, 4, seed=20 + b)
    loss = structure_alignment_loss(x, z, backend=backend)
    assert loss.dim() == 0
    assert float(loss) == pytest.approx(reference_loss(x.tolist(), z.tolist()), rel=1e-12)


def test_structure_alignment_loss_is_zero_for_identical_spaces_and_batch_of_one():
    x = random_dist(12, 3, seed=0)
    assert float(structure_alignment_loss(x, x.clone())) == 0.0
    z = torch.zeros(1, 1, requires_grad=True)
    loss = structure_alignment_loss(torch.zeros(1, 1), z)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros(1, 1))


def test_structure_alignment_loss_gradient_analytic_and_finite_differences():
    b = 9
    x = random_dist(b, 6, seed=1)
    z = random_dist(b, 3, seed=2).requires_grad_(True)
    structure_alignment_loss(x, z).backward()
    # analytic: d/dz of 1/2 (x_e - z_e)^2 is (z_e - x_e), once per MST the edge belongs to
    expected = torch.zeros(b, b, dtype=torch.float64)
    for i, j in kruskal(x.tolist()) + kruskal(z.detach().tolist()):
        expected[i, j] += (z[i, j] - x[i, j]).item()
    assert torch.allclose(z.grad, expected, atol=1e-12)
    # finite differences on symmetric perturbations of a few upper-triangle entries
    eps = 1e-6
    for i, j in [(0, 1), (2, 5), (3, 8), (6, 7)]:
        dz = torch.zeros(b, b, dtype=torch.float64)
        dz[i, j] = dz[j, i] = eps
        zd = z.detach()
        fd = (structure_alignment_loss(x, zd + dz) - structure_alignment_loss(x, zd - dz)) / (
            2 * eps
        )
        assert float(fd) == pytest.approx(float(z.grad[i, j] + z.grad[j, i]), abs=1e-6)


def test_structure_alignment_loss_passes_no_gradient_to_x():
    x = random_dist(6, 3, seed=4).requires_grad_(True)
    z = random_dist(6, 3, seed=5).requires_grad_(True)
    structure_alignment_loss(x, z).backward()
    assert x.grad is None
    assert z.grad is not None


def test_structure_alignment_loss_rejects_mismatched_batches():
    with pytest.raises(DataError, match="same batch"):
        structure_alignment_loss(torch.zeros(3, 3), torch.zeros(4, 4))


def test_loss_gradient_reaches_embeddings_through_latent_distances():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 8, 8, generator=g) * 2 - 1
    emb = torch.randn(10, 16, generator=g)
    emb[3] = emb[2]  # coincident embeddings: the sqrt at 0 must not produce NaN
    emb.requires_grad_(True)
    x = input_space_distances(images)
    z = latent_space_distances(emb, reference_dist=x)
    loss = structure_alignment_loss(x, z)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0


# ---- distances and diagnostic --------------------------------------------------------------


def test_input_space_distances_normalised_l2():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(7, 3, 6, 5, generator=g) * 2 - 1
    images[0] = -1.0
    images[1] = 1.0
    d = input_space_distances(images)
    flat = images.reshape(7, -1).double()
    ref = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist") / (
        2 * math.sqrt(3 * 6 * 5)
    )
    assert d.shape == (7, 7) and d.dtype == torch.float32 and not d.requires_grad
    assert torch.allclose(d.double(), ref, atol=1e-5)
    assert float(d[0, 1]) == pytest.approx(1.0, abs=1e-6)  # the largest possible distance
    assert torch.equal(d, d.T) and torch.equal(d.diagonal(), torch.zeros(7))


def test_latent_space_distances_scale_and_detached_normaliser():
    g = torch.Generator().manual_seed(2)
    emb = (torch.randn(8, 5, generator=g) * 30).requires_grad_(True)
    raw = torch.cdist(emb.detach().double(), emb.detach().double())
    z = latent_space_distances(emb)
    zd = z.detach()
    off = ~torch.eye(8, dtype=torch.bool)
    assert float(zd[off].mean()) == pytest.approx(1.0, rel=1e-5)
    scale = raw[off].mean()
    assert torch.allclose(zd.double(), raw / scale, atol=1e-5)
    # detached normaliser: d z[0,1] / d emb is the raw distance's gradient divided by the scale
    (grad,) = torch.autograd.grad(z[0, 1], emb)
    diff = (emb[0] - emb[1]).detach().double()
    expected = torch.zeros(8, 5, dtype=torch.float64)
    expected[0] = diff / diff.norm() / scale
    expected[1] = -expected[0]
    assert torch.allclose(grad.double(), expected, atol=1e-6)
    # matched to a reference space's mean distance
    ref = torch.full((8, 8), 0.25).fill_diagonal_(0.0)
    z_ref = latent_space_distances(emb, reference_dist=ref).detach()
    assert float(z_ref[off].mean()) == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(DataError, match="embeddings"):
        latent_space_distances(torch.zeros(3, 4, 5))


def test_topology_discrepancy_of_sorted_deaths():
    x = random_dist(15, 4, seed=7)
    assert topology_discrepancy(x, x) == 0.0
    deaths = [x[i, j].item() for i, j in kruskal(x.tolist())]
    assert topology_discrepancy(x, 3 * x) == pytest.approx(2 * sum(deaths) / len(deaths))
    assert persistence_deaths(x).tolist() == pytest.approx(sorted(deaths))


# ---- SDE ----------------------------------------------------------------------------------


def planted_entropies(seed: int, n_easy: int = 400, n_hard: int = 100, omega: float = 5.0):
    g = torch.Generator().manual_seed(seed)
    easy = (torch.randn(n_easy, generator=g, dtype=torch.float64) * 0.05).abs()
    hard = torch.rand(n_hard, generator=g, dtype=torch.float64) * omega
    return torch.cat([easy, hard]), n_easy, omega


def test_em_recovers_planted_mixture():
    e, n_easy, omega = planted_entropies(0)
    h, sigma, pi = fit_entropy_mixture(e, omega, em_iters=30)
    assert float(pi) == pytest.approx(0.8, abs=0.03)
    assert float(sigma) == pytest.approx(0.05, rel=0.15)
    hard_entropy = e[n_easy:]
    distinguishable = hard_entropy > 0.3  # a uniform draw near 0 looks easy to any model
    assert bool((h[n_easy:][distinguishable] > 0.5).all())
    assert float((h[:n_easy] < 0.5).double().mean()) > 0.98


def test_sde_flags_near_uniform_predictions_as_hard():
    g = torch.Generator().manual_seed(3)
    b, k = 100, 50
    labels = torch.randint(0, k, (b,), generator=g)
    logits = torch.randn(b, k, generator=g) * 0.3
    logits[:80].scatter_(1, labels[:80, None], 25.0)  # confident, correct
    weights, diag = sde_weights(logits, labels, em_iters=30)
    assert bool((diag.hard_posterior[80:] > 0.5).all())
    assert bool((diag.hard_posterior[:80] < 0.5).all())
    assert float(diag.hard_fraction) == pytest.approx(0.2)
    assert float(diag.mixing_uniform) == pytest.approx(0.2, abs=0.02)
    metrics = diag.to_metrics()
    assert set(metrics) >= {
        "sde/mean_weight",
        "sde/hard_fraction",
        "sde/sigma",
        "sde/mixing_uniform",
    }
    assert metrics["sde/mean_weight"] == pytest.approx(float(weights.mean()))


@pytest.mark.parametrize("lam", [1.0, 2.0])
def test_sde_weight_formula_uses_real_valued_p_gt(lam):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(32, 10, generator=g) * 3
    labels = torch.randint(0, 10, (32,), generator=g)
    weights, diag = sde_weights(logits, labels, lam=lam)
    probs = torch.softmax(logits.double(), dim=1)
    p_gt = probs[torch.arange(32), labels]
    h = diag.hard_posterior.double()
    expected = (1 + h) ** lam * (1 - p_gt)
    assert torch.allclose(weights.double(), expected, atol=1e-6)
    entropy = -(probs * probs.log()).sum(1)
    assert torch.allclose(diag.entropy.double(), entropy, atol=1e-5)
    # the released code's integer p_gt made (1 - p_gt) == 1: the weights would be (1 + h)^lam
    assert not torch.allclose(weights.double(), (1 + h) ** lam, atol=1e-3)
    assert bool((weights < (1 + h) ** lam).all())


def test_sde_probability_input_matches_logit_input():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(16, 7, generator=g)
    labels = torch.randint(0, 7, (16,), generator=g)
    w1, _ = sde_weights(logits, labels)
    w2, _ = sde_weights(torch.softmax(logits, 1), labels, inputs_are_probs=True)
    assert torch.allclose(w1, w2, atol=1e-5)


def test_sde_weights_are_detached():
    logits = torch.randn(8, 5, requires_grad=True)
    weights, diag = sde_weights(logits, torch.zeros(8, dtype=torch.long))
    assert not weights.requires_grad and not diag.hard_posterior.requires_grad


@pytest.mark.parametrize("uniform_upper", ["max_entropy", "observed"])
@pytest.mark.parametrize(
    "logits",
    [
        torch.zeros(8, 100),  # all entropies equal (maximal)
        torch.full((8, 4), -1e4).scatter_(1, torch.zeros(8, 1, dtype=torch.long), 1e4),  # all 0
        torch.randn(1, 10),  # batch of one
    ],
    ids=["equal", "zero", "single"],
)
def test_sde_degenerate_batches_stay_finite(logits, uniform_upper):
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    weights, diag = sde_weights(logits, labels, uniform_upper=uniform_upper)
    for value in (weights, diag.hard_posterior, diag.sigma, diag.mixing_uniform):
        assert torch.isfinite(value).all()
    assert bool((weights >= 0).all())


def test_sde_rejects_bad_input():
    with pytest.raises(DataError, match="labels"):
        sde_weights(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        sde_weights(torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(DataError, match="logits"):
        sde_weights(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ParameterError, match="uniform_upper"):
        sde_weights(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), uniform_upper="range")
    with pytest.raises(ParameterError, match="em_iters"):
        sde_weights(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), em_iters=0)
