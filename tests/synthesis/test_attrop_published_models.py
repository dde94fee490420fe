"""AttrOP with the published companion models' formats, each loaded by path: a 6DRepNet file (here a
tiny RepVGG in train form) as the pose model and a separate insightface-style IResNet state dict as
the quality model (MagFace: quality = embedding norm), wired as the render stage wires them."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from face_pipelines.errors import MissingInputError, ParameterError
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.models.attributes import EmbeddingNormQuality
from face_pipelines.models.heads import magface_quality
from face_pipelines.models.registry import build_backbone
from face_pipelines.models.repvgg import RepVGGBlock, RepVGGLayout
from face_pipelines.models.sixdrepnet import SixDRepNet, SixDRepNetPose
from face_pipelines.params import validate_section
from face_pipelines.pipelines.render.nodes import _attrop_models, _attrop_plan
from face_pipelines.synthesis.attrop import AttrOPBatchEditor
from face_pipelines.synthesis.factory import load_attrop_models

DIM = 8  # the teacher's embedding size = the generator's vector size
SIZE = 32
TINY_REPVGG = RepVGGLayout(
    stem_width=8, stage_blocks=(1, 2, 1, 1), stage_widths=(8, 8, 16, 16), groups=(1, 1, 1, 2, 1, 1)
)
QUALITY_KWARGS = {"arch": "iresnet18", "input_size": 16, "embedding_dim": 32}  # images resized


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class TinyGenerator(nn.Module):
    """vectors [B, DIM] -> images [B, 3, SIZE, SIZE] in [-1, 1]."""

    image_size = SIZE

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, 3 * SIZE * SIZE)

    def generate(self, vectors, generator=None):
        return torch.tanh(self.fc(vectors)).view(-1, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def files(tmp_path_factory, _one_thread):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("attrop_models")
    teacher = build_backbone("small", num_features=DIM, input_size=SIZE, widths=(8, 8, 8, 8))
    teacher_path = save_checkpoint(
        root / "teacher.pt",
        "small",
        {"num_features": DIM, "input_size": SIZE, "widths": [8, 8, 8, 8]},
        teacher.state_dict(),
    )
    pose = SixDRepNet(TINY_REPVGG, deploy=False)  # train form: re-parameterised on load
    for m in pose.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_var, 0.5, 2.0)
            nn.init.normal_(m.running_mean, 0.0, 0.1)
    pose_path = root / "6DRepNet_train.pth"
    torch.save(pose.state_dict(), pose_path)
    quality = build_backbone(
        "iresnet18", num_features=QUALITY_KWARGS["embedding_dim"], input_size=16
    )
    quality_path = root / "magface_iresnet.pth"
    torch.save(quality.state_dict(), quality_path)  # bare state dict, as released
    return {"teacher": str(teacher_path), "pose": str(pose_path), "quality": str(quality_path)}


def _make_models(files):
    return partial(
        load_attrop_models,
        files["teacher"],
        files["pose"],
        None,
        "cpu",
        "sixdrepnet",
        files["quality"],
        QUALITY_KWARGS,
    )


def test_models_load_by_path(files):
    teacher, pose, quality = _make_models(files)()
    assert isinstance(pose, SixDRepNetPose)
    assert all(b.deploy for b in pose.modules() if isinstance(b, RepVGGBlock))
    assert isinstance(quality, EmbeddingNormQuality) and quality is not teacher
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        small = nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
        torch.testing.assert_close(quality(x), magface_quality(quality.recognizer(small)))
        assert pose(x).shape == (2, 2)


def test_attrop_steps_with_sixdrepnet_pose_and_separate_quality(files):
    torch.manual_seed(1)
    gen = TinyGenerator().eval()
    centres = torch.randn(2, DIM).numpy()
    rows = pd.DataFrame(
        {
            "identity": [0, 0, 1, 1],
            "index": [0, 1, 0, 1],
            "attrop": [True, False, True, False],
            "yaw_target": [45.0, np.nan, 60.0, np.nan],
            "quality_target": [1e6, np.nan, 1e6, np.nan],  # unreachable: runs to the cap
        }
    )
    editor = AttrOPBatchEditor(centres, _make_models(files), {"steps_max": 3, "lr": 0.05})
    vectors = torch.from_numpy(centres[rows["identity"].to_numpy()]) + 0.1
    images, cols = editor(gen, vectors, rows)
    assert images.shape == (4, SIZE, SIZE, 3)
    assert cols["attrop_steps"].tolist() == [3, 0, 3, 0]
    assert not cols["attrop_met"][[0, 2]].any()
    assert np.isfinite(cols["yaw_pred"]).all() and (np.abs(cols["yaw_pred"]) <= 90).all()
    # Plain rows are measured on their images by the separate models, not by the teacher.
    teacher, pose, quality = _make_models(files)()
    with torch.no_grad():
        plain = gen.generate(vectors[[1, 3]])
        expected_q = quality(plain).numpy()
        expected_yaw = pose(plain)[:, 0].numpy()
        teacher_norm = teacher(plain).norm(dim=1).numpy()
    np.testing.assert_allclose(cols["quality_pred"][[1, 3]], expected_q, rtol=1e-4)
    np.testing.assert_allclose(cols["yaw_pred"][[1, 3]], expected_yaw, rtol=1e-4, atol=1e-3)
    assert not np.allclose(cols["quality_pred"][[1, 3]], teacher_norm, rtol=1e-2)


def _render_params(**attrop):
    return validate_section("render", {"attrop": {"steps_max": 2, **attrop}})


def test_render_wiring_names_the_missing_file(files):
    summaries = ({"checkpoint": files["teacher"]}, {"checkpoint": None})
    t = validate_section("teacher", {})
    p = _render_params(pose_model={"source": "sixdrepnet"})
    with pytest.raises(
        MissingInputError, match=r"render\.attrop\.pose_model\.checkpoint.*6DRepNet"
    ):
        _attrop_models(p.attrop, *summaries, t, "cpu")
    p = _render_params(quality_model={"source": "checkpoint", "target": 27})
    with pytest.raises(MissingInputError, match=r"render\.attrop\.quality_model\.checkpoint"):
        _attrop_models(p.attrop, *summaries, t, "cpu")
    with pytest.raises(ParameterError, match="target"):
        _render_params(quality_model={"source": "checkpoint", "checkpoint": files["quality"]})
    p = _render_params(
        pose_model={"source": "sixdrepnet", "checkpoint": files["pose"]},
        quality_model={
            "source": "checkpoint",
            "checkpoint": files["quality"],
            "target": 27,
            **{f"checkpoint_{k}": v for k, v in QUALITY_KWARGS.items()},
        },
    )
    _, pose, quality = _attrop_models(p.attrop, *summaries, t, "cpu")()
    assert isinstance(pose, SixDRepNetPose) and isinstance(quality, EmbeddingNormQuality)


def test_quality_target_replaces_the_plans_on_attrop_rows():
    plan = pd.DataFrame({"attrop": [True, False, True], "quality_target": [21.0, np.nan, 21.0]})
    p = _render_params(quality_model={"target": 27})
    out = _attrop_plan(plan, p)
    np.testing.assert_array_equal(out["quality_target"], [27.0, np.nan, 27.0])
    assert _attrop_plan(plan, _render_params()) is plan
    off = validate_section("render", {"attrop_enabled": False, "attrop": {}})
    assert not _attrop_plan(plan, off)["attrop"].any()
