"""Vec2Face generator: shapes, sizes, row masking, determinism, gradients, numerical safety."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.models.vec2face import (
    INFERENCE_MASKING,
    TRAIN_MASKING,
    VEC2FACE_PRESETS,
    MaskingParams,
    ResBlock,
    RowMask,
    Vec2Face,
    build_vec2face,
    sample_mask_ratios,
    sample_row_mask,
)

# 16 px from a 4x4 grid: every code path of the real model at a fraction of the cost.
TINY = dict(
    feat_dim=16,
    image_size=16,
    grid_size=4,
    width=32,
    depth=1,
    num_heads=2,
    decoder_width=32,
    decoder_depth=1,
    decoder_num_heads=2,
    z_channels=8,
    ch=8,
    ch_mult=(1, 1, 2),
    num_res_blocks=1,
    mid_blocks=1,
    norm_groups=4,
)


def tiny_model(seed: int = 0, **overrides) -> Vec2Face:
    torch.manual_seed(seed)
    return Vec2Face(**{**TINY, **overrides})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_inputs(blocks) -> tuple[list[torch.Tensor], list]:
    """Record the input of the first block of a ModuleList."""
    seen: list[torch.Tensor] = []
    handle = blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    return seen, [handle]


# --------------------------------------------------------------------------------------------------
# shapes and sizes
def test_default_preset_output_shapes_at_64px():
    model = build_vec2face("default")
    assert model.image_size == 64
    out = model(torch.randn(2, 512) * 22 / math.sqrt(512), generator=seeded(0))
    assert out["image"].shape == (2, 3, 64, 64)
    width = VEC2FACE_PRESETS["default"]["width"]
    assert out["tokens_pred"].shape == (2, 16, width)
    assert out["tokens_target"].shape == (2, 16, width)
    assert out["mask"].shape == (2, 16) and out["mask"].dtype == torch.bool
    assert not out["tokens_target"].requires_grad


def test_paper_preset_size_and_shapes_on_meta_device():
    model = build_vec2face("paper", device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    assert 140e6 <= n_params <= 220e6, n_params
    # the ViT-B encoder alone is ~85M (12 blocks at width 768)
    n_encoder = sum(p.numel() for p in model.blocks.parameters())
    assert 80e6 <= n_encoder <= 90e6, n_encoder
    out = model(torch.empty(2, 512, device="meta"), generator=seeded(0))
    assert out["image"].shape == (2, 3, 112, 112)
    assert out["tokens_pred"].shape == (2, 49, 768)
    assert out["mask"].shape == (2, 49)


def test_112px_layout_computes_real_images():
    # paper geometry (7x7 grid, 5 levels: 7 -> 14 -> 28 -> 56 -> 112) with tiny widths
    model = tiny_model(image_size=112, grid_size=7, ch_mult=(1, 1, 1, 1, 2), ch=4, z_channels=4)
    out = model(torch.randn(2, 16), generator=seeded(0))
    assert out["image"].shape == (2, 3, 112, 112)
    assert out["tokens_pred"].shape == (2, 49, 32)
    assert torch.isfinite(out["image"]).all()


def test_decoder_width_different_from_encoder_width_projects_tokens():
    model = tiny_model(decoder_width=16, decoder_num_heads=2)
    out = model(torch.randn(3, 16), generator=seeded(1))
    assert out["tokens_pred"].shape == out["tokens_target"].shape == (3, 16, 32)


def test_bad_parameters_and_inputs_give_clear_errors():
    with pytest.raises(ParameterError, match="image_size"):
        Vec2Face(**{**TINY, "image_size": 32})
    with pytest.raises(ParameterError, match="unknown_key"):
        Vec2Face(**{**TINY, "unknown_key": 1})
    with pytest.raises(ParameterError, match="num_heads"):
        Vec2Face(**{**TINY, "num_heads": 5})
    with pytest.raises(ParameterError, match="max"):
        Vec2Face(**{**TINY, "train_masking": {"min": 0.8, "max": 0.5, "mu": 0.6, "sigma": 0.1}})
    with pytest.raises(ParameterError, match="preset"):
        build_vec2face("huge")
    model = tiny_model()
    with pytest.raises(DataError, match=r"\[B, 16\]"):
        model(torch.randn(2, 8))
    with pytest.raises(DataError, match="float"):
        model(torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(ParameterError, match="masking"):
        model(torch.randn(2, 16), masking="sometimes")


def test_config_round_trip_rebuilds_the_same_model():
    model = tiny_model()
    clone = Vec2Face(**model.config.model_dump())
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    x = torch.randn(2, 16)
    assert torch.equal(model(x, masking=None)["image"], clone(x, masking=None)["image"])


# --------------------------------------------------------------------------------------------------
# row masking
@pytest.mark.parametrize("n_rows", [16, 49])
def test_train_masking_drops_and_masks_the_specified_row_counts(n_rows):
    mask = sample_row_mask(64, n_rows, TRAIN_MASKING, seeded(0))
    n_drop = math.ceil(n_rows * 0.5)
    assert (mask.dropped.sum(1) == n_drop).all()
    assert mask.keep_index.shape == (64, n_rows - n_drop)
    assert ((mask.ratio >= 0.5) & (mask.ratio <= 1.0)).all()
    expected_masked = torch.ceil(n_rows * mask.ratio.double() - 1e-6).long()
    assert torch.equal(mask.masked.sum(1), expected_masked)
    assert not (mask.dropped & ~mask.masked).any(), "a dropped row must also count as masked"
    # kept indices are exactly the rows that are not dropped
    kept = torch.zeros_like(mask.dropped).scatter(1, mask.keep_index, True)
    assert torch.equal(kept, ~mask.dropped)
    # per-sample positions differ (the mask is a variation source, not a fixed pattern)
    assert len({tuple(row.tolist()) for row in mask.masked}) > 1


def test_mask_ratio_sampler_matches_the_truncated_normal():
    scipy_stats = pytest.importorskip("scipy.stats")
    for params in (TRAIN_MASKING, INFERENCE_MASKING):
        r = sample_mask_ratios(20000, params, seeded(3))
        a, b = (params.min - params.mu) / params.sigma, (params.max - params.mu) / params.sigma
        dist = scipy_stats.truncnorm(a, b, loc=params.mu, scale=params.sigma)
        assert abs(r.mean().item() - dist.mean()) < 0.01
        assert abs(r.std().item() - dist.std()) < 0.01
        assert r.min() >= params.min and r.max() <= params.max


def test_inference_masking_differs_from_train_masking():
    model = tiny_model()
    train = model.sample_row_mask(256, "train", seeded(0))
    infer = model.sample_row_mask(256, "inference", seeded(0))
    assert (train.dropped.sum(1) == 8).all()  # ceil(16 * 0.5)
    assert (infer.dropped.sum(1) == 2).all()  # ceil(16 * 0.1)
    assert train.masked.float().mean() > 0.6 > 0.4 > infer.masked.float().mean()
    none = model.sample_row_mask(4, None)
    assert not none.masked.any() and not none.dropped.any()
    assert model.sample_row_mask(4, True, seeded(0)).dropped.sum(1).eq(8).all()
    custom = model.sample_row_mask(4, {"min": 0.25, "max": 0.25, "mu": 0.25, "sigma": 0.1})
    assert (custom.masked.sum(1) == 4).all() and (custom.dropped.sum(1) == 4).all()


def test_token0_is_never_masked_and_masked_rows_carry_e():
    model = tiny_model().eval()
    x = torch.randn(4, 16)
    seen, handles = block_inputs(model.blocks)
    row_mask = model.sample_row_mask(4, "train", seeded(5))
    with torch.no_grad():
        model(x, masking=row_mask)
        e, grid = model.embed_vector(x)
        pos = model.pos_embed[0]
        token0_expected = model.embed_norm(e + pos[0])
        e_rows = model.embed_norm(e.unsqueeze(1) + pos[1:])  # what a masked row becomes
        own_rows = model.embed_norm(grid + pos[1:])  # what an unmasked row stays
    handles[0].remove()
    enc_in = seen[0]
    assert enc_in.shape == (4, 1 + 16 - 8, 32)  # token 0 + kept rows
    torch.testing.assert_close(enc_in[:, 0], token0_expected)
    for b in range(4):
        for slot, row in enumerate(row_mask.keep_index[b].tolist()):
            want = e_rows[b, row] if row_mask.masked[b, row] else own_rows[b, row]
            torch.testing.assert_close(enc_in[b, 1 + slot], want)


def test_decoder_fills_masked_rows_with_the_token0_output():
    model = tiny_model().eval()
    seen, handles = block_inputs(model.decoder_blocks)
    row_mask = model.sample_row_mask(3, "train", seeded(2))
    with torch.no_grad():
        model(torch.randn(3, 16), masking=row_mask)
    handles[0].remove()
    dec_in = seen[0] - model.decoder_pos_embed.detach()
    assert dec_in.shape == (3, 17, 32)
    for b in range(3):
        for row in range(16):
            same_as_token0 = torch.allclose(dec_in[b, 1 + row], dec_in[b, 0], atol=1e-6)
            assert same_as_token0 == bool(row_mask.masked[b, row])


def test_all_rows_masked_still_generates_from_the_vector():
    model = tiny_model().eval()
    everything = {"min": 1.0, "max": 1.0, "mu": 1.0, "sigma": 0.1}
    x = torch.randn(2, 16)
    with torch.no_grad():
        a = model(x, masking=everything)
        b = model(x * 2, masking=everything)
    assert a["mask"].all() and a["dropped"].all()
    assert not torch.allclose(a["image"], b["image"])


def test_unmasked_forward_keeps_every_row():
    model = tiny_model().eval()
    seen, handles = block_inputs(model.blocks)
    with torch.no_grad():
        out = model(torch.randn(2, 16), masking=None)
    handles[0].remove()
    assert seen[0].shape == (2, 17, 32)
    assert not out["mask"].any()


# --------------------------------------------------------------------------------------------------
# determinism and variation
def test_seeded_generator_makes_generation_deterministic():
    model = tiny_model().eval()
    x = torch.randn(4, 16)
    with torch.no_grad():
        a = model.generate(x, generator=seeded(11))
        b = model.generate(x, generator=seeded(11))
    assert torch.equal(a, b)


def test_different_masks_give_different_images_for_the_same_vector():
    model = tiny_model().eval()
    x = torch.randn(1, 16).expand(8, 16)
    with torch.no_grad():
        images = model.generate(x, generator=seeded(0))
    # 8 draws of the inference mask for one vector: the images are not all the same
    pairwise = (images[:, None] - images[None]).abs().flatten(2).amax(-1)
    assert pairwise.max() > 1e-4
    with torch.no_grad():
        c = model.generate(x[:1], generator=seeded(1))
        d = model.generate(x[:1], generator=seeded(2))
    assert not torch.equal(c, d)


def test_explicit_row_mask_is_reused_exactly():
    model = tiny_model().eval()
    x = torch.randn(3, 16)
    fixed = model.sample_row_mask(3, "inference", seeded(4))
    with torch.no_grad():
        assert torch.equal(model.generate(x, masking=fixed), model.generate(x, masking=fixed))
    wrong = RowMask(fixed.keep_index[:2], fixed.dropped[:2], fixed.masked[:2], fixed.ratio[:2])
    with pytest.raises(DataError, match="RowMask"):
        model(x, masking=wrong)


def test_generate_clamps_to_unit_range_and_keeps_autograd_for_attrop():
    model = tiny_model()
    with torch.no_grad():  # push the raw output outside [-1, 1]
        model.image_decoder.conv_out.bias.fill_(5.0)
    x = torch.randn(2, 16, requires_grad=True)
    images = model.generate(x, generator=seeded(0))
    assert images.min() >= -1 and images.max() <= 1
    raw = model(x.detach(), generator=seeded(0))["image"]
    assert raw.max() > 1
    with torch.no_grad():
        model.image_decoder.conv_out.bias.zero_()
    model.generate(x, generator=seeded(0)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# gradients and numerical safety
def test_gradients_reach_every_generator_parameter():
    model = tiny_model().train()
    out = model(torch.randn(6, 16), masking="train", generator=seeded(0))
    loss = out["image"].pow(2).mean() + F.mse_loss(out["tokens_pred"], out["tokens_target"])
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("scale", [0.0, 22.0 / 4, 1e4])
def test_no_nan_for_zero_raw_or_huge_norm_vectors(scale):
    # scale 0: the zero vector; 22/4: the raw-ArcFace norm (~22) for 16 dims; 1e4: absurd
    model = tiny_model().train()
    x = torch.randn(4, 16, generator=seeded(0)) * scale
    out = model(x, generator=seeded(0))
    loss = out["image"].pow(2).mean() + F.mse_loss(out["tokens_pred"], out["tokens_target"])
    loss.backward()
    assert torch.isfinite(out["image"]).all()
    assert torch.isfinite(out["tokens_pred"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(model.eval().generate(x)).all()


def test_fp32_transformer_runs_blocks_outside_autocast():
    x = torch.randn(2, 16)
    for fp32, want in ((True, torch.float32), (False, torch.bfloat16)):
        model = tiny_model(fp32_transformer=fp32).eval()
        seen, handles = block_inputs(model.blocks)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, generator=seeded(0))
        handles[0].remove()
        # the block's first matmul runs in the dtype it is given under autocast
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp32):
            assert model.blocks[0].attn.qkv(seen[0]).dtype == want
        assert torch.isfinite(out["image"].float()).all()


# --------------------------------------------------------------------------------------------------
# image decoder pieces
def test_resblock_shortcut_is_applied_to_the_input():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    widen = ResBlock(8, 16, norm_groups=4)
    keep = ResBlock(8, 8, norm_groups=4)
    with torch.no_grad():
        for block in (widen, keep):  # silence the residual branch
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        expected = F.conv2d(x, widen.shortcut.weight, widen.shortcut.bias)
        torch.testing.assert_close(widen(x), expected)
        torch.testing.assert_close(keep(x), x)


def test_masking_params_validation():
    with pytest.raises(ValueError):
        MaskingParams(min=0.5, max=0.4, mu=0.45, sigma=0.1)
    with pytest.raises(ValueError):
        MaskingParams(min=0.1, max=1.0, mu=0.15, sigma=0.0)


def test_mask_ratio_sampler_handles_intervals_far_in_either_tail():
    # the truncated normal piles up at the bound nearest the mean
    upper = sample_mask_ratios(100, MaskingParams(min=0.9, max=1.0, mu=0.0, sigma=0.01), seeded(0))
    lower = sample_mask_ratios(100, MaskingParams(min=0.0, max=0.1, mu=1.0, sigma=0.01), seeded(0))
    assert torch.isfinite(upper).all() and torch.isfinite(lower).all()
    assert upper.max() < 0.901 and lower.min() > 0.099
    tight = sample_mask_ratios(100, MaskingParams(min=0.3, max=0.3, mu=0.75, sigma=0.25))
    assert (tight == 0.3).all()


# --------------------------------------------------------------------------------------------------
# how the vector becomes the token grid
def test_channel_scale_grid_tokens_are_scaled_copies_of_e_and_per_token_ones_are_not():
    f = torch.randn(3, 16)
    paper = tiny_model()
    e, grid = paper.embed_vector(f)
    # channel_scale: token g = w_g * e + b_g, so every token is an affine function of e alone
    w = paper.grid_expand.weight[:, 0].view(1, -1, 1)
    b = paper.grid_expand.bias.view(1, -1, 1)
    assert torch.allclose(grid, w * e.unsqueeze(1) + b, atol=1e-6)
    per_token = tiny_model(grid_embed="per_token")
    e, grid = per_token.embed_vector(f)
    assert grid.shape == (3, per_token.num_rows, TINY["width"])
    # per_token: positions get different projections, so two tokens are not scaled copies of e
    cos = F.cosine_similarity(grid[:, 0], grid[:, 1], dim=1)
    assert (cos.abs() < 0.9).all(), cos


def test_per_token_grid_without_transformer_blocks_trains_end_to_end():
    model = tiny_model(grid_embed="per_token", depth=0, decoder_depth=0).train()
    out = model(torch.randn(4, 16), masking="train", generator=seeded(0))
    assert out["image"].shape == (4, 3, 16, 16)
    out["image"].pow(2).mean().backward()
    assert model.grid_expand.weight.grad.abs().sum() > 0
    with pytest.raises(ParameterError, match="grid_embed"):
        Vec2Face(**{**TINY, "grid_embed": "rows"})
