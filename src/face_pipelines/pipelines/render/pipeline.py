"""render: plan + generator + teacher/pose -> synthetic dataset (folders + manifest) + card.

`create_render_pipeline` is the generator-agnostic render node; pipeline_registry instantiates it
once per generator under a namespace (DR-GAN: `drgan`), mapping `vec2face_report` to that
generator's report. `create_pipeline` is the default (Vec2Face) instance plus its card.
"""

from kedro.pipeline import Node, Pipeline

from .nodes import make_dataset_card, render_synthetic_dataset


def create_render_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                render_synthetic_dataset,
                inputs=[
                    "identity_plan",
                    "identity_vectors",
                    "identity_centres",
                    "vec2face_report",
                    "teacher_summary",
                    "pose_summary",
                    "synthetic_dir",
                    "params:render",
                    "params:teacher",
                    "params:common",
                ],
                outputs=["synthetic_dataset_info", "render_report"],
                name="render_synthetic_dataset",
            ),
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    card = Node(
        make_dataset_card,
        inputs=[
            "synthetic_dataset_info",
            "render_report",
            "sample_report",
            "teacher_features",
            "subset_packed_manifest",
            "subset_packed_dir",
            "teacher_summary",
            "pose_summary",
            "vec2face_report",
            "params:sample",
            "params:render",
            "params:vec2face",
            "params:teacher",
            "params:common",
            # lineage: what made the set, stage by stage
            "faceworld_info",
            "judge_summary",
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
    )
    return create_render_pipeline() + Pipeline([card])
