"""teacher: recognizer (features for Vec2Face), independent judge, and pose model for AttrOP."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    extract_teacher_features,
    pack_pretrain_pool,
    train_judge,
    train_pose_model,
    train_teacher,
)

_TRAIN_INPUTS = [
    "pretrain_pack_report",
    "pretrain_packed_dir",
    "teacher_dir",
    "params:teacher",
    "params:common",
]


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                pack_pretrain_pool,
                inputs=["faceworld_info", "pretrain_packed_dir", "params:teacher", "params:common"],
                outputs=["pretrain_manifest", "pretrain_pack_report"],
                name="pack_pretrain_pool",
            ),
            Node(
                train_teacher,
                inputs=[*_TRAIN_INPUTS[:3], "pose_summary", *_TRAIN_INPUTS[3:]],
                outputs=["teacher_summary", "teacher_mlflow_metrics"],
                name="train_teacher",
            ),
            Node(
                train_judge,
                inputs=_TRAIN_INPUTS,
                outputs=["judge_summary", "judge_mlflow_metrics"],
                name="train_judge",
            ),
            Node(
                train_pose_model,
                inputs=[
                    "pretrain_manifest",
                    "pretrain_packed_dir",
                    "teacher_dir",
                    "params:teacher",
                    "params:common",
                ],
                outputs=["pose_summary", "pose_mlflow_metrics"],
                name="train_pose_model",
            ),
            Node(
                extract_teacher_features,
                inputs=[
                    "teacher_summary",
                    "judge_summary",
                    "pose_summary",
                    "faceworld_info",
                    "subset_packed_manifest",
                    "subset_packed_dir",
                    "params:teacher",
                    "params:common",
                ],
                outputs=["teacher_features", "teacher_report", "teacher_report_mlflow_metrics"],
                name="extract_teacher_features",
            ),
        ]
    )
