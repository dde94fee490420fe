"""Margin heads: margin formulas, MagFace quality, p_gt, PartialFC sampling and class sharding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.heads import (
    ArcFaceHead,
    CosFaceHead,
    MagFaceHead,
    build_head,
    magface_quality,
)
from face_pipelines.models.registry import build_backbone


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors run faster on one thread, and a shared CPU stalls two-thread OpenMP loops."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _planar_head(head_cls, angles, **kwargs):
    """Head in 2-D whose class centres sit at the given angles (radians)."""
    head = head_cls(2, len(angles), **kwargs)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]) * 3.0)
    return head


def _at(angle, norm=1.0):
    return torch.tensor([[math.cos(angle), math.sin(angle)]]) * norm


def test_arcface_target_logit_and_fallback():
    head = _planar_head(ArcFaceHead, [0.0, math.pi / 2], s=64.0, m=0.5)
    # theta = 1.0 to the true class 0: theta + m < pi -> s cos(theta + m); other logit unchanged.
    out = head(_at(1.0, norm=5.0), torch.tensor([0]))
    assert out["logits"][0, 0].item() == pytest.approx(64 * math.cos(1.5), abs=1e-4)
    assert out["logits"][0, 1].item() == pytest.approx(64 * math.cos(math.pi / 2 - 1.0), abs=1e-4)
    # theta = 2.9: theta + m > pi -> fallback s (cos(theta) - m sin(m)), below cos(theta)
    out = head(_at(2.9), torch.tensor([0]))
    expected = 64 * (math.cos(2.9) - 0.5 * math.sin(0.5))
    assert out["logits"][0, 0].item() == pytest.approx(expected, abs=1e-4)
    assert expected != pytest.approx(64 * math.cos(2.9 + 0.5), abs=1e-2)
    # Loss is cross-entropy over the returned logits; gradients are finite at cos = 1.
    emb = _at(0.0).requires_grad_()
    out = head(emb, torch.tensor([0]))
    assert out["loss"].item() == pytest.approx(
        F.cross_entropy(out["logits"], torch.tensor([0])).item(), rel=1e-6
    )
    out["loss"].backward()
    assert torch.isfinite(emb.grad).all()


def test_cosface_target_logit():
    head = _planar_head(CosFaceHead, [0.0, 2.0, 4.0], s=30.0, m=0.4)
    out = head(_at(0.7), torch.tensor([2]))
    cos = [math.cos(0.7), math.cos(2.0 - 0.7), math.cos(4.0 - 0.7)]
    expected = [30 * cos[0], 30 * cos[1], 30 * (cos[2] - 0.4)]
    torch.testing.assert_close(out["logits"][0], torch.tensor(expected), rtol=0, atol=1e-4)


def test_magface_margin_regulariser_and_quality():
    head = _planar_head(MagFaceHead, [0.0, 1.5])
    labels = torch.tensor([0, 0, 0])
    norms = torch.tensor([5.0, 60.0, 200.0])  # below, inside and above [l_a, u_a] = [10, 110]
    emb = _at(0.6).repeat(3, 1) * norms[:, None]
    out = head(emb, labels)
    a = norms.clamp(10, 110)
    margins = 0.45 + (0.8 - 0.45) * (a - 10) / 100
    torch.testing.assert_close(head.margin(norms), margins)
    expected_target = 64 * torch.cos(0.6 + margins)
    torch.testing.assert_close(out["logits"][:, 0], expected_target, rtol=0, atol=1e-3)
    # Higher norm -> larger margin -> lower target logit.
    assert out["logits"][0, 0] > out["logits"][1, 0] > out["logits"][2, 0]
    ce = F.cross_entropy(out["logits"], labels, reduction="none")
    reg = 35.0 * (1 / a + a / 110**2)
    torch.testing.assert_close(out["per_sample_loss"], ce + reg, rtol=1e-5, atol=1e-5)
    # Quality = norm, monotone in the norm.
    q = magface_quality(emb)
    torch.testing.assert_close(q, norms)
    assert torch.all(q[1:] > q[:-1])
    # Regulariser gradient pushes small norms up (towards u_a).
    small = (_at(0.3) * 20.0).requires_grad_()
    head.regulariser(magface_quality(small)).sum().backward()
    direction = _at(0.3)[0]
    assert torch.dot(small.grad[0], direction) < 0  # loss decreases as the norm grows


def test_p_gt_is_a_probability_and_matches_softmax():
    torch.manual_seed(0)
    head = ArcFaceHead(16, 10, s=8.0, m=0.2)
    emb, labels = torch.randn(12, 16), torch.randint(0, 10, (12,))
    out = head(emb, labels)
    p = out["p_gt"]
    assert p.dtype.is_floating_point and p.shape == (12,)
    assert torch.all((p >= 0) & (p <= 1))
    assert torch.any((p > 0) & (p < 1) & (p != p.round()))  # real numbers, not truncated to 0/1
    ref = torch.softmax(out["logits"], dim=1).gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(p, ref)
    ref_entropy = -(torch.softmax(out["logits"], 1) * torch.log_softmax(out["logits"], 1)).sum(1)
    torch.testing.assert_close(out["entropy"], ref_entropy, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["per_sample_loss"], -torch.log(ref), rtol=1e-4, atol=1e-4)


def test_weighted_per_sample_loss_gradient_matches_autograd_reference():
    torch.manual_seed(1)
    head = CosFaceHead(8, 6, s=16.0)
    emb = torch.randn(5, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 5, 1])
    w = torch.tensor([0.5, 1.0, 2.0, 0.1, 1.5])
    (w * head(emb, labels)["per_sample_loss"]).mean().backward()
    grad, wgrad = emb.grad.clone(), head.weight.grad.clone()
    emb2 = emb.detach().clone().requires_grad_()
    head.weight.grad = None
    cos = F.normalize(emb2) @ F.normalize(head.weight).T
    logits = 16.0 * (cos - 0.4 * F.one_hot(labels, 6))
    (w * F.cross_entropy(logits, labels, reduction="none")).mean().backward()
    torch.testing.assert_close(grad, emb2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wgrad, head.weight.grad, rtol=1e-4, atol=1e-6)


def test_partial_fc_full_rate_equals_full_softmax_and_positives_always_sampled():
    torch.manual_seed(2)
    emb, labels = torch.randn(16, 8), torch.randint(0, 200, (16,))
    full = ArcFaceHead(8, 200)
    sampled = ArcFaceHead(8, 200, sample_rate=1.0)
    sampled.load_state_dict(full.state_dict())
    torch.testing.assert_close(sampled(emb, labels)["loss"], full(emb, labels)["loss"])

    head = ArcFaceHead(8, 200, sample_rate=0.1)
    head.load_state_dict(full.state_dict())
    full_logits = full(emb, labels)["logits"]
    for _ in range(5):
        out = head(emb, labels)
        idx = out["class_index"]
        assert idx.numel() == 20 and torch.unique(idx).numel() == 20
        assert set(labels.tolist()) <= set(idx.tolist())
        # Logits are the full logits restricted to the sampled classes; loss is CE over them.
        torch.testing.assert_close(out["logits"], full_logits[:, idx], rtol=1e-5, atol=1e-4)
        local = torch.searchsorted(idx, labels)
        ref = F.cross_entropy(out["logits"], local)
        torch.testing.assert_close(out["loss"], ref)
    # More positives than the sampling budget: exactly the positives are used.
    many = torch.arange(0, 200, 7)  # 29 classes > 20
    out = head(torch.randn(many.numel(), 8), many)
    assert out["class_index"].tolist() == many.tolist()
    # Only sampled rows of the centre matrix receive gradient.
    head.zero_grad()
    out = head(emb, labels)
    out["loss"].backward()
    touched = head.weight.grad.abs().sum(1) > 0
    assert set(torch.nonzero(touched)[:, 0].tolist()) <= set(out["class_index"].tolist())
    # Evaluation mode uses every class.
    assert head.eval()(emb, labels)["logits"].shape == (16, 200)


def test_head_input_errors():
    head = build_head("arcface", 4, 3)
    with pytest.raises(DataError, match=r"\[B, 4\]"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ParameterError, match="sample_rate"):
        build_head("cosface", 4, 3, sample_rate=0.0)
    with pytest.raises(ParameterError, match="unknown margin head"):
        build_head("sphereface", 4, 3)


# ---- 2 processes on gloo: classes sharded over ranks -------------------------------------------

WORLD, DIM, CLASSES = 2, 6, 7  # 7 classes -> shards of 4 and 3
BATCHES = (3, 5)  # different local batch sizes
CASES = (
    ("arcface", ArcFaceHead, "replicated"),
    ("magface", MagFaceHead, "replicated"),
    ("magface", MagFaceHead, "local"),
)


def _shared_data():
    g = torch.Generator().manual_seed(123)
    weight = torch.randn(CLASSES, DIM, generator=g)
    emb = 25.0 * torch.randn(sum(BATCHES), DIM, generator=g)  # norms inside MagFace [l_a, u_a]
    labels = torch.tensor([0, 6, 3, 4, 4, 1, 5, 6])
    return weight, emb, labels


def _sharded_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        weight, emb, labels = _shared_data()
        results = {}
        for name, cls, objective in CASES:
            head = cls(DIM, CLASSES, s=16.0)  # sharding auto-detected
            head.load_full_weight(weight)
            start = sum(BATCHES[:rank])
            local = emb[start : start + BATCHES[rank]].clone().requires_grad_()
            out = head(local, labels[start : start + BATCHES[rank]])
            if objective == "replicated":
                out["loss"].backward()
            else:  # each rank backpropagates the mean loss of its own samples
                out["per_sample_loss"][out["local_slice"]].mean().backward()
            results[name + objective] = {
                "loss": out["loss"].detach(),
                "per_sample": out["per_sample_loss"].detach(),
                "p_gt": out["p_gt"],
                "entropy": out["entropy"],
                "emb_grad": local.grad,
                "weight_grad": head.weight.grad,
                "class_start": head.class_start,
                "local_slice": (out["local_slice"].start, out["local_slice"].stop),
                "full_weight": head.full_weight(),
                "sharded": head.sharded,
            }
        # PartialFC sampling on shards keeps every positive of the shard.
        head = ArcFaceHead(DIM, CLASSES, sample_rate=0.25)
        start = sum(BATCHES[:rank])
        out = head(emb[start : start + BATCHES[rank]], labels[start : start + BATCHES[rank]])
        results["sampled_class_index"] = out["class_index"]
        results["sampled_loss"] = out["loss"].detach()
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_head_two_gloo_processes_match_single_process(tmp_path):
    mp.spawn(
        _sharded_worker,
        args=(str(tmp_path / "init"), str(tmp_path)),
        nprocs=WORLD,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    weight, emb, labels = _shared_data()
    starts = [0, BATCHES[0]]
    for name, cls, objective in CASES:
        head = cls(DIM, CLASSES, s=16.0)
        with torch.no_grad():
            head.weight.copy_(weight)
        full_emb = emb.clone().requires_grad_()
        out = head(full_emb, labels)
        if objective == "replicated":
            out["loss"].backward()
        else:  # the mean over ranks of each rank's local mean
            per_rank = [
                out["per_sample_loss"][s : s + b].mean()
                for s, b in zip(starts, BATCHES, strict=True)
            ]
            torch.stack(per_rank).mean().backward()
        for r, res in enumerate(ranks):
            got = res[name + objective]
            assert got["sharded"] and torch.equal(got["full_weight"], weight)
            torch.testing.assert_close(got["loss"], out["loss"].detach())  # same on every rank
            torch.testing.assert_close(got["per_sample"], out["per_sample_loss"].detach())
            torch.testing.assert_close(got["p_gt"], out["p_gt"])
            torch.testing.assert_close(got["entropy"], out["entropy"])
            rows = slice(got["class_start"], got["class_start"] + got["weight_grad"].shape[0])
            torch.testing.assert_close(got["weight_grad"], head.weight.grad[rows])
            local = slice(starts[r], starts[r] + BATCHES[r])
            assert got["local_slice"] == (local.start, local.stop)
            # x world size: a DDP backbone averages over ranks (see heads module doc).
            torch.testing.assert_close(got["emb_grad"], WORLD * full_emb.grad[local])
    # Sampling (ceil(0.25 * 4) = 1, ceil(0.25 * 3) = 1 per shard) keeps all positives of the shard.
    shard0 = {c for c in labels.tolist() if c < 4}
    shard1 = {c for c in labels.tolist() if c >= 4}
    assert set(ranks[0]["sampled_class_index"].tolist()) == shard0
    assert set(ranks[1]["sampled_class_index"].tolist()) == shard1
    torch.testing.assert_close(ranks[0]["sampled_loss"], ranks[1]["sampled_loss"])


def test_small_backbone_with_arcface_learns_a_toy_task():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(4, 3, 64, 64, generator=g)
    labels = torch.arange(32) % 4
    noisy = prototypes[labels] + 0.3 * torch.randn(32, 3, 64, 64, generator=g)
    x = noisy.clamp(0, 1) * 2 - 1
    model = build_backbone("small", num_features=32)
    head = ArcFaceHead(32, 4, s=16.0, m=0.3)
    params = [p for p in [*model.parameters(), *head.parameters()] if p.requires_grad]
    velocity = [torch.zeros_like(p) for p in params]
    losses = []
    for _ in range(12):
        out = head(model(x), labels)
        for p in params:
            p.grad = None
        out["loss"].backward()
        with torch.no_grad():  # SGD with momentum, written out (torch.optim's first use is slow)
            for p, v in zip(params, velocity, strict=True):
                v.mul_(0.9).add_(p.grad)
                p -= 0.1 * v
        losses.append(out["loss"].item())
    assert losses[-1] < 0.2 * losses[0]
    assert out["p_gt"].mean() > 0.5
