"""TopoFR random structure perturbation (RSP) tests."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.losses.perturbations import RSP_OPS, random_structure_perturbation


def images(b: int = 12, size: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(dtype)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_p_zero_is_identity():
    x = images()
    y, which = random_structure_perturbation(x, p=0.0, generator=gen(1))
    assert torch.equal(y, x)
    assert bool((which == -1).all())


def test_p_one_changes_every_sample():
    x = images(b=40)
    y, which = random_structure_perturbation(x, p=1.0, generator=gen(2))
    changed = (y != x).flatten(1).any(dim=1)
    assert bool(changed.all())
    assert bool((which >= 0).all()) and bool((which < len(RSP_OPS)).all())


def test_fraction_perturbed_is_about_p_and_ops_are_uniform():
    x = images(b=4000, size=6, seed=3)
    y, which = random_structure_perturbation(x, p=0.2, generator=gen(4))
    selected = which >= 0
    # binomial std for n=4000, p=0.2 is 0.0063: +-0.03 is ~5 std
    assert float(selected.float().mean()) == pytest.approx(0.2, abs=0.03)
    counts = torch.bincount(which[selected], minlength=4).float() / selected.sum()
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.06)
    # untouched samples are bit-identical, and which_op tells the truth
    assert torch.equal(y[~selected], x[~selected])


def test_deterministic_given_the_generator():
    x = images()
    a, wa = random_structure_perturbation(x, p=0.5, generator=gen(5))
    b, wb = random_structure_perturbation(x, p=0.5, generator=gen(5))
    c, wc = random_structure_perturbation(x, p=0.5, generator=gen(6))
    assert torch.equal(a, b) and torch.equal(wa, wb)
    assert not (torch.equal(a, c) and torch.equal(wa, wc))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_dtype_range_preserved(dtype):
    x = images(b=20, dtype=dtype)
    y, which = random_structure_perturbation(x, p=1.0, generator=gen(7))
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert which.shape == (20,) and which.dtype == torch.long
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0


def test_gray_gives_equal_channels_with_luma():
    x = images(b=6)
    y, which = random_structure_perturbation(x, p=1.0, generator=gen(8), ops=("gray",))
    assert bool((which == 0).all())
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        assert torch.allclose(y[:, c], luma, atol=1e-6)


def test_blur_matches_torchvision_gaussian_blur():
    x = images(b=5, size=20)
    y, _ = random_structure_perturbation(
        x, p=1.0, generator=gen(9), ops=("blur",), blur_kernel=(7, 7), blur_sigma=(1.5, 1.5)
    )
    ref = TF.gaussian_blur(x, kernel_size=[7, 7], sigma=[1.5, 1.5])
    assert torch.allclose(y, ref, atol=1e-5)


def test_blur_kernel_sizes_vary_within_range():
    # with a huge sigma the blur is a box filter of the drawn size: the centre pixel of an impulse
    # image is 1/k^2 for kernel size k
    x = torch.full((60, 3, 21, 21), -1.0)
    x[:, :, 10, 10] = 1.0
    y, _ = random_structure_perturbation(
        x, p=1.0, generator=gen(10), ops=("blur",), blur_kernel=(5, 9), blur_sigma=(1e4, 1e4)
    )
    centre = (y[:, 0, 10, 10] + 1) / 2  # back to [0, 1] space, where the impulse is 1
    sizes = torch.round(centre.reciprocal().sqrt()).long()
    assert set(sizes.tolist()) == {5, 7, 9}


def test_erase_fills_one_rectangle_of_the_requested_area():
    x = images(b=30, size=32, seed=11).clamp(min=0.05)  # no natural zeros
    y, _ = random_structure_perturbation(
        x, p=1.0, generator=gen(12), ops=("erase",), erase_scale=(0.1, 0.2)
    )
    erased = (y == 0).all(dim=1)  # [B, H, W]
    for mask in erased:
        rows = mask.any(dim=1).nonzero().squeeze(1)
        cols = mask.any(dim=0).nonzero().squeeze(1)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(mask.sum()) == int(box)  # a full rectangle
        assert 0.05 <= float(mask.float().mean()) <= 0.3  # area fraction, rounding allowed
    assert torch.equal(y[~erased.unsqueeze(1).expand_as(y)], x[~erased.unsqueeze(1).expand_as(x)])


def test_jitter_is_identity_at_zero_strength_and_matches_torchvision():
    x = images(b=4)
    y, _ = random_structure_perturbation(x, p=1.0, generator=gen(13), ops=("jitter",), jitter=0.0)
    assert torch.allclose(y, x, atol=1e-6)
    y, _ = random_structure_perturbation(x, p=1.0, generator=gen(13), ops=("jitter",), jitter=0.4)
    assert not torch.allclose(y, x, atol=1e-3)
    # brightness/contrast/saturation chain agrees with torchvision for fixed factors
    from face_pipelines.losses.perturbations import _color_jitter

    x01 = (x + 1) / 2
    f = torch.tensor([0.7, 1.3, 1.2, 0.9])
    ours = _color_jitter(x01, f, f.flip(0), f)
    for i in range(4):
        ref = TF.adjust_brightness(x01[i], float(f[i]))
        ref = TF.adjust_contrast(ref, float(f.flip(0)[i]))
        ref = TF.adjust_saturation(ref, float(f[i]))
        assert torch.allclose(ours[i], ref, atol=2e-3)


def test_rejects_bad_input():
    with pytest.raises(DataError, match=r"\[B, 3, H, W\]"):
        random_structure_perturbation(torch.zeros(2, 1, 8, 8))
    with pytest.raises(DataError, match="float"):
        random_structure_perturbation(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ParameterError, match="p"):
        random_structure_perturbation(torch.zeros(2, 3, 8, 8), p=1.5)
    with pytest.raises(ParameterError, match="ops"):
        random_structure_perturbation(torch.zeros(2, 3, 8, 8), ops=("rotate",))
    with pytest.raises(ParameterError, match="blur_kernel"):
        random_structure_perturbation(torch.zeros(2, 3, 8, 8), blur_kernel=(4, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_a_cpu_generator():
    x = images(b=32)
    cpu, w_cpu = random_structure_perturbation(x, p=0.7, generator=gen(14))
    gpu, w_gpu = random_structure_perturbation(x.cuda(), p=0.7, generator=gen(14))
    assert gpu.device.type == "cuda"
    assert torch.equal(w_gpu.cpu(), w_cpu)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
