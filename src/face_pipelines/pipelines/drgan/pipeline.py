"""DR-GAN's own nodes (all opt-in, none in synth or __default__). pipeline_registry puts them
together with the shared chain's nodes under the `drgan` namespace:
drgan: packed subset images + FaceWorld yaw labels -> DR-GAN checkpoint, report, grid;
drgan_synth (after drgan and teacher): sample identities and pose codes in the encoder's f space
    (create_sample_pipeline) -> the shared render node -> card with per-pose-bin success
    (create_card_pipeline);
drgan_eval (after drgan_synth and recognizer): the encoder as a recognizer
    (create_encoder_pipeline) next to the shared chain's recognizer instance and table.
Dataset names here are the instance's own (`identity_plan`, `synthetic_dataset_info`, ...); the
registry maps them to drgan_* catalog entries.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    export_drgan_encoder,
    make_pose_code_dataset_card,
    sample_pose_code_identities,
    train_pose_generator,
)


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


def create_sample_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                sample_pose_code_identities,
                inputs=["drgan_report", "subset_packed_dir", "params:drgan", "params:common"],
                outputs=[
                    "identity_plan",
                    "identity_vectors",
                    "identity_centres",
                    "sample_report",
                    "sample_mlflow_metrics",
                ],
                name="sample_identities",
            ),
        ]
    )


def create_card_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                make_pose_code_dataset_card,
                inputs=[
                    "synthetic_dataset_info",
                    "render_report",
                    "sample_report",
                    "drgan_report",
                    "teacher_features",
                    "subset_packed_manifest",
                    "subset_packed_dir",
                    "teacher_summary",
                    "pose_summary",
                    "judge_summary",
                    "params:drgan",
                    "params:teacher",
                    "params:common",
                    # lineage: what made the set, stage by stage
                    "faceworld_info",
                    "identity_plan",
                    "params:faceworld",
                    "params:subset",
                ],
                outputs=[
                    "dataset_card",
                    "synthetic_dataset_card",
                    "dataset_card_plot",
                    "dataset_card_mlflow_metrics",
                ],
                name="make_dataset_card",
            ),
        ]
    )


def create_encoder_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                export_drgan_encoder,
                inputs=["drgan_report", "encoder_dir"],
                outputs="encoder_summary",
                name="export_encoder",
            ),
        ]
    )
