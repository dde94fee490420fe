"""ELEGANT training and editing: pair batches, loss directions, exact resume after a kill, the
attribute classifier, transfer / interpolation helpers, and the dataset edit step (never overwrites
originals unless asked, records every edit), with clear errors for bad labels and parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from face_pipelines.errors import DataError, ParameterError
from face_pipelines.io.packed import PackedImages
from face_pipelines.models.elegant import ELEGANTConfig, ELEGANTGenerator
from face_pipelines.models.inference import load_attribute_classifier, load_elegant
from face_pipelines.params import validate_section
from face_pipelines.pipelines.elegant.nodes import subset_attribute_labels
from face_pipelines.training.data import heldout_identity_split
from face_pipelines.training.elegant import (
    AttributeClassifierConfig,
    AttributePairDataset,
    ELEGANTTrainConfig,
    attribute_labels,
    attribute_labels_by_path,
    classify_attributes,
    edit_dataset,
    interpolation_grid,
    train_attribute_classifier,
    train_elegant,
    transfer_attribute,
)
from face_pipelines.training.elegant.classifier import per_attribute_rates
from face_pipelines.training.elegant.losses import critic_loss, discriminator_loss, generator_loss

from .helpers import Stop, make_packed, recorder

ATTRS = ["dark", "odd"]
MODEL = {"channels": [8, 16], "slot_channels": 4, "disc_channels": [8]}
CFG = ELEGANTTrainConfig(
    attributes=ATTRS,
    model=MODEL,
    epochs=3,
    steps_per_epoch=3,
    batch_size=4,
    lr=2e-3,
    lr_d=2e-3,
    attribute_weight=1.0,
    critic_warmup_steps=2,
    log_every=1,
    eval_pairs=4,
    grid_steps=3,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny nets: thread start-up costs more than it saves, and another job may share the CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("elegant") / "packed", n=48, size=16, classes=4)


@pytest.fixture(scope="module")
def labels(packed):
    cls = PackedImages(packed).labels
    return np.stack([cls >= 2, cls % 2 == 1], 1).astype(np.float32)


def test_pair_batches_train_one_attribute_each_and_cycle(packed, labels):
    p = PackedImages(packed)
    ds = AttributePairDataset(p, labels, batch_size=4, length=16)
    items = ds.__getitems__([(k, 100 + k) for k in range(16)])
    assert [it[4] for it in items] == [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    for a, b, y_a, y_b, i in items:
        assert y_a[i] == 1 and y_b[i] == 0  # A has attribute i, B lacks it
        assert a.shape == b.shape == (3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(ds.__getitems__([(5, 105)])[0][0], items[5][0])  # seeded: same pair
    no_positive = labels.copy()
    no_positive[:, 1] = 0
    with pytest.raises(DataError, match="slot 1 has 0 images with it"):
        AttributePairDataset(p, no_positive, 4, 16)


class _ConstantDisc(nn.Module):
    """Scores every image `value` at both scales (to check the loss directions); its critic gives
    every image the attribute logits `logits`."""

    def __init__(self, value: float, logits=(0.0, 0.0)):
        super().__init__()
        self.value = value
        self.logits = torch.tensor(logits)

    def forward(self, x, labels):
        return [torch.full((len(x), 1, 2, 2), self.value)] * 2

    def attribute_logits(self, x):
        return self.logits.expand(len(x), -1)


def test_loss_directions_and_finite():
    x = torch.zeros(2, 3, 8, 8)
    y_a, y_b = torch.tensor([[1.0, 0], [1, 1]]), torch.tensor([[0.0, 1], [0, 0]])
    fooled = discriminator_loss(_ConstantDisc(1.0), x, x, x, x, y_a, y_b, 0)
    sharp = discriminator_loss(_ConstantDisc(0.0), x, x, x, x, y_a, y_b, 0)
    assert fooled["d_real"] == 0 and fooled["d_fake"] == 1 and fooled["d_mismatch"] == 1
    assert sharp["d_real"] == 1 and sharp["d_fake"] == 0
    no_mismatch = discriminator_loss(_ConstantDisc(1.0), x, x, x, x, y_a, y_b, 0, 0.0)
    assert "d_mismatch" not in no_mismatch and no_mismatch["d_loss"] == 1
    g = generator_loss(_ConstantDisc(1.0), x, x, x + 0.5, x, x, x, y_a, y_b, 0, recon_weight=2.0)
    assert g["g_adv"] == 0 and g["g_recon"] == pytest.approx(0.25)
    assert g["g_loss"] == pytest.approx(0.5)
    for terms in (fooled, sharp, g):
        assert all(torch.isfinite(v) for v in terms.values())


def test_attribute_critic_terms_score_the_edited_attribute_only():
    x = torch.zeros(2, 3, 8, 8)
    y_a, y_b = torch.tensor([[1.0, 0], [1, 1]]), torch.tensor([[0.0, 1], [0, 0]])
    # The critic is sure attribute 0 is absent and attribute 1 present in every image.
    disc = _ConstantDisc(1.0, logits=(-20.0, 20.0))
    no_term = generator_loss(disc, x, x, x, x, x, x, y_a, y_b, 0)
    assert "g_attribute" not in no_term  # attribute_weight 0: the paper's losses only
    # Edit of attribute 0: C must lack it (the critic agrees), D must have it (the critic is sure
    # it does not): BCE over attribute 0 only = half the pairs at ~20 nats; attribute 1's labels
    # (wrong for some images) do not count.
    g0 = generator_loss(disc, x, x, x, x, x, x, y_a, y_b, 0, attribute_weight=2.0)
    assert g0["g_attribute"] == pytest.approx(10.0, abs=1e-3)
    expected = float(g0["g_adv"] + 5.0 * g0["g_recon"]) + 20.0
    assert float(g0["g_loss"]) == pytest.approx(expected, abs=1e-2)
    # Edit of attribute 1: C lacks it, D has it; the critic says present for all -> C costs 20.
    g1 = generator_loss(disc, x, x, x, x, x, x, y_a, y_b, 1, attribute_weight=1.0)
    assert g1["g_attribute"] == pytest.approx(10.0, abs=1e-3)
    # change_weight: the L1 size of the edits' change to their sources (C vs A, D vs B).
    g = generator_loss(disc, x, x, x, x, x + 0.5, x, y_a, y_b, 0, change_weight=4.0)
    assert g["g_change"] == pytest.approx(0.25)
    assert float(g["g_loss"]) == pytest.approx(float(g["g_adv"] + 5.0 * g["g_recon"]) + 1.0)
    assert "g_change" not in g0
    # D's critic learns every label of the real pair: a perfect critic costs ~0.
    perfect = _ConstantDisc(1.0, logits=(20.0, -20.0))
    assert (
        critic_loss(perfect, x[:1], x[:1], y_a[:1], y_b[:1] * 0 + torch.tensor([[1.0, 0]])) < 1e-6
    )
    assert critic_loss(disc, x, x, y_a, y_b) > 5


def test_critic_warmup_steps_leave_the_generator_untouched(packed, labels, tmp_path):
    cfg = CFG.model_copy(update={"epochs": 1, "critic_warmup_steps": 3})
    log: dict = {}
    torch.manual_seed(0)
    train_elegant(packed, labels, tmp_path, cfg, "cpu", False, recorder(log))
    steps = sorted(k for k in log if isinstance(k, int))
    assert steps == [1, 2, 3]
    assert all("critic" in log[s] and "g_loss" not in log[s] for s in steps)
    gen, _ = load_elegant(tmp_path / "model.pt")
    torch.manual_seed(CFG.seed)
    fresh = ELEGANTGenerator(cfg.model_config_for(16))
    for (name, w), w0 in zip(gen.state_dict().items(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(w, w0, msg=name)


def test_training_resumes_exactly_after_a_kill(packed, labels, tmp_path):
    ref: dict = {}
    report = train_elegant(packed, labels, tmp_path / "a", CFG, "cpu", False, recorder(ref))
    steps = sorted(k for k in ref if isinstance(k, int))
    assert steps == list(range(1, 10))  # 3 epochs x 3 batches
    assert [ref[s]["attribute"] for s in steps[:3]] == [0, 1, 0]  # one attribute per iteration
    assert all(np.isfinite(v) for s in steps for v in ref[s].values())
    assert {"eval/dark/pixel_change", "eval/odd/pixel_change"} <= set(ref["epoch3"])
    assert len(report["grids"]) == 2
    # 3x3 grid plus a header row of 4 (source + 3 exemplars): 4 columns, 4 rows of 16 px + 2 px pad
    assert Image.open(report["grids"][0]).size == (2 + 4 * 18, 2 + 4 * 18)

    partial: dict = {}
    with pytest.raises(Stop):
        train_elegant(packed, labels, tmp_path / "b", CFG, "cpu", False, recorder(partial, 5))
    assert not (tmp_path / "b" / "model.pt").exists()  # an interrupted run never looks finished
    resumed: dict = {}
    train_elegant(packed, labels, tmp_path / "b", CFG, "cpu", False, recorder(resumed))
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(4, 10))
    for step in range(4, 10):
        for key in ("d_loss", "g_loss", "g_recon", "attribute"):
            assert resumed[step][key] == pytest.approx(ref[step][key], abs=1e-6), (step, key)
    gen_a, attrs = load_elegant(tmp_path / "a" / "model.pt")
    gen_b, _ = load_elegant(tmp_path / "b" / "model.pt")
    assert attrs == ATTRS
    for (name, wa), wb in zip(gen_a.state_dict().items(), gen_b.state_dict().values(), strict=True):
        torch.testing.assert_close(wa, wb, atol=1e-6, rtol=0, msg=name)


def test_transfer_and_interpolation_helpers(packed):
    torch.manual_seed(0)
    gen = ELEGANTGenerator(ELEGANTConfig(image_size=16, num_attributes=2, **MODEL))
    images, _ = PackedImages(packed).get_batch(np.arange(6))
    same = transfer_attribute(gen, images[:3], images[3:], 1, strength=0.0)
    gen.eval()
    with torch.no_grad():
        x = torch.from_numpy(images[:3]).permute(0, 3, 1, 2).float() / 127.5 - 1
        recon = ((gen(x).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(same, recon)  # strength 0 = the image's own slot
    edited = transfer_attribute(gen, images[:3], images[3:4], 1)  # one exemplar for all
    assert edited.shape == (3, 16, 16, 3) and not np.array_equal(edited, same)
    with pytest.raises(DataError, match="2 exemplars for 3 images"):
        transfer_attribute(gen, images[:3], images[3:5], 1)
    grid = interpolation_grid(gen, images[:1], images[3:6], 0, steps=3)
    assert grid.shape == (2 + 4 * 18, 2 + 4 * 18, 3)
    np.testing.assert_array_equal(grid[2:18, 2:18], images[0])  # header starts with the source
    with pytest.raises(DataError, match="3 exemplars"):
        interpolation_grid(gen, images[:1], images[3:5], 0)


def test_attribute_classifier_learns_the_labels(packed, labels, tmp_path):
    cfg = AttributeClassifierConfig(widths=[8], epochs=4, batch_size=8, lr=1e-2)
    report = train_attribute_classifier(packed, labels, ATTRS, tmp_path, cfg, "cpu", False)
    model, attrs = load_attribute_classifier(report["checkpoint"])
    assert attrs == ATTRS and set(report["heldout"]) == set(ATTRS)
    # Held-out identities: 10% of 4 rounds to 0, so it reports on the training images.
    assert report["evaluated_on"].startswith("training images")
    assert report["heldout"]["dark"]["accuracy"] >= 0.75


def test_per_attribute_rates_count_each_class_separately():
    # a: 4 positives (3 found), 6 negatives (1 false alarm); b: no positives at all.
    truth = np.zeros((10, 2), bool)
    truth[:4, 0] = True
    pred = np.zeros((10, 2), bool)
    pred[[0, 1, 2, 9], 0] = True
    pred[5, 1] = True
    got = per_attribute_rates(pred, truth, ["a", "b"])
    a = got["a"]
    assert (a["positives"], a["negatives"]) == (4, 6)
    assert a["true_positive_rate"] == pytest.approx(0.75)
    assert a["true_negative_rate"] == pytest.approx(5 / 6)
    assert a["balanced_accuracy"] == pytest.approx((0.75 + 5 / 6) / 2)
    assert a["accuracy"] == pytest.approx(0.8)
    b = got["b"]
    assert np.isnan(b["true_positive_rate"]) and b["true_negative_rate"] == pytest.approx(0.9)
    assert b["balanced_accuracy"] == pytest.approx(0.9)  # the rate that exists


def test_classifier_report_is_on_heldout_identities_only(packed, labels, tmp_path):
    cfg = AttributeClassifierConfig(
        widths=[8], epochs=1, batch_size=8, lr=1e-2, heldout_identities=0.5, seed=3
    )
    report = train_attribute_classifier(packed, labels, ATTRS, tmp_path, cfg, "cpu", False)
    p = PackedImages(packed)
    train_rows, held_rows = heldout_identity_split(p.labels, 0.5, [3, 11])
    assert not set(p.labels[train_rows]) & set(p.labels[held_rows])
    assert report["evaluated_on"] == "heldout identities"
    assert (report["heldout_identities"], report["heldout_images"]) == (2, len(held_rows))
    # The rates are those of the saved model's predictions on exactly the held-out images.
    model, _ = load_attribute_classifier(report["checkpoint"])
    images, _ = p.get_batch(held_rows)
    pred = classify_attributes(model, images) >= 0.5
    want = per_attribute_rates(pred, labels[held_rows] == 1, ATTRS)
    for name in ATTRS:
        got = report["heldout"][name]
        assert got["positives"] == int(labels[held_rows, ATTRS.index(name)].sum())
        assert got["positives"] + got["negatives"] == len(held_rows)
        for key in ("true_positive_rate", "true_negative_rate", "balanced_accuracy"):
            np.testing.assert_equal(got[key], want[name][key])


def test_labels_name_the_file_and_the_parameter(packed, labels):
    p = PackedImages(packed)
    manifest = pd.DataFrame({"identity": p.labels, "dark": labels[:, 0] == 1, "odd": labels[:, 1]})
    np.testing.assert_array_equal(subset_attribute_labels(manifest, p, ATTRS), labels)
    with pytest.raises(ParameterError, match=r"elegant.train.attributes names \['glasses'\].*"):
        subset_attribute_labels(manifest, p, ["dark", "glasses"])
    with pytest.raises(
        ParameterError, match=r"\['odd'\], which subset_packed.*columns there: \['dark'\]"
    ):
        subset_attribute_labels(manifest.drop(columns="odd"), p, ATTRS)
    holes = manifest.astype({"odd": float})
    holes.loc[7, "odd"] = np.nan
    with pytest.raises(DataError, match="column 'odd' must be boolean.*row 7"):
        attribute_labels(holes, ATTRS, "m.parquet", "p")
    with pytest.raises(DataError, match="47 rows"):
        subset_attribute_labels(manifest.iloc[:-1], p, ATTRS)


def test_labels_by_path_from_a_celeba_style_table(packed, labels, tmp_path):
    p = PackedImages(packed)
    paths = [f"{i // 12:06d}/{i % 12:03d}.jpg" for i in range(len(p))]
    manifest = pd.DataFrame({"path": paths, "identity": p.labels})
    # CelebA's convention (-1 / 1), rows in another order, an extra attribute column.
    table = pd.DataFrame(
        {"path": paths, "dark": 2 * labels[:, 0] - 1, "odd": 2 * labels[:, 1] - 1, "hat": 1}
    ).iloc[::-1]
    table.to_csv(tmp_path / "attrs.csv", index=False)
    got = subset_attribute_labels(manifest, p, ATTRS, str(tmp_path / "attrs.csv"))
    np.testing.assert_array_equal(got, labels)
    table.to_parquet(tmp_path / "attrs.parquet")
    np.testing.assert_array_equal(
        subset_attribute_labels(manifest, p, ATTRS, str(tmp_path / "attrs.parquet")), labels
    )
    with pytest.raises(DataError, match=r"no labels for 1 of 48 subset images, e.g. '000000/000"):
        attribute_labels_by_path(manifest, table.iloc[:-1], ATTRS, "attrs.csv")
    with pytest.raises(DataError, match=r"lists path '000003/011.jpg' more than once"):
        attribute_labels_by_path(manifest, pd.concat([table, table.iloc[:1]]), ATTRS, "a.csv")
    with pytest.raises(ParameterError, match=r"names \['beard'\], which a.csv has no column"):
        attribute_labels_by_path(manifest, table, ["dark", "beard"], "a.csv")
    with pytest.raises(DataError, match=r"missing.csv \(elegant.labels_path\) does not exist"):
        subset_attribute_labels(manifest, p, ATTRS, str(tmp_path / "missing.csv"))


def test_bad_parameters_are_refused_with_the_key():
    with pytest.raises(ParameterError, match=r"elegant\.train: .*model\.image_size is set"):
        validate_section("elegant", {"train": {"model": {"image_size": 64}}})
    with pytest.raises(ParameterError, match=r"edit.attributes names \['moustache'\]"):
        validate_section("elegant", {"edit": {"attributes": ["moustache"]}})
    with pytest.raises(ParameterError, match=r"elegant\.edit\.fraction"):
        validate_section("elegant", {"edit": {"fraction": 1.5}})
    with pytest.raises(ParameterError, match="no 'rest' channels"):
        validate_section("elegant", {"train": {"model": {"slot_channels": 64}}})


class _ConstantClassifier(nn.Module):
    """Says no image has any attribute (logit -5 for each of n)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return torch.full((len(x), self.n), -5.0)


def _synthetic_dataset(root, n_ids=4, per_id=3, size=16):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_ids):
        (root / f"{i:06d}").mkdir(parents=True)
        for k in range(per_id):
            rel = f"{i:06d}/{k:03d}.jpg"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / rel)
            rows.append({"path": rel, "identity": i, "index": k})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(root / "manifest.parquet", index=False)
    return manifest


def test_edit_step_writes_a_copy_records_edits_and_keeps_originals(packed, labels, tmp_path):
    src = tmp_path / "synthetic"
    manifest = _synthetic_dataset(src)
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    torch.manual_seed(0)
    gen = ELEGANTGenerator(ELEGANTConfig(image_size=16, num_attributes=2, **MODEL))
    judge = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    args = (gen, ATTRS, ATTRS, PackedImages(packed), labels, _ConstantClassifier(2), judge)
    out, report = edit_dataset(src, manifest, tmp_path / "edited", *args, fraction=0.5, seed=1)
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # untouched
    edited_root = tmp_path / "edited"
    assert (edited_root / "_COMPLETE").exists()
    saved = pd.read_parquet(edited_root / "manifest.parquet")
    assert len(saved) == 12 and int(saved["edited"].sum()) == 6 == report["edits"]
    assert sorted(saved.loc[saved["edited"], "edit_attribute"].value_counts().tolist()) == [3, 3]
    e = saved[saved["edited"]]
    assert (labels[e["edit_exemplar"].to_numpy(), 0][e["edit_attribute"] == "dark"] == 1).all()
    assert (labels[e["edit_exemplar"].to_numpy(), 1][e["edit_attribute"] == "odd"] == 1).all()
    ex_ids = PackedImages(packed).labels[e["edit_exemplar"].to_numpy()]
    np.testing.assert_array_equal(e["edit_exemplar_identity"].to_numpy(), ex_ids)
    assert (
        e["edit_judge_cos"].between(-1, 1).all()
        and saved.loc[~saved["edited"], "edit_judge_cos"].isna().all()
    )
    for rel in saved.loc[~saved["edited"], "path"]:
        assert (edited_root / rel).read_bytes() == before[src / rel]  # unedited: copied as is
    for rel in e["path"]:
        assert (edited_root / rel).read_bytes() != before[src / rel]
    assert report["success"] == 0.0  # this classifier never sees an attribute
    assert report["strength"] == 1.0
    # The strength reaches the edit: the same images are edited, into other pixels.
    _, strong = edit_dataset(
        src, manifest, tmp_path / "strong", *args, fraction=0.5, seed=1, strength=2.5
    )
    strong_manifest = pd.read_parquet(tmp_path / "strong" / "manifest.parquet")
    assert strong["strength"] == 2.5
    assert strong_manifest["edited"].tolist() == saved["edited"].tolist()
    for rel in e["path"]:
        assert (tmp_path / "strong" / rel).read_bytes() != (edited_root / rel).read_bytes()
    assert set(report["frequency"]) == set(ATTRS)
    assert report["frequency"]["dark"]["real_labels"] == pytest.approx(0.5)

    # In place only when asked; a second in-place edit is refused.
    _, again = edit_dataset(src, manifest, src, *args, fraction=0.25, seed=1)
    assert again["in_place"] and again["edits"] == 3
    edited_manifest = pd.read_parquet(src / "manifest.parquet")
    with pytest.raises(DataError, match="edited in place before"):
        edit_dataset(src, edited_manifest, src, *args, fraction=0.25)
    with pytest.raises(ParameterError, match=r"elegant.edit.attributes names \['hat'\]"):
        edit_dataset(src, manifest, tmp_path / "x", gen, ATTRS, ["hat"], *args[3:], fraction=0.5)
    with pytest.raises(DataError, match="no 'path' column"):
        edit_dataset(src, manifest.drop(columns="path"), tmp_path / "x", *args, fraction=0.5)
