"""vec2face: packed subset images + teacher features -> generator checkpoint, report, grids."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_generator


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_generator,
                inputs=[
                    "teacher_summary",
                    "judge_summary",
                    "pose_summary",
                    "teacher_features",
                    "subset_packed_manifest",
                    "subset_packed_dir",
                    "vec2face_dir",
                    "vec2face_grids_dir",
                    "params:vec2face",
                    "params:teacher",
                    "params:common",
                ],
                outputs=["vec2face_report", "vec2face_grid_plot", "vec2face_mlflow_metrics"],
                name="train_vec2face",
            ),
        ]
    )
