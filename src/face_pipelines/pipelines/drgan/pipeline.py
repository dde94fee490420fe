"""DR-GAN pipelines (all opt-in, none in synth or __default__):
drgan: packed subset images + FaceWorld yaw labels -> DR-GAN checkpoint, report, grid;
drgan_synth (after drgan and teacher): encode the subset -> sample identities in f space -> render
    at pose codes (the one renderer, generator drgan) -> dataset card with per-pose-bin success;
drgan_eval (after drgan_synth and recognizer): the encoder and a recognizer trained on the DR-GAN
    set (the recognizer recipe, as many images as the Vec2Face-set one) in one verification table.
"""

from kedro.pipeline import Node, Pipeline

from face_pipelines.pipelines.recognizer.pipeline import synthetic_set_instance

from .nodes import (
    evaluate_drgan_recognizers,
    export_drgan_encoder,
    make_pose_code_dataset_card,
    plan_drgan_training_set,
    render_pose_code_dataset,
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


def create_synth_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                sample_pose_code_identities,
                inputs=["drgan_report", "subset_packed_dir", "params:drgan", "params:common"],
                outputs=[
                    "drgan_identity_plan",
                    "drgan_identity_vectors",
                    "drgan_sample_report",
                    "drgan_sample_mlflow_metrics",
                ],
                name="sample_drgan_identities",
            ),
            Node(
                render_pose_code_dataset,
                inputs=[
                    "drgan_identity_plan",
                    "drgan_identity_vectors",
                    "drgan_report",
                    "drgan_synthetic_dir",
                    "params:drgan",
                    "params:common",
                ],
                outputs=["drgan_synthetic_dataset_info", "drgan_render_report"],
                name="render_drgan_dataset",
            ),
            Node(
                make_pose_code_dataset_card,
                inputs=[
                    "drgan_synthetic_dataset_info",
                    "drgan_render_report",
                    "drgan_sample_report",
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
                    "drgan_identity_plan",
                    "params:faceworld",
                    "params:subset",
                ],
                outputs=[
                    "drgan_dataset_card",
                    "drgan_dataset_card_plot",
                    "drgan_dataset_card_mlflow_metrics",
                ],
                name="make_drgan_dataset_card",
            ),
        ]
    )


def create_eval_pipeline(**kwargs) -> Pipeline:
    drgan_set = synthetic_set_instance(
        "drgan_set", "drgan_recognizer_training_plan", "drgan_synthetic_dataset_info"
    )
    return drgan_set + Pipeline(
        [
            Node(
                export_drgan_encoder,
                inputs=["drgan_report", "drgan_encoder_dir"],
                outputs="drgan_encoder_summary",
                name="export_drgan_encoder",
            ),
            Node(
                plan_drgan_training_set,
                inputs=[
                    "drgan_synthetic_dataset_info",
                    "synthetic.summary",
                    "params:recognizer",
                    "params:drgan",
                ],
                outputs="drgan_recognizer_training_plan",
                name="plan_drgan_training_set",
            ),
            Node(
                evaluate_drgan_recognizers,
                inputs=[
                    "drgan_encoder_summary",
                    "drgan_set.summary",
                    "synthetic.summary",
                    "real.summary",
                    "faceworld_info",
                    "params:evaluate",
                    "params:common",
                ],
                outputs=[
                    "drgan_verification",
                    "drgan_verification_markdown",
                    "drgan_evaluate_mlflow_metrics",
                ],
                name="evaluate_drgan_recognizers",
            ),
        ]
    )
