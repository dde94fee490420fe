"""sample: teacher features (real identity statistics) -> identity centres + per-image plan."""

from kedro.pipeline import Node, Pipeline

from .nodes import sample_identities


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                sample_identities,
                inputs=[
                    "teacher_features",
                    "subset_packed_manifest",
                    "params:sample",
                    "params:common",
                ],
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
