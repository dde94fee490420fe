"""AttrOP with a toy differentiable world: a vector -> image generator and a teacher that inverts it.

The teacher is a least-squares fit of image -> vector, so cos(teacher(G(v)), centre) ~ cos(v, centre);
the pose model reads yaw/pitch as 30 x the first two decoded coordinates, and quality (default) is
the teacher's embedding norm. That makes reachable and unreachable targets easy to construct.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.image_tensors import images_to_uint8
from face_pipelines.synthesis.attrop import (
    AttrOPBatchEditor,
    AttrOPConfig,
    AttrOPModels,
    attrop,
    generate_images,
)

DIM = 8
SIZE = 8


class ToyGenerator(nn.Module):
    """Linear -> reshape -> conv -> tanh; optional noise drawn from the caller's generator."""

    def __init__(self, dim: int = DIM, size: int = SIZE, noise: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.image_size = size
        self.noise = noise
        self.fc = nn.Linear(dim, 3 * size * size)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g) * 0.3 / dim**0.5)
            self.fc.bias.zero_()
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.05)
            self.conv.bias.zero_()

    def generate(self, vectors, generator=None):
        x = self.fc(vectors).view(-1, 3, self.image_size, self.image_size)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator)
        return torch.tanh(x + self.conv(x))


class LinearTeacher(nn.Module):
    """images -> embeddings, a least-squares inverse of a generator."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, images):
        return images.flatten(1) @ self.weight + self.bias


class ToyPose(nn.Module):
    """(yaw, pitch) = 30 x the first two decoded coordinates."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher

    def forward(self, images):
        return 30.0 * self.teacher(images)[:, :2]


def fit_teacher(gen: ToyGenerator, n: int = 2000) -> LinearTeacher:
    g = torch.Generator().manual_seed(123)
    v = torch.randn(n, DIM, generator=g)
    with torch.no_grad():
        x = gen.generate(v).flatten(1)
    xa = torch.cat([x, torch.ones(n, 1)], dim=1)
    sol = torch.linalg.lstsq(xa, v).solution
    return LinearTeacher(sol[:-1].contiguous(), sol[-1].contiguous())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: extra threads only add contention on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(_one_thread):
    torch.manual_seed(0)
    gen = ToyGenerator().eval()
    teacher = fit_teacher(gen).eval()
    return gen, teacher, ToyPose(teacher).eval()


def _centres(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def test_toy_teacher_inverts_generator(world):
    gen, teacher, _ = world
    c = _centres(16)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(teacher(gen.generate(c)), c)
    assert cos.min() > 0.9  # the premise of the other tests


def test_unreachable_targets_stop_at_steps_max(world):
    gen, teacher, pose = world
    c = _centres(3)
    cfg = AttrOPConfig(steps_max=7, lr=0.05)
    res = attrop(
        gen, c.clone(), c, [20.0, np.nan, 2000.0], [1e4, 1e4, np.nan], teacher, pose, None, cfg
    )
    assert res.steps_used.tolist() == [7, 7, 7]
    assert not res.met.any() and not res.converged.any()
    assert not res.quality_met[:2].any() and res.quality_met[2]
    assert not res.pose_met[2]
    assert res.images.shape == (3, SIZE, SIZE, 3) and res.images.dtype == np.uint8
    # The vectors moved (it did optimise) and stayed finite.
    assert torch.isfinite(res.vectors).all()
    assert (res.vectors - c).abs().sum(dim=1).min() > 0


def test_reachable_targets_stop_early_and_are_met(world):
    gen, teacher, pose = world
    n = 6
    c = _centres(n, seed=2)
    start = c + 0.8 * torch.randn(n, DIM, generator=torch.Generator().manual_seed(3))
    yaw = torch.tensor([15.0, 25.0, 10.0, 30.0, 20.0, 5.0])
    with torch.no_grad():
        q0 = teacher(gen.generate(start)).norm(dim=1)
    quality = (q0 + 2.0).numpy()  # more than they have (tolerance 1)
    cfg = AttrOPConfig(steps_max=200, lr=0.05, w_id=10.0)
    res = attrop(gen, start, c, yaw, quality, teacher, pose, None, cfg)
    assert res.converged.all() and res.met.all()
    assert (res.steps_used > 0).all() and (res.steps_used < cfg.steps_max).all()
    # The reported numbers describe the returned image (re-measured from its uint8 pixels).
    x = torch.from_numpy(res.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        emb = teacher(x)
        yaw_img = pose(x)[:, 0]
    cos = torch.nn.functional.cosine_similarity(emb, c).numpy()
    assert np.all(1 - cos <= cfg.id_tolerance + 0.02)
    assert np.all(np.abs(yaw.numpy() - np.abs(yaw_img.numpy())) <= cfg.pose_tolerance_deg + 1.0)
    np.testing.assert_allclose(res.yaw, yaw_img.numpy(), atol=1.0)
    assert np.all(emb.norm(dim=1).numpy() >= quality - cfg.quality_tolerance - 0.05)


def test_frozen_samples_leave_the_batch_and_do_not_change(world):
    gen, teacher, pose = world

    calls: list[int] = []

    class Spy:
        image_size = SIZE

        def generate(self, v, generator=None):
            calls.append(len(v))
            return gen.generate(v, generator)

    c = _centres(3, seed=4)
    start = c.clone()
    start[1] += 0.5  # sample 1 needs a few steps to reach its yaw
    yaw = [np.nan, 20.0, 2000.0]  # 0: already met, 1: reachable, 2: unreachable
    cfg = AttrOPConfig(steps_max=40, lr=0.05)
    res = attrop(Spy(), start, c, yaw, None, teacher, pose, None, cfg)
    assert res.steps_used[0] == 0 and res.converged[0]
    assert torch.equal(res.vectors[0], start[0])  # frozen at once, never updated
    assert 0 < res.steps_used[1] < cfg.steps_max and res.converged[1]
    assert res.steps_used[2] == cfg.steps_max and not res.met[2]
    # Frozen samples are no longer generated: 3 rows at first, then 2, then 1.
    k = int(res.steps_used[1])
    # (steps_max + 1 evaluations in all: the last one measures the final vector)
    assert calls == [3] + [2] * k + [1] * (cfg.steps_max - k)

    # Sample 1's trajectory does not depend on its batch mates or on a larger step cap.
    alone = attrop(gen, start[1:2], c[1:2], yaw[1:2], None, teacher, pose, None, cfg)
    assert alone.steps_used[0] == res.steps_used[1]
    torch.testing.assert_close(alone.vectors[0], res.vectors[1])
    longer = attrop(
        gen,
        start[1:2],
        c[1:2],
        yaw[1:2],
        None,
        teacher,
        pose,
        None,
        cfg.model_copy(update={"steps_max": 400}),
    )
    torch.testing.assert_close(longer.vectors[0], res.vectors[1])
    np.testing.assert_array_equal(longer.images[0], res.images[1])


def test_nan_targets_are_ignored(world):
    gen, teacher, pose = world
    c = _centres(2, seed=5)
    # Start nearly orthogonal to the centre (cos ~0.2): only the id term can bring it back.
    r = torch.randn(2, DIM, generator=torch.Generator().manual_seed(9))
    r = r - (r * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True) * c
    start = 0.2 * c + r * (c.norm(dim=1, keepdim=True) / r.norm(dim=1, keepdim=True))
    cfg = AttrOPConfig(steps_max=50, lr=0.1)
    res = attrop(gen, start, c, [np.nan, np.nan], [np.nan, np.nan], teacher, None, None, cfg)
    assert res.converged.all() and res.met.all()
    assert res.pose_met.all() and res.quality_met.all()
    assert np.isnan(res.yaw).all()  # no pose model, no yaw
    assert (res.steps_used > 0).all()  # the id term alone drove the optimisation
    assert (1 - res.id_cos <= cfg.id_tolerance).all()
    # With a pose model the yaw is reported but still not a target.
    res2 = attrop(gen, start, c, None, None, teacher, pose, None, cfg)
    assert res2.met.all() and np.isfinite(res2.yaw).all()
    with pytest.raises(ParameterError, match="pose_model"):
        attrop(gen, start, c, [10.0, np.nan], None, teacher, None, None, cfg)


def test_deterministic_with_seeded_generator(world):
    _, teacher, pose = world
    noisy = ToyGenerator(noise=0.3).eval()
    c = _centres(4, seed=6)
    yaw = [10.0, 20.0, np.nan, 2000.0]
    cfg = AttrOPConfig(steps_max=12, lr=0.05)

    def run(seed):
        return attrop(
            noisy,
            c + 0.3,
            c,
            yaw,
            None,
            teacher,
            pose,
            None,
            cfg,
            torch.Generator().manual_seed(seed),
        )

    a, b, other = run(0), run(0), run(1)
    assert torch.equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.steps_used, b.steps_used)
    assert not np.array_equal(a.images, other.images)


def test_chunks_and_generate_images(world):
    gen, teacher, pose = world
    c = _centres(5, seed=7)
    cfg = AttrOPConfig(steps_max=0)
    res = attrop(gen, c, c, None, None, teacher, pose, None, cfg)
    chunked = attrop(
        gen, c, c, None, None, teacher, pose, None, cfg.model_copy(update={"batch_size": 2})
    )
    np.testing.assert_array_equal(res.images, chunked.images)
    plain = generate_images(gen, c.numpy(), batch_size=2)
    np.testing.assert_array_equal(plain, res.images)
    with torch.no_grad():
        np.testing.assert_array_equal(plain, images_to_uint8(gen.generate(c)))
    assert (res.steps_used == 0).all()


def test_bad_inputs_are_reported(world):
    gen, teacher, pose = world
    c = _centres(2)
    with pytest.raises(DataError, match="centres"):
        attrop(gen, c, c[:1], None, None, teacher)
    with pytest.raises(DataError, match="yaw_targets_deg"):
        attrop(gen, c, c, [1.0, 2.0, 3.0], None, teacher, pose)
    with pytest.raises(ParameterError):
        attrop(gen, c, c, None, None, teacher, config={"steps_max": -1})
    with pytest.raises(ParameterError):
        attrop(gen, c, c, None, None, teacher, config={"stepsmax": 3})


def _toy_models() -> AttrOPModels:
    gen = ToyGenerator().eval()
    teacher = fit_teacher(gen)
    return AttrOPModels(teacher, ToyPose(teacher), None)


def test_batch_editor_mixes_optimised_and_plain_rows(world):
    import pandas as pd

    gen, _, _ = world
    centres = _centres(2, seed=8).numpy()
    rows = pd.DataFrame(
        {
            "identity": [0, 0, 1, 1],
            "index": [0, 1, 0, 1],
            "attrop": [True, False, True, False],
            "yaw_target": [15.0, 15.0, np.nan, np.nan],
        }
    )
    editor = AttrOPBatchEditor(centres, _toy_models, {"steps_max": 60, "lr": 0.05})
    v = torch.from_numpy(centres[rows["identity"].to_numpy()]) + 0.2
    images, cols = editor(gen, v, rows, torch.Generator().manual_seed(0))
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert cols["attrop_met"].isna().tolist() == [False, True, False, True]
    assert bool(cols["attrop_met"][0]) and bool(cols["attrop_met"][2])
    assert cols["attrop_steps"][1] == 0 and cols["attrop_steps"][3] == 0
    assert np.isfinite(cols["id_cos_to_centre"]).all() and np.isfinite(cols["yaw_pred"]).all()
    assert abs(abs(cols["yaw_pred"][0]) - 15.0) <= 5.0
    # Plain rows are exactly the generator's images.
    np.testing.assert_array_equal(images[[1, 3]], generate_images(gen, v[[1, 3]]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attrop_on_cuda_bf16_is_bounded_and_finite():
    gen = ToyGenerator().eval()
    teacher = fit_teacher(gen).cuda()
    gen, pose = gen.cuda(), ToyPose(teacher)
    c = _centres(4, seed=10).cuda()
    cfg = AttrOPConfig(steps_max=6, lr=0.05, precision="auto")
    res = attrop(gen, c + 0.3, c, [10.0, 20.0, np.nan, 2000.0], None, teacher, pose, None, cfg)
    assert res.steps_used.max() <= cfg.steps_max and res.steps_used[3] == cfg.steps_max
    assert torch.isfinite(res.vectors).all() and np.isfinite(res.id_cos).all()


def test_pose_newton_steps_reach_yaw_targets_in_fewer_steps(world):
    gen, teacher, pose = world
    n = 8
    c = _centres(n, seed=5)
    yaw = torch.tensor([20.0, 25.0, 30.0, 15.0, 22.0, 28.0, 18.0, 26.0])
    base = dict(steps_max=40, lr=0.05, w_id=1.0, id_tolerance=2.0)  # pose is the only target
    adam = attrop(gen, c.clone(), c, yaw, None, teacher, pose, None, AttrOPConfig(**base))
    newton = attrop(
        gen, c.clone(), c, yaw, None, teacher, pose, None, AttrOPConfig(**base, pose_newton_steps=3)
    )
    assert newton.converged.all() and newton.pose_met.all()
    # Near-linear yaw: a Newton step or two lands where Adam needs many.
    assert newton.steps_used.max() <= 3
    assert newton.steps_used.mean() < adam.steps_used.mean()
    assert np.all(np.abs(yaw.numpy() - np.abs(newton.yaw)) <= 5.0)


def test_pose_newton_step_is_capped_and_leaves_rows_without_yaw_target_to_adam(world):
    gen, teacher, pose = world
    c = _centres(2, seed=6)
    cap = 0.01
    cfg = AttrOPConfig(steps_max=1, lr=0.05, pose_newton_steps=1, pose_newton_max_step=cap)
    res = attrop(gen, c.clone(), c, [60.0, np.nan], [np.nan, 1e4], teacher, pose, None, cfg)
    moved = (res.vectors - c).norm(dim=1)
    # Row 0: one Newton step, no longer than the cap; row 1 (no yaw target): one Adam step.
    assert moved[0] <= cap * c[0].norm() * (1 + 1e-5) and moved[0] > 0.5 * cap * c[0].norm()
    plain = attrop(
        gen,
        c[1:].clone(),
        c[1:],
        [np.nan],
        [1e4],
        teacher,
        pose,
        None,
        AttrOPConfig(steps_max=1, lr=0.05),
    )
    torch.testing.assert_close(res.vectors[1:], plain.vectors)
