"""teacher.pose.checkpoint takes the released 6DRepNet file as well as the project's own regressor:
the pose model of the vec2face report and the dataset card is then the one AttrOP steers with."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from face_pipelines.errors import DataError
from face_pipelines.io.checkpoint import save_checkpoint
from face_pipelines.models.inference import load_pose_regressor, predict_pose
from face_pipelines.models.repvgg import RepVGGLayout
from face_pipelines.models.sixdrepnet import SixDRepNet, SixDRepNetPose

TINY = RepVGGLayout(
    stem_width=8, stage_blocks=(1, 1, 1, 1), stage_widths=(8, 8, 16, 16), groups=(1,) * 5
)


def test_a_6drepnet_state_dict_loads_as_the_pose_model(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "6DRepNet_300W_LP_AFLW2000.pth"
    torch.save(SixDRepNet(TINY, deploy=True).state_dict(), path)  # bare, as released
    model = load_pose_regressor(path)
    assert isinstance(model, SixDRepNetPose) and not model.training
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    yaw_pitch = predict_pose(model, images, "cpu")
    assert yaw_pitch.shape == (3, 2) and (np.abs(yaw_pitch) <= 90).all()


def test_a_project_checkpoint_of_another_model_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "x.pt", "small", {}, {"w": torch.zeros(1)})
    with pytest.raises(DataError, match="pose_regressor checkpoint or a 6DRepNet state dict"):
        load_pose_regressor(path)
