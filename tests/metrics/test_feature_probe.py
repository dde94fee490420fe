"""Identity-disjoint linear probes (metrics.feature_probe) on synthetic features with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.metrics.feature_probe import (
    attribute_kind,
    balanced_accuracy,
    identity_folds,
    probe_features,
    probe_headline,
    probe_summary,
)
from face_pipelines.params import validate_section
from face_pipelines.reporting.dataset_card import add_feature_probe, card_summary
from tests.cards import minimal_card

N_IDS, PER_ID, DIM = 40, 10, 16


def _world(seed: int = 0):
    """Features = identity code + per-image signal; manifest with attributes of known relation."""
    rng = np.random.default_rng(seed)
    identity = np.repeat(np.arange(N_IDS), PER_ID)
    n = len(identity)
    id_code = rng.standard_normal((N_IDS, DIM))
    image_part = rng.standard_normal((n, DIM))
    features = id_code[identity] + image_part
    w = rng.standard_normal(DIM)
    manifest = pd.DataFrame(
        {
            "path": [f"{i:06d}/{k:03d}.jpg" for i in range(N_IDS) for k in range(PER_ID)],
            "identity": identity,
            # a linear function of the features + noise: carried
            "yaw": 30.0 * (features @ w) / np.linalg.norm(w) + rng.normal(0, 6.0, n),
            # independent of the features: not carried
            "blur": rng.standard_normal(n),
            # separable by a linear rule on the features
            "glasses": (features[:, 0] + 0.05 * rng.standard_normal(n)) > 0,
            # random labels
            "hat": rng.random(n) < 0.3,
            # real face sets have no labels
            "age": np.full(n, np.nan),
        }
    )
    return features.astype(np.float32), manifest


def test_folds_are_identity_disjoint_balanced_and_deterministic():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(23), rng.integers(3, 9, 23))
    fold = identity_folds(ids, 5)
    for i in np.unique(ids):
        assert len(np.unique(fold[ids == i])) == 1
    sizes = np.bincount(fold, minlength=5)
    assert sizes.max() - sizes.min() <= 8
    assert all(len(np.unique(ids[fold == f])) >= 2 for f in range(5))
    np.testing.assert_array_equal(fold, identity_folds(ids, 5))


def test_too_few_identities_per_fold_is_a_clear_error():
    with pytest.raises(DataError, match="only 6 identities.*at least 10"):
        identity_folds(np.repeat(np.arange(6), 4), 5)
    # one identity holding most images leaves a fold with a single identity
    with pytest.raises(DataError, match="holds 1 identity"):
        identity_folds(np.concatenate([np.zeros(100), np.repeat(np.arange(1, 5), 2)]), 2)


def test_linear_attribute_is_carried_independent_one_is_not():
    features, manifest = _world()
    section = probe_features(features, manifest, folds=5)
    yaw, blur = section["probes"]["yaw"], section["probes"]["blur"]
    assert yaw["kind"] == "continuous" and yaw["r2"] > 0.85
    assert yaw["mae"] < 0.4 * yaw["target_std"]
    assert yaw["images_abs_gt_30"] > 0 and yaw["mae_abs_gt_30"] is not None
    assert blur["r2"] < 0.05
    assert section["identities"] == N_IDS and section["feature_dim"] == DIM


def test_binary_probe_separable_vs_random_labels():
    features, manifest = _world()
    section = probe_features(features, manifest, folds=5)
    glasses, hat = section["probes"]["glasses"], section["probes"]["hat"]
    assert glasses["kind"] == "binary" and glasses["balanced_accuracy"] > 0.9
    assert abs(hat["balanced_accuracy"] - 0.5) < 0.08
    assert hat["chance"] == 0.5 and 0.2 < hat["positive_rate"] < 0.4


def test_identity_constant_attribute_is_not_read_off_the_identity():
    """Features = identity code only, attribute a fixed random value per identity: a probe whose
    test folds shared identities with training would fit it (the feature names the person); with
    identity-disjoint folds the test identities are unseen and nothing generalises."""
    rng = np.random.default_rng(3)
    n_ids, per_id, dim = 60, 8, 64
    identity = np.repeat(np.arange(n_ids), per_id)
    features = rng.standard_normal((n_ids, dim))[identity]
    manifest = pd.DataFrame(
        {
            "path": [f"{i}" for i in range(len(identity))],
            "identity": identity,
            "age": rng.uniform(20, 70, n_ids)[identity],
        }
    )
    section = probe_features(features, manifest, folds=5, ridge_alpha=1e-3)
    assert section["probes"]["age"]["r2"] < 0.1
    # the same probe with identities shared across folds reads it off the identity
    leaky = manifest.assign(identity=np.arange(len(identity)) % n_ids)
    assert probe_features(features, leaky, folds=5, ridge_alpha=1e-3)["probes"]["age"]["r2"] > 0.9


def test_null_constant_and_text_columns_are_skipped_with_reasons():
    features, manifest = _world()
    manifest = manifest.assign(light="sun", bg_pattern=3)
    section = probe_features(features, manifest, folds=5)
    assert section["skipped"]["age"] == "all values null (no labels)"
    assert section["skipped"]["light"].startswith("not numeric")
    assert section["skipped"]["bg_pattern"].startswith("constant")
    assert "path" not in section["skipped"] and "identity" not in section["probes"]
    assert section["ran"] == ["yaw", "blur", "glasses", "hat"]


def test_partly_labelled_column_uses_its_labelled_rows_and_too_few_identities_skip():
    features, manifest = _world()
    yaw = manifest["yaw"].where(manifest["identity"] < 30)
    smile = manifest["glasses"].where(manifest["identity"] < 6)
    section = probe_features(features, manifest.assign(yaw=yaw, smile=smile), folds=5)
    assert section["probes"]["yaw"]["images"] == 30 * PER_ID
    assert section["probes"]["yaw"]["identities"] == 30
    assert "only 6 identities" in section["skipped"]["smile"]


def test_categorical_probe_chance_and_attribute_kinds():
    features, manifest = _world()
    expression = (manifest["yaw"].rank(pct=True) * 3).clip(upper=2.99).astype("int16")
    section = probe_features(features, manifest.assign(expression=expression), folds=5)
    expr = section["probes"]["expression"]
    assert expr["kind"] == "categorical" and expr["classes"] == 3
    assert expr["chance"] == pytest.approx(1 / 3) and expr["balanced_accuracy"] > 0.7
    assert attribute_kind(pd.Series([0.0, 1.0, None]))[0] == "binary"
    assert attribute_kind(pd.Series(np.arange(40, dtype=np.int16)))[0] == "continuous"


def test_subsample_attributes_selection_and_determinism():
    features, manifest = _world()
    a = probe_features(features, manifest, attributes=["yaw"], max_images=250, seed=1)
    b = probe_features(features, manifest, attributes=["yaw"], max_images=250, seed=1)
    assert a == b
    assert a["images"] == 250 and a["images_total"] == len(manifest) and a["ran"] == ["yaw"]
    with pytest.raises(DataError, match="not columns of the manifest"):
        probe_features(features, manifest, attributes=["roll"])
    with pytest.raises(DataError, match="do not match"):
        probe_features(features[:-1], manifest)


def test_headline_and_summary():
    features, manifest = _world()
    section = probe_features(features, manifest, folds=5)
    head = probe_headline(section)
    assert {"yaw.r2", "yaw.mae", "yaw.mae_abs_gt_30", "glasses.balanced_accuracy"} <= set(head)
    assert all(isinstance(v, float) for v in head.values())
    line = probe_summary(section)
    assert line.startswith("yaw R^2") and "glasses bal.acc" in line
    assert probe_summary({"probes": {}, "skipped": {"age": "all values null"}}).startswith("no")


def test_balanced_accuracy_is_mean_recall():
    y = np.array([0, 0, 0, 0, 1])
    assert balanced_accuracy(y, np.zeros(5, int)) == 0.5
    assert balanced_accuracy(y, y) == 1.0


def test_card_copies_the_section_and_summarises_it():
    features, manifest = _world()
    section = probe_features(features, manifest, folds=5)
    card = minimal_card()
    assert add_feature_probe(card, {"ssim_mean": 0.5}) is card  # an older report: nothing to copy
    out = add_feature_probe(card, {"feature_probe": section})
    assert out["feature_probe"] == section and "feature_probe" not in card
    assert "teacher features carry: yaw R^2" in card_summary(out)


def test_probe_parameters_are_validated():
    p = validate_section("vec2face", {"probe": {"folds": 3, "max_images": 500}})
    assert p.probe.enabled and p.probe.folds == 3 and p.probe.ridge_alpha == 1.0
    assert p.probe.attributes is None
    for bad in ({"folds": 1}, {"ridge_alpha": 0}, {"max_images": 0}, {"fold": 5}):
        with pytest.raises(ParameterError, match="vec2face.probe"):
            validate_section("vec2face", {"probe": bad})


def test_vec2face_node_writes_the_section_and_logs_headline_metrics(tmp_path, monkeypatch):
    """The node's probe path, with training and model loading stubbed out."""
    import inspect

    from PIL import Image

    from face_pipelines.pipelines.vec2face import nodes

    grid = tmp_path / "grid.png"
    Image.new("RGB", (8, 8)).save(grid)
    monkeypatch.setattr(nodes, "train_vec2face", lambda *a, **k: {"grid": str(grid), "ssim": 0.5})
    monkeypatch.setattr(nodes, "load_recognizer", lambda *a, **k: (None, 32))
    monkeypatch.setattr(nodes, "load_judge", lambda *a, **k: None)
    monkeypatch.setattr(nodes, "load_pose_regressor", lambda *a, **k: None, raising=False)
    features, manifest = _world()
    inputs = {
        "teacher_features": features,
        "subset_packed_manifest": manifest,
        "vec2face": {"probe": {"folds": 4}},
        "teacher": {},
        "common": {"progress": False},
    }

    def run_node():
        # Inputs by name: the other inputs (summaries, folders) only reach the stubs.
        names = inspect.signature(nodes.train_generator).parameters
        other = {"checkpoint": "unused"}
        return nodes.train_generator(
            **{n: inputs.get(n, other if n.endswith("summary") else tmp_path) for n in names}
        )

    report, _, metrics = run_node()
    assert report["feature_probe"]["method"]["folds"] == 4
    assert report["feature_probe"]["ran"] == ["yaw", "blur", "glasses", "hat"]
    assert (
        metrics["probe.yaw.r2"][0]["value"] > 0.85 and "probe.glasses.balanced_accuracy" in metrics
    )
    inputs["vec2face"] = {"probe": {"enabled": False}}
    report, _, metrics = run_node()
    assert report["feature_probe"] == {"enabled": False}
    assert not any(k.startswith("probe.") for k in metrics)
