"""Upstream's released generator (vec2face_generator.pth) loads into the project's Vec2Face and
computes the published forward; the project's own checkpoints still load; nothing else is unpickled.

The released layout is written here the way upstream's saver writes it, at a small size with the
exact key names. The reference forward is written from the published computation (the "as
published" facts), independently of the project's modules, so a wrong name mapping, a transposed
grid or the normal residual in place of upstream's ResBlock shows up as a numeric difference.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from face_pipelines.errors import DataError, MissingInputError, ParameterError
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.models import inference
from face_pipelines.models.vec2face import (
    VEC2FACE_PRESETS,
    ResBlock,
    Vec2Face,
    load_vec2face,
    released_config,
    released_state_dict,
)
from face_pipelines.params import validate_section
from face_pipelines.pipelines.vec2face.nodes import load_generator_checkpoint
from face_pipelines.synthesis.factory import load_generator

FIXTURE = Path(__file__).parents[1] / "fixtures" / "vec2face_release_generator_keys.json"

# Small released geometry: width 48 is divisible by the published 12 encoder and 16 decoder heads;
# a 3x3 grid (not symmetric under transposition); the published 5 levels, 2 ResBlocks each, with
# channel changes at up.1 and up.3; channels multiples of 32 for upstream's GroupNorm(32).
SMALL = dict(
    feat_dim=16, width=48, depth=2, decoder_depth=1, grid=3, z=8, ch=32, ch_mult=(1, 1, 2, 2, 4)
)


class NotAllowed:
    """A class no Vec2Face file may pickle."""


# --------------------------------------------------------------------------------------------------
# the released layout, as upstream's model names it
def released_shapes(
    feat_dim: int,
    width: int,
    depth: int,
    decoder_depth: int,
    grid: int,
    z: int,
    ch: int,
    ch_mult: tuple[int, ...],
    blocks: int = 2,
    mlp_ratio: int = 4,
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of upstream's generator state dict for a given size."""
    n = grid * grid
    s: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_dim: int, in_dim: int) -> None:
        s[f"{name}.weight"], s[f"{name}.bias"] = (out_dim, in_dim), (out_dim,)

    def norm(name: str, dim: int) -> None:
        s[f"{name}.weight"], s[f"{name}.bias"] = (dim,), (dim,)

    linear("latent_prior_proj_f", width, feat_dim)
    linear("feature_token", n, 1)
    linear("center_token", n, width)
    s["patch_embed.proj.weight"], s["patch_embed.proj.bias"] = (width, 3, 16, 16), (width,)
    s["token_emb.position_embeddings.weight"] = (n + 1, width)
    s["token_emb.position_ids"] = (1, n + 1)
    norm("token_emb.LayerNorm", width)
    for prefix, count in (("blocks", depth), ("decoder_blocks", decoder_depth)):
        for i in range(count):
            norm(f"{prefix}.{i}.norm1", width)
            linear(f"{prefix}.{i}.attn.qkv", 3 * width, width)
            linear(f"{prefix}.{i}.attn.proj", width, width)
            norm(f"{prefix}.{i}.norm2", width)
            linear(f"{prefix}.{i}.mlp.fc1", mlp_ratio * width, width)
            linear(f"{prefix}.{i}.mlp.fc2", width, mlp_ratio * width)
    norm("norm", width)
    linear("decoder_embed", width, width)
    s["decoder_pos_embed_learned"] = (1, n + 1, width)
    norm("decoder_norm", width)
    linear("im_decoder_proj", z, width)

    def res_block(name: str, c_in: int, c_out: int) -> None:
        norm(f"{name}.norm1", c_in)
        s[f"{name}.conv1.weight"] = (c_out, c_in, 3, 3)
        norm(f"{name}.norm2", c_out)
        s[f"{name}.conv2.weight"] = (c_out, c_out, 3, 3)
        if c_in != c_out:
            s[f"{name}.nin_shortcut.weight"] = (c_out, c_out, 1, 1)

    c = ch * ch_mult[-1]
    s["im_decoder.conv_in.weight"], s["im_decoder.conv_in.bias"] = (c, z, 3, 3), (c,)
    res_block("im_decoder.mid.block_1", c, c)
    res_block("im_decoder.mid.block_2", c, c)
    for level in reversed(range(len(ch_mult))):
        c_out = ch * ch_mult[level]
        for b in range(blocks):
            res_block(f"im_decoder.up.{level}.block.{b}", c, c_out)
            c = c_out
        if level:
            s[f"im_decoder.up.{level}.upsample.conv.weight"] = (c, c, 3, 3)
            s[f"im_decoder.up.{level}.upsample.conv.bias"] = (c,)
    norm("im_decoder.norm_out", c)
    s["im_decoder.conv_out.weight"], s["im_decoder.conv_out.bias"] = (3, c, 3, 3), (3,)
    return s


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights of plausible scale (the forward stays finite and input-dependent)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            sd[key] = torch.arange(shape[1]).expand(shape).contiguous()
        elif "norm" in key.lower():  # LayerNorm / GroupNorm affine: around identity
            base = 1.0 if key.endswith("weight") else 0.0
            sd[key] = base + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            if key.endswith(("pos_embed_learned", "position_embeddings.weight")):
                fan_in = 1.0 / 0.02**2
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return sd


def save_like_upstream(path: Path, generator_sd: dict[str, torch.Tensor]) -> Path:
    """What upstream's util/misc.py save_model writes: generator, discriminator, epoch, args."""
    torch.save(
        {
            "model_vec2face": generator_sd,
            "model_disc": {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.zeros(4)},
            "optimizer_g": {"state": {}, "param_groups": [{"lr": 4e-5, "params": [0, 1]}]},
            "epoch": 3,
            "args": argparse.Namespace(
                model="vec2face_vit_base_patch16", batch_size=32, lr=4e-5, mask=[0.1, 1.0]
            ),
        },
        path,
    )
    return path


# --------------------------------------------------------------------------------------------------
# the published forward, written from the facts (masking off: no row masked or dropped)
def _block(x: torch.Tensor, sd: dict, p: str, heads: int) -> torch.Tensor:
    b, n, w = x.shape
    h = F.layer_norm(x, (w,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], 1e-6)
    qkv = F.linear(h, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
    q, k, v = qkv.reshape(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) * (w // heads) ** -0.5, dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(b, n, w)
    x = x + F.linear(h, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
    h = F.layer_norm(x, (w,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], 1e-6)
    h = F.gelu(F.linear(h, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"]))
    return x + F.linear(h, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])


def _res_block(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    def gn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.group_norm(t, 32, sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"], 1e-6)

    h = F.conv2d(F.silu(gn(x, "norm1")), sd[f"{p}.conv1.weight"], padding=1)
    h = F.conv2d(F.silu(gn(h, "norm2")), sd[f"{p}.conv2.weight"], padding=1)
    if f"{p}.nin_shortcut.weight" in sd:  # upstream: the shortcut takes h, x is lost
        return F.conv2d(h, sd[f"{p}.nin_shortcut.weight"]) + h
    return x + h


def published_forward(sd: dict, f: torch.Tensor, heads=(12, 16)) -> torch.Tensor:
    b = f.shape[0]
    n = sd["feature_token.weight"].shape[0]
    g = math.isqrt(n)
    w = sd["latent_prior_proj_f.weight"].shape[0]
    e = F.linear(f, sd["latent_prior_proj_f.weight"], sd["latent_prior_proj_f.bias"])
    grid = F.linear(e[..., None], sd["feature_token.weight"], sd["feature_token.bias"])
    x = torch.cat([e[:, None], grid.permute(0, 2, 1)], dim=1)
    x = x + sd["token_emb.position_embeddings.weight"][sd["token_emb.position_ids"]]
    x = F.layer_norm(
        x, (w,), sd["token_emb.LayerNorm.weight"], sd["token_emb.LayerNorm.bias"], 1e-6
    )
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        x = _block(x, sd, f"blocks.{i}", heads[0])
    x = F.layer_norm(x, (w,), sd["norm.weight"], sd["norm.bias"], 1e-6)
    y = F.linear(x, sd["decoder_embed.weight"], sd["decoder_embed.bias"])
    y = y + sd["decoder_pos_embed_learned"]
    decoder_depth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    for i in range(decoder_depth):
        y = _block(y, sd, f"decoder_blocks.{i}", heads[1])
    y = F.layer_norm(y, (w,), sd["decoder_norm.weight"], sd["decoder_norm.bias"], 1e-6)
    t = y[:, 1:].reshape(b, g, g, w)
    z = F.linear(t, sd["im_decoder_proj.weight"], sd["im_decoder_proj.bias"]).permute(0, 3, 1, 2)
    h = F.conv2d(z, sd["im_decoder.conv_in.weight"], sd["im_decoder.conv_in.bias"], padding=1)
    h = _res_block(h, sd, "im_decoder.mid.block_1")
    h = _res_block(h, sd, "im_decoder.mid.block_2")
    levels = len({k.split(".")[2] for k in sd if k.startswith("im_decoder.up.")})
    for level in reversed(range(levels)):
        for blk in range(2):
            h = _res_block(h, sd, f"im_decoder.up.{level}.block.{blk}")
        if level:
            up = f"im_decoder.up.{level}.upsample.conv"
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.conv2d(h, sd[f"{up}.weight"], sd[f"{up}.bias"], padding=1)
    h = F.group_norm(h, 32, sd["im_decoder.norm_out.weight"], sd["im_decoder.norm_out.bias"], 1e-6)
    return F.conv2d(
        F.silu(h), sd["im_decoder.conv_out.weight"], sd["im_decoder.conv_out.bias"], padding=1
    )


@pytest.fixture(scope="module")
def released_small(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = random_weights(released_shapes(**SMALL))
    path = save_like_upstream(tmp_path_factory.mktemp("release") / "vec2face_generator.pth", sd)
    return path, sd


# --------------------------------------------------------------------------------------------------
def test_released_file_computes_the_published_forward(released_small):
    path, sd = released_small
    model = load_vec2face(path)
    assert not model.training
    assert model.config.shortcut_on_branch and not model.config.res_conv_bias
    assert (model.config.grid_size, model.image_size) == (3, 48)
    f = torch.randn(3, SMALL["feat_dim"], generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        want = published_forward(sd, f)
        got = model(f, masking=None)["image"]
        rendered = model.generate(f, masking=None)
        again = model.generate(f, masking=None)
    assert got.shape == (3, 3, 48, 48) and got.dtype == torch.float32
    assert want.std() > 0.05  # the comparison is not between two near-constant images
    assert (got - want).abs().max().item() <= 1e-4
    # generate(masking=None): deterministic, nothing masked, clamped as upstream's gen_image
    assert torch.equal(rendered, again)
    assert (rendered - want.clamp(-1, 1)).abs().max().item() <= 1e-4


def test_shortcut_on_branch_resblock_drops_the_input_path():
    torch.manual_seed(0)
    block = ResBlock(64, 32, norm_groups=32, conv_bias=False, shortcut_on_branch=True)
    assert block.conv1.bias is None and block.shortcut.weight.shape == (32, 32, 1, 1)
    x = torch.randn(2, 64, 5, 5)
    with torch.no_grad():
        h = block.conv2(F.silu(block.norm2(block.conv1(F.silu(block.norm1(x))))))
        torch.testing.assert_close(block(x), F.conv2d(h, block.shortcut.weight) + h)
    # a block that keeps its channels is the plain residual either way
    keep = ResBlock(32, 32, norm_groups=32, shortcut_on_branch=True)
    with torch.no_grad():
        keep.conv2.weight.zero_()
        keep.conv2.bias.zero_()
        torch.testing.assert_close(keep(h), h)


def test_stripped_release_and_overridden_heads_load(tmp_path, released_small):
    _, sd = released_small
    bare = tmp_path / "bare.pth"
    torch.save({"model_vec2face": sd}, bare)
    f = torch.randn(2, SMALL["feat_dim"]) * 4
    with torch.no_grad():
        want = published_forward(sd, f, heads=(4, 6))
        model = load_vec2face(bare, config_overrides={"num_heads": 4, "decoder_num_heads": 6})
        assert (model(f, masking=None)["image"] - want).abs().max().item() <= 1e-4


def test_unknown_pickled_object_is_refused_with_a_clear_error(tmp_path, released_small):
    _, sd = released_small
    path = tmp_path / "evil.pth"
    torch.save({"model_vec2face": sd, "args": NotAllowed()}, path)
    with pytest.raises(DataError, match=r"evil\.pth.*refused.*NotAllowed.*model_vec2face"):
        load_vec2face(path)
    inside = tmp_path / "namespace_with_object.pth"
    torch.save({"model_vec2face": sd, "args": argparse.Namespace(hook=NotAllowed())}, inside)
    with pytest.raises(DataError, match="refused"):
        load_vec2face(inside)


def test_wrong_or_missing_files_name_the_file_and_the_layouts(tmp_path):
    with pytest.raises(MissingInputError, match="nowhere.pth"):
        load_vec2face(tmp_path / "nowhere.pth")
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(DataError, match=r"other\.pth.*'model_vec2face'"):
        load_vec2face(other)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="corrupt"):
        load_vec2face(corrupt)
    odd = tmp_path / "odd_keys.pth"
    sd = random_weights(released_shapes(**SMALL))
    sd["im_decoder.mid.attn_1.q.weight"] = torch.zeros(1)
    torch.save({"model_vec2face": sd}, odd)
    with pytest.raises(DataError, match="attn_1"):
        load_vec2face(odd)


def test_project_checkpoint_still_loads(tmp_path):
    torch.manual_seed(0)
    config = dict(VEC2FACE_PRESETS["default"], feat_dim=16, ch=8)
    model = Vec2Face(**config).eval()
    stored = {k: v for k, v in model.config.model_dump().items()}
    # written before res_conv_bias / shortcut_on_branch existed: their defaults apply
    del stored["res_conv_bias"], stored["shortcut_on_branch"]
    path = save_checkpoint(
        tmp_path / "model.pt", "vec2face", stored, model.state_dict(), meta={"epoch": 1}
    )
    f = torch.randn(2, 16)
    with torch.no_grad():
        want = model(f, masking=None)["image"]
        for load in (load_vec2face, inference.load_vec2face):
            loaded = load(path)
            assert not loaded.training and loaded.config == model.config
            torch.testing.assert_close(loaded(f, masking=None)["image"], want)


def test_full_size_release_maps_completely_without_allocating():
    published = {k: tuple(v) for k, v in json.loads(FIXTURE.read_text()).items()}
    assert len(published) == 349
    # the layout written by this test file is the published one at any size
    assert set(released_shapes(512, 768, 12, 8, 7, 256, 128, (1, 1, 2, 2, 4))) == set(published)
    meta = {
        k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("_ids") else torch.float32)
        for k, s in published.items()
    }
    config = released_config(meta)
    paper = dict(VEC2FACE_PRESETS["paper"])
    assert config == {
        **paper,
        "num_res_blocks": (2, 2, 2, 2, 2),
        "res_conv_bias": False,
        "shortcut_on_branch": True,
        "fp32_transformer": True,
    }
    mapped = released_state_dict(meta, config["num_res_blocks"])
    with torch.device("meta"):
        model = Vec2Face(**config)
    own = model.state_dict()
    assert set(mapped) == set(own)  # every project tensor filled, none left over
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: tuple(v.shape) for k, v in own.items()
    }
    # every released key was consumed: the unused modules and the position lookup aside,
    # one released tensor per project tensor
    unused = [k for k in published if k.startswith(("center_token.", "patch_embed."))]
    assert len(published) - len(unused) - 2 + 1 == len(mapped)
    model.load_state_dict(mapped, strict=True, assign=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert 173e6 < n_params < 174.2e6


# --------------------------------------------------------------------------------------------------
# pipeline: vec2face.source=checkpoint
def test_checkpoint_source_writes_the_report_render_reads(tmp_path, released_small):
    path, sd = released_small
    feats = np.random.default_rng(0).normal(size=(5, SMALL["feat_dim"])).astype(np.float32) * 4
    report = load_generator_checkpoint(str(path), feats, tmp_path / "grids", device="cpu")
    assert report["checkpoint"] == str(path) and report["source"] == "checkpoint"
    assert report["image_size"] == 48 and report["config"]["shortcut_on_branch"] is True
    json.dumps(report)  # the catalog stores it as JSON
    # rows: unmasked, two inference-masking draws; 2 px padding around 48 px tiles
    assert Image.open(report["grid"]).size == (5 * 50 + 2, 3 * 50 + 2)
    # what the render stage does with the report
    gen = load_generator(report["checkpoint"], "cpu")
    f = torch.from_numpy(feats)
    with torch.no_grad():
        want = published_forward(sd, f).clamp(-1, 1)
        assert (gen.generate(f, masking=None) - want).abs().max().item() <= 1e-4


def test_checkpoint_source_names_the_parameter_and_the_file(tmp_path, released_small):
    feats = np.zeros((2, SMALL["feat_dim"]), np.float32)
    for value in (None, str(tmp_path / "missing.pth")):
        with pytest.raises(MissingInputError) as err:
            load_generator_checkpoint(value, feats, tmp_path, device="cpu")
        message = str(err.value)
        assert "vec2face.checkpoint" in message and "vec2face_generator.pth" in message
        assert "\n" not in message
    with pytest.raises(ParameterError, match="teacher"):
        load_generator_checkpoint(str(released_small[0]), np.zeros((2, 7)), tmp_path, "cpu")


def test_vec2face_source_parameters_are_validated():
    p = validate_section("vec2face", {"source": "checkpoint", "checkpoint": "/models/g.pth"})
    assert (p.source, p.checkpoint) == ("checkpoint", "/models/g.pth")
    assert validate_section("vec2face", {}).source == "train"
    with pytest.raises(ParameterError, match="vec2face.source"):
        validate_section("vec2face", {"source": "released"})
