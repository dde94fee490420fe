"""drgan (opt-in): packed subset images + FaceWorld yaw labels -> DR-GAN checkpoint, report, grid."""

from kedro.pipeline import Node, Pipeline

from .nodes import train_pose_generator


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_pose_generator,
                inputs=[
                    "subset_packed_dir",
                    "subset_packed_manifest",
                    "drgan_dir",
                    "params:drgan",
                    "params:common",
                ],
                outputs=["drgan_report", "drgan_grid_plot", "drgan_mlflow_metrics"],
                name="train_drgan",
            ),
        ]
    )
