"""evaluate: verification table (json, markdown, MLflow metrics), ROC curves (CSV, figure)."""

from kedro.pipeline import Node, Pipeline

from .nodes import evaluate_recognizers


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                evaluate_recognizers,
                inputs=[
                    "synthetic.summary",
                    "real.summary",
                    "faceworld_info",
                    "dataset_card",
                    "params:evaluate",
                    "params:common",
                ],
                outputs=[
                    "verification",
                    "verification_markdown",
                    "evaluate_mlflow_metrics",
                    "verification_roc_points",
                    "verification_roc_plot",
                ],
                name="evaluate_recognizers",
            ),
        ]
    )
