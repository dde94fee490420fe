"""Renderer: determinism, purity, pose geometry and alignment."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipelines.faceworld import (
    ARCFACE_TEMPLATE_112,
    IDENTITY_FIELDS,
    NUISANCE_FIELDS,
    NuisanceConfig,
    render_identity_images,
    sample_identities,
    sample_nuisances,
)


def _world(seed: int, n: int, **nuisance_overrides):
    ids = sample_identities(np.random.default_rng(seed), n)
    nz = sample_nuisances(
        np.random.default_rng(seed + 1000), n, NuisanceConfig(**nuisance_overrides), ids
    )
    return ids, nz


def _controlled(nz: dict, **values) -> dict:
    """A copy of nuisances with quality/alignment noise removed and some fields set."""
    nz = {k: v.copy() for k, v in nz.items()}
    for k in ("blur", "noise", "align_dx", "align_dy", "align_scale", "align_rot", "roll", "pitch"):
        nz[k][:] = 0
    nz["hat"][:] = False
    for k, v in values.items():
        nz[k][:] = v
    return nz


def test_same_inputs_same_pixels_and_different_seeds_differ():
    ids, nz = _world(0, 12)
    a = render_identity_images(ids, nz, size=32)
    b = render_identity_images(ids, nz, size=32)
    assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    ids2, nz2 = _world(1, 12)
    c = render_identity_images(ids2, nz2, size=32)
    # every image of another seed differs clearly, not by a pixel or two
    diff = np.abs(a.astype(int) - c.astype(int)).mean(axis=(1, 2, 3))
    assert (diff > 5).all()


def test_image_does_not_depend_on_its_batch():
    ids, nz = _world(2, 9, hat_prob=0.5, yaw_tail_fraction=0.5, noise_prob=1.0, blur_prob=0.5)
    whole = render_identity_images(ids, nz, size=32, batch_size=9)
    chunked = render_identity_images(ids, nz, size=32, batch_size=4)
    single = render_identity_images(ids[5:6], {k: v[5:6] for k, v in nz.items()}, size=32)
    np.testing.assert_array_equal(whole, chunked)
    np.testing.assert_array_equal(whole[5], single[0])


def test_identity_and_nuisance_both_change_the_image():
    ids, nz = _world(3, 2)
    same_nuis = {k: np.repeat(v[:1], 2) for k, v in nz.items()}
    imgs = render_identity_images(ids, same_nuis, size=32)  # two people, same photo conditions
    assert np.abs(imgs[0].astype(int) - imgs[1]).mean() > 3
    one_id = np.repeat(ids[:1], 2, axis=0)
    imgs = render_identity_images(one_id, nz, size=32)  # one person, two photos
    assert np.abs(imgs[0].astype(int) - imgs[1]).mean() > 3


def test_frontal_landmarks_sit_on_the_insightface_template():
    ids, nz = _world(4, 6)
    nz = _controlled(nz, yaw=0.0)
    _, info = render_identity_images(ids, nz, size=112, return_info=True)
    err = np.abs(info["landmarks"] - ARCFACE_TEMPLATE_112[None]).max(axis=2)
    # identity geometry differs from the template, so the least-squares fit leaves a few pixels
    assert err.mean() < 3.0 and err.max() < 8.0
    assert info["landmark_visible"].all()


@pytest.mark.parametrize("yaw, hidden, shown", [(70.0, 1, 0), (-70.0, 0, 1)])
def test_profile_hides_the_far_eye_and_half_the_face(yaw, hidden, shown):
    ids, nz = _world(5, 6)
    front = _controlled(nz, yaw=0.0)
    turned = _controlled(nz, yaw=yaw)
    _, fi = render_identity_images(ids, front, size=64, return_info=True)
    _, ti = render_identity_images(ids, turned, size=64, return_info=True)
    assert not ti["landmark_visible"][:, hidden].any()  # the far eye is occluded by the head
    assert ti["landmark_visible"][:, shown].all()
    assert fi["landmark_visible"][:, :2].all()

    def side_fraction(info):
        # face-mask pixels on the far-eye side of the nose tip
        nose_x = info["landmarks"][:, 2, 0]
        cols = np.arange(64)[None, None, :]
        far = cols > nose_x[:, None, None] if hidden == 1 else cols < nose_x[:, None, None]
        m = info["face_mask"]
        return (m & far).sum(axis=(1, 2)) / m.sum(axis=(1, 2))

    assert (side_fraction(fi) > 0.35).all()
    assert (side_fraction(ti) < 0.15).all()


def test_render_validates_its_inputs():
    ids, nz = _world(6, 3)
    with pytest.raises(ValueError, match="identities"):
        render_identity_images(ids[:, :5], nz, size=32)
    bad = dict(nz)
    bad.pop("yaw")
    with pytest.raises(ValueError, match="yaw"):
        render_identity_images(ids, bad, size=32)
    short = {k: v[:2] for k, v in nz.items()}
    with pytest.raises(ValueError, match="rows"):
        render_identity_images(ids, short, size=32)


def test_field_lists_match_sampled_data():
    ids, nz = _world(7, 4)
    assert ids.shape == (4, len(IDENTITY_FIELDS)) and np.isfinite(ids).all()
    assert set(nz) == set(NUISANCE_FIELDS)
    for k, t in NUISANCE_FIELDS.items():
        assert nz[k].dtype == t
