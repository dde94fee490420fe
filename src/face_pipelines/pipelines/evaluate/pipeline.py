"""evaluate: verification table (json, markdown, MLflow metrics), ROC curves (CSV, figure).

`create_comparison_pipeline` is the same table for a further set's recognizers (DR-GAN's set, the
ELEGANT-edited set), instantiated per set under a namespace by pipeline_registry."""

from functools import partial

from kedro.pipeline import Node, Pipeline

from .nodes import compare_recognizers, evaluate_recognizers


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


def create_comparison_pipeline(
    recognizers: dict[str, str], ratios: tuple[tuple[str, str, str], ...] = ()
) -> Pipeline:
    """Verification table of `recognizers` ({name in the table: its summary dataset}) with the
    mean-accuracy `ratios` ((name, numerator, denominator), ...)."""
    return Pipeline(
        [
            Node(
                partial(compare_recognizers, ratios=ratios),
                inputs={
                    "faceworld_info": "faceworld_info",
                    "evaluate": "params:evaluate",
                    "common": "params:common",
                    **recognizers,
                },
                outputs=["verification", "verification_markdown", "evaluate_mlflow_metrics"],
                name="compare_recognizers",
            ),
        ]
    )
