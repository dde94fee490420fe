"""Config validation and the identity / nuisance samplers."""

from __future__ import annotations

import numpy as np
import pytest

from face_pipelines.errors import ParameterError
from face_pipelines.faceworld import (
    FaceWorldConfig,
    NuisanceConfig,
    config_hash,
    load_faceworld_config,
    plan_pool,
    sample_identities,
    sample_nuisances,
)
from face_pipelines.faceworld.config import EvalConfig, PoseProtocol


def test_defaults_are_valid_and_every_field_is_described():
    cfg = FaceWorldConfig()
    assert cfg.image_size == 64 and cfg.pretrain.n_ids > 0 and cfg.train.n_ids > 0

    def walk(model_cls):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{model_cls.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(FaceWorldConfig)


def test_unknown_key_error_names_the_key():
    with pytest.raises(ParameterError, match=r"faceworld\.train\.nuisances\.yaw_stdd"):
        load_faceworld_config({"train": {"n_ids": 5, "nuisances": {"yaw_stdd": 3}}})


def test_bad_value_error_names_the_key():
    with pytest.raises(ParameterError, match=r"faceworld\.image_size"):
        load_faceworld_config({"image_size": "big"})
    with pytest.raises(ParameterError, match=r"faceworld\.pretrain\.n_ids"):
        load_faceworld_config({"pretrain": {"n_ids": 0}})
    with pytest.raises(ParameterError, match="jpeg_quality"):
        load_faceworld_config({"eval": {"nuisances": {"jpeg_quality": [90, 40]}}})


def test_cross_field_rules():
    with pytest.raises(ValueError, match="profile_yaw_deg"):
        PoseProtocol(frontal_max_yaw_deg=30, profile_yaw_deg=(20, 60))
    with pytest.raises(ValueError, match="n_ids"):
        EvalConfig(n_ids=10)  # 10 folds need >= 20 identities


def test_hash_follows_the_config():
    a = FaceWorldConfig()
    assert config_hash(a) == config_hash(FaceWorldConfig())
    assert config_hash(a) != config_hash(FaceWorldConfig(seed=1))
    assert config_hash(a) != config_hash(load_faceworld_config({"train": {"n_ids": 999}}))


def test_identity_sampling_is_seeded_and_diverse():
    a = sample_identities(np.random.default_rng(0), 50)
    b = sample_identities(np.random.default_rng(0), 50)
    c = sample_identities(np.random.default_rng(1), 50)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len(np.unique(a, axis=0)) == 50
    narrow = sample_identities(np.random.default_rng(0), 200, diversity=0.3)
    wide = sample_identities(np.random.default_rng(0), 200, diversity=1.0)
    assert narrow.std(0).sum() < wide.std(0).sum()


def test_train_pose_is_mostly_frontal_with_a_thin_tail():
    nz = sample_nuisances(np.random.default_rng(0), 20000, NuisanceConfig())
    yaw = np.abs(nz["yaw"])
    assert yaw.max() <= 75.0 and np.abs(nz["pitch"]).max() <= 30.0
    assert (yaw < 30).mean() > 0.8
    assert 0.01 < (yaw > 60).mean() < 0.05
    assert nz["jpeg_quality"].min() >= 35 and nz["jpeg_quality"].max() <= 95
    assert 0.1 < nz["smile"].mean() < 0.6


def test_identity_linked_nuisances_follow_the_identity():
    ids = sample_identities(np.random.default_rng(0), 400)
    rows = np.repeat(ids, 20, axis=0)
    nz = sample_nuisances(
        np.random.default_rng(1), len(rows), NuisanceConfig(age_spread_years=3), rows
    )
    from face_pipelines.faceworld.identity import IDENTITY_INDEX

    base = rows[:, IDENTITY_INDEX["base_age"]]
    assert np.corrcoef(base, nz["age"])[0, 1] > 0.95
    never = rows[:, IDENTITY_INDEX["beard_propensity"]] == 0
    assert not nz["beard"][never].any() and nz["beard"][~never].mean() > 0.3


def test_train_pool_images_per_identity_are_long_tailed():
    plan = plan_pool(FaceWorldConfig(), "train")
    c = plan.counts
    assert c.min() >= 5 and c.max() <= 60
    assert 12 <= np.median(c) <= 18
    assert c.mean() > np.median(c)  # right-skewed
    assert len(plan.image_identity) == c.sum()


def test_partial_yaml_override_keeps_each_pools_defaults():
    cfg = load_faceworld_config(
        {"pretrain": {"n_ids": 8}, "train": {"nuisances": {"hat_prob": 0.2}}}
    )
    assert cfg.pretrain.n_ids == 8
    assert cfg.pretrain.images_per_identity.min == cfg.pretrain.images_per_identity.max == 32
    assert cfg.train.n_ids == FaceWorldConfig().train.n_ids
    assert cfg.train.nuisances.hat_prob == 0.2
    assert cfg.train.nuisances.yaw_max_deg == NuisanceConfig().yaw_max_deg
