"""The generator's optional linear path from the vector to the image (model.linear_base)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.io.packed import PackedImages, PackedWriter
from face_pipelines.models.vec2face import Vec2Face
from face_pipelines.training.vec2face import fit_linear_base

from .helpers import TINY_VEC2FACE

# 16 px: one upsampling level fewer than the shared tiny model.
TINY = {
    **TINY_VEC2FACE,
    "feat_dim": 6,
    "image_size": 16,
    "ch_mult": (1, 1, 2, 2),
    "num_res_blocks": (0, 1, 1, 1),
}


def _linear_world(root, n=96, seed=0):
    """Images that are an exact affine function of their features (before uint8 rounding)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 6)) * rng.uniform(0.5, 20, size=6) + rng.normal(size=6) * 5
    z = (feats - feats.mean(0)) / feats.std(0)
    basis = rng.normal(size=(6, 16 * 16 * 3)) * 12
    pixels = np.clip(128 + z @ basis, 0, 255).round().astype(np.uint8)
    with PackedWriter(root, image_size=16) as writer:
        writer.add_batch(pixels.reshape(n, 16, 16, 3), np.arange(n) % 8)
    return PackedImages(root), feats.astype(np.float32)


def test_zero_initialised_path_leaves_the_rest_of_the_model_as_it_was():
    torch.manual_seed(3)
    plain = Vec2Face(**TINY)
    torch.manual_seed(3)
    with_base = Vec2Face(**TINY, linear_base=True)
    extra = set(with_base.state_dict()) - set(plain.state_dict())
    assert extra == {"linear_base.weight", "linear_base.bias"}
    for name, value in plain.state_dict().items():
        assert torch.equal(value, with_base.state_dict()[name]), name
    f = torch.randn(3, 6)
    with torch.no_grad():
        a = plain.generate(f, masking=None)
        b = with_base.generate(f, masking=None)
    assert torch.equal(a, b)


def test_ridge_fit_reproduces_a_linear_world(tmp_path):
    packed, feats = _linear_world(tmp_path / "packed")
    gen = Vec2Face(**TINY, linear_base=True)
    rows = np.arange(80)
    fit = fit_linear_base(gen, packed, feats, rows, alpha=1e-6, batch_size=32)
    # uint8 rounding and clipping are all that is left; the mean image explains nothing.
    assert fit["linear_base_mse"] < 0.01 * fit["mean_image_mse"]
    images, _ = packed.get_batch(np.arange(80, 96))  # rows the fit never saw
    target = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        pred = gen.linear_base(torch.from_numpy(feats[80:96])).view(-1, 3, 16, 16)
    assert float(((pred - target) ** 2).mean()) < 0.01 * fit["mean_image_mse"]
    # The generator's own output is the decoder's plus this path.
    with torch.no_grad():
        out = gen(torch.from_numpy(feats[80:96]), masking=None)["image"]
        gen.linear_base = None
        without = gen(torch.from_numpy(feats[80:96]), masking=None)["image"]
    assert torch.allclose(out - without, pred, atol=1e-5)


def test_ridge_fit_needs_the_path():
    gen = Vec2Face(**TINY)
    with pytest.raises(ValueError, match="linear_base: true"):
        fit_linear_base(gen, None, np.zeros((4, 6)), np.arange(4), alpha=1.0)


@pytest.mark.parametrize("trainable", [False, True])
def test_trainer_fits_the_path_and_keeps_it_frozen_unless_asked(tmp_path, trainable):
    from face_pipelines.io.checkpoint import load_checkpoint
    from face_pipelines.models.registry import build_backbone
    from face_pipelines.training.vec2face import Vec2FaceTrainConfig, train_vec2face

    from .helpers import make_packed

    packed_root = make_packed(tmp_path / "packed", n=48, size=32, classes=8)
    labels = np.arange(48) % 8
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(8, 24))[labels] + 0.1 * rng.normal(size=(48, 24))).astype(np.float32)
    kw = {"widths": (4, 4, 8, 8), "stem_width": 4, "input_size": 32, "embedding_dim": 24}
    cfg = Vec2FaceTrainConfig(
        model={**TINY_VEC2FACE, "linear_base": True},
        linear_base_trainable=trainable,
        epochs=1,
        batch_size=16,
        eval_images=8,
        grid_identities=2,
        heldout_identities=0.25,
        discriminator_scales=1,
        ema_decay=0.0,  # the saved EMA is the trained generator itself
    )
    report = train_vec2face(
        packed_root,
        feats,
        build_backbone("small", **kw),
        build_backbone("small", **(kw | {"embedding_dim": 8})),
        tmp_path / "gen",
        tmp_path / "grids",
        cfg,
        progress=False,
    )
    fit = report["linear_base_fit"]
    floor = report["linear_baseline"]  # the plain linear map, on the same held-out pairs
    assert {"judge_identity_cos_mean", "ssim_mean", "pixel_spread_generated"} <= set(floor)
    assert 0 <= fit["linear_base_mse"] < fit["mean_image_mse"]
    # The closed-form fit of the same rows, recomputed here.
    reference = Vec2Face(**{**TINY_VEC2FACE, "feat_dim": 24, "linear_base": True})
    from face_pipelines.training.data import heldout_identity_split

    rows, _ = heldout_identity_split(labels, 0.25, cfg.seed, min_held=2)
    fit_linear_base(reference, PackedImages(packed_root), feats, rows, cfg.linear_base_alpha)
    saved = load_checkpoint(report["checkpoint"])["state_dict"]
    same = torch.allclose(saved["linear_base.weight"], reference.linear_base.weight, atol=1e-6)
    assert same is not trainable


def test_linear_renderer_draws_what_the_fit_says(tmp_path):
    from face_pipelines.training.vec2face import LinearRenderer, generate_batched

    packed, feats = _linear_world(tmp_path / "packed")
    floor = LinearRenderer(6, 16)
    fit_linear_base(floor, packed, feats, np.arange(80), alpha=1e-6)
    drawn = generate_batched(floor, feats[80:], "cpu").astype(np.float32)
    real, _ = packed.get_batch(np.arange(80, 96))
    assert drawn.shape == real.shape
    assert np.abs(drawn - real).mean() < 2.0  # grey levels; the mean image is ~20 away
    assert np.abs(real.astype(np.float32) - real.mean(0)).mean() > 10
