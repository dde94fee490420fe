"""TopoFR through the real recognizer trainer: diagnostics are logged and a killed run resumes to the
same losses (RSP's random perturbations and SDE's per-batch EM included)."""

from __future__ import annotations

import pytest

from face_pipelines.io.checkpoint import load_checkpoint
from face_pipelines.models.inference import load_recognizer
from face_pipelines.training.recognizer import RecognizerConfig, train_recognizer

from .helpers import Stop, make_packed, recorder

CFG = RecognizerConfig(
    arch="small",
    embedding_dim=16,
    backbone_kwargs={"widths": [8, 8, 16, 16], "stem_width": 8},
    method="topofr",
    s=16.0,
    m=0.3,
    epochs=3,
    batch_size=16,
    lr=0.05,
    warmup_epochs=0.5,
    num_workers=0,
    log_every=1,
    topofr={"perturb_prob": 0.5, "alpha": 0.1, "sde": True},
)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return make_packed(tmp_path_factory.mktemp("topofr") / "packed", n=64, size=32, classes=4)


def test_topofr_logs_its_diagnostics_and_resumes_exactly(packed, tmp_path):
    ref: dict = {}
    summary = train_recognizer(packed, tmp_path / "a", CFG, "cpu", False, recorder(ref))
    steps = sorted(k for k in ref if isinstance(k, int))
    assert steps == list(range(1, 13))  # 3 epochs x 4 batches
    for name in (
        "l_sa",
        "sde_mean_weight",
        "sde_hard_fraction",
        "topology_discrepancy",
        "perturbed_fraction",
    ):
        assert f"epoch/{name}" in ref["epoch3"], name
    assert ref["epoch3"]["epoch/sde_mean_weight"] > 0
    assert 0 <= ref["epoch3"]["epoch/sde_hard_fraction"] <= 1
    assert summary["final"]["epoch/l_sa"] == ref["epoch3"]["epoch/l_sa"]
    meta = load_checkpoint(summary["checkpoint"])["meta"]
    assert meta["method"] == "topofr" and meta["epochs"] == 3
    model, size = load_recognizer(summary["checkpoint"])
    assert size == 32

    # Die at step 7 (inside epoch 2); the epoch-1 checkpoint survives; resume replays 5..12.
    partial: dict = {}
    with pytest.raises(Stop):
        train_recognizer(packed, tmp_path / "b", CFG, "cpu", False, recorder(partial, 7))
    assert not (tmp_path / "b" / "model.pt").exists()  # an interrupted run never looks finished
    assert load_checkpoint(tmp_path / "b" / "train_state" / "last.pt")["meta"]["step"] == 4
    resumed: dict = {}
    train_recognizer(packed, tmp_path / "b", CFG, "cpu", False, recorder(resumed))
    assert sorted(k for k in resumed if isinstance(k, int)) == list(range(5, 13))
    for step in range(5, 13):
        for key in ("loss", "l_sa", "sde_mean_weight", "perturbed_fraction"):
            assert resumed[step][key] == pytest.approx(ref[step][key], abs=1e-5), (step, key)
    assert (tmp_path / "b" / "model.pt").exists()


def test_topofr_without_sde_skips_the_reweighting(packed, tmp_path):
    cfg = CFG.model_copy(
        update={"epochs": 1, "topofr": CFG.topofr.model_copy(update={"sde": False})}
    )
    store: dict = {}
    train_recognizer(packed, tmp_path / "c", cfg, "cpu", False, recorder(store))
    assert "epoch/l_sa" in store["epoch1"]
    assert "epoch/sde_mean_weight" not in store["epoch1"]


def test_a_finished_run_is_not_reused_on_other_data(tmp_path):
    """Same recipe, same folder, new images: the old training state is set aside, not resumed."""
    cfg = CFG.model_copy(update={"method": "arcface", "epochs": 1})
    root = tmp_path / "packed"
    make_packed(root, n=32, size=32, classes=4, seed=0)
    first = train_recognizer(root, tmp_path / "run", cfg, "cpu", False)
    again = train_recognizer(root, tmp_path / "run", cfg, "cpu", False)
    assert again["final"] == {}  # same data: the finished run resumes to nothing
    make_packed(root, n=32, size=32, classes=4, seed=1)  # re-rendered set, same size and labels
    store: dict = {}
    retrained = train_recognizer(root, tmp_path / "run", cfg, "cpu", False, recorder(store))
    assert sorted(k for k in store if isinstance(k, int)) == [1, 2]
    assert retrained["final"]["epoch/loss"] != first["final"]["epoch/loss"]
    assert list((tmp_path / "run" / "train_state").glob("stale-*.pt"))
