"""The JPEG data path: a set read from its JPEGs (decoded in loader workers) gives the same batches as
its packed copy, a corrupt JPEG is skipped, counted and reported, and the size rule picks the format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.io.encoded import EncodedImages, open_image_set, write_encoded_index
from face_pipelines.io.packed import PackedImages
from face_pipelines.io.subset import pack_subset
from face_pipelines.params import validate_section
from face_pipelines.pipelines.recognizer.nodes import build_synthetic_training_set
from face_pipelines.training.data import (
    AugmentationConfig,
    EncodedFaceDataset,
    PackedFaceDataset,
    choose_training_format,
    make_loader,
    read_skip_log,
)
from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

from ..io.test_encoded import write_identity_folders

CONF = Path(__file__).resolve().parents[2] / "conf" / "base"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same 40 JPEGs (32 px, 4 identities) as identity folders and as a packed copy."""
    tmp = tmp_path_factory.mktemp("jpeg_path")
    root = tmp / "synthetic"
    manifest = write_identity_folders(root, n_ids=4, per_id=10, size=32)
    pack_subset(manifest, tmp / "packed", 32, shard_size=16, folder_root=root, progress=False)
    return root, manifest, PackedImages(tmp / "packed")


def epoch(dataset, workers: int, epoch_no: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = make_loader(dataset, batch_size=8, seed=5, num_workers=workers, drop_last=False)
    loader.sampler.set_epoch(epoch_no)
    return list(loader)


def test_jpeg_batches_equal_packed_batches_with_workers(sets, tmp_path):
    root, manifest, packed = sets
    encoded = EncodedImages.from_folder(root, manifest["path"], manifest["identity"], 32)
    aug = AugmentationConfig.hsface()
    reference = epoch(PackedFaceDataset(packed, aug), workers=0)
    jpeg = EncodedFaceDataset(encoded, aug, skip_log_dir=tmp_path / "skips")
    for workers in (0, 2):  # decoded in the training process, then in two worker processes
        batches = epoch(jpeg, workers)
        assert len(batches) == len(reference) == 5
        for (images, labels), (ref_images, ref_labels) in zip(batches, reference, strict=True):
            assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32)
            assert torch.equal(images, ref_images)  # same pixels, same augmentation draws
            assert torch.equal(labels, ref_labels)
    assert read_skip_log(tmp_path / "skips") == {"skipped": 0, "items": []}


@pytest.fixture(scope="module")
def broken(sets, tmp_path_factory):
    """A copy of the set whose image 13 is truncated mid-scan; returns (root, the bad file)."""
    root, manifest, _ = sets
    broken = tmp_path_factory.mktemp("broken")
    for rel in manifest["path"]:
        (broken / rel).parent.mkdir(parents=True, exist_ok=True)
        (broken / rel).write_bytes((root / rel).read_bytes())
    bad = broken / manifest["path"].iat[13]
    bad.write_bytes(bad.read_bytes()[:300])
    return broken, bad


def test_a_corrupt_jpeg_is_skipped_counted_and_reported(sets, broken, tmp_path):
    _, manifest, _ = sets
    broken, bad = broken
    encoded = EncodedImages.from_folder(broken, manifest["path"], manifest["identity"], 32)
    dataset = EncodedFaceDataset(encoded, skip_log_dir=tmp_path / "skips")
    for epoch_no in (0, 1):  # seen twice, listed once
        batches = epoch(dataset, workers=2, epoch_no=epoch_no)
        assert sum(len(labels) for _, labels in batches) == len(manifest) - 1
        labels = torch.cat([labels for _, labels in batches])
        assert int((labels == manifest["identity"].iat[13]).sum()) == 9
    report = read_skip_log(tmp_path / "skips")
    assert report["skipped"] == 1
    assert report["items"][0]["item"] == 13 and report["items"][0]["source"] == str(bad)
    assert "corrupt or truncated" in report["items"][0]["error"]


def test_jpeg_training_matches_packed_training_and_reports_skips(sets, broken, tmp_path, caplog):
    root, manifest, packed = sets
    cfg = RecognizerConfig(
        arch="small",
        embedding_dim=16,
        backbone_kwargs={"widths": [8, 8, 16, 16], "stem_width": 8},
        epochs=1,
        batch_size=8,
        num_workers=0,
        augment={"flip_prob": 0.5, "crop_prob": 0.3},
    )
    write_encoded_index(
        tmp_path / "jpeg_set",
        EncodedImages.from_folder(root, manifest["path"], manifest["identity"], 32),
    )
    a = train_recognizer(packed.root, tmp_path / "a", cfg, "cpu", False)
    b = train_recognizer(tmp_path / "jpeg_set", tmp_path / "b", cfg, "cpu", False)
    # The same numbers whichever way the set is stored: losses, accuracy and the weights.
    assert a["final"]["epoch/loss"] == b["final"]["epoch/loss"]
    assert a["final"]["epoch/accuracy"] == b["final"]["epoch/accuracy"]
    wa, wb = (load_checkpoint(s["checkpoint"])["state_dict"] for s in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["skipped_images"] == b["skipped_images"] == 0

    broken_root, bad = broken
    write_encoded_index(
        tmp_path / "broken_set",
        EncodedImages.from_folder(broken_root, manifest["path"], manifest["identity"], 32),
    )
    with caplog.at_level(logging.WARNING):
        c = train_recognizer(tmp_path / "broken_set", tmp_path / "c", cfg, "cpu", False)
    assert c["skipped_images"] == 1 and c["skipped_items"][0]["source"] == str(bad)
    assert "1 training image(s)" in caplog.text and "could not be decoded" in caplog.text


@pytest.mark.parametrize(
    ("n", "size", "requested", "expected"),
    [
        (228_261, 112, "auto", "packed"),  # 228,261 x 37,632 B = 7.9999 GiB
        (228_262, 112, "auto", "jpeg"),  # one more image crosses 8 GiB
        (15_000_000, 112, "auto", "jpeg"),  # HSFace300K: 525.7 GiB decoded
        (20_000, 64, "auto", "packed"),
        (20_000, 64, "jpeg", "jpeg"),
        (15_000_000, 112, "packed", "packed"),
    ],
)
def test_size_rule(n, size, requested, expected):
    fmt, why = choose_training_format(n, size, requested, packed_limit_gib=8)
    assert fmt == expected and f"{n:,} images" in why


def test_the_default_faceworld_run_still_packs():
    params = {}
    for name in ("subset", "recognizer"):
        params.update(yaml.safe_load((CONF / f"parameters_{name}.yml").read_text()))
    rec = validate_section("recognizer", params["recognizer"])
    subset = params["subset"]
    assert rec.data.format == "auto" and rec.match_image_count
    # Both instances train on at most as many images as the real subset holds.
    most = subset["n_ids"] * subset["max_images"]
    fmt, _ = choose_training_format(
        most, subset["image_size"], rec.data.format, rec.data.packed_limit_gib
    )
    assert fmt == "packed"


@pytest.mark.parametrize("fmt", ["packed", "jpeg"])
def test_the_build_node_logs_its_choice(sets, tmp_path, caplog, fmt):
    root, manifest, _ = sets
    recognizer = yaml.safe_load((CONF / "parameters_recognizer.yml").read_text())["recognizer"]
    recognizer["data"] = {"format": "auto", "packed_limit_gib": 1e-5 if fmt == "jpeg" else 8}
    plan = {"images": {"synthetic": 20}, "seed": 0}
    info = {"root": str(root), "image_size": 32, "images": len(manifest)}
    with caplog.at_level(logging.INFO):
        out = build_synthetic_training_set(
            plan, info, tmp_path / "set", recognizer, {"progress": False}
        )
    assert out["format"] == fmt and out["images"] == 20 and out["identities"] == 4
    assert f"{fmt}: 20 images x 32x32x3" in caplog.text
    opened = open_image_set(out["packed_dir"])
    assert isinstance(opened, EncodedImages if fmt == "jpeg" else PackedImages)
    assert len(opened) == 20 and opened.num_classes == 4
    np.testing.assert_array_equal(np.bincount(opened.labels), [5, 5, 5, 5])
