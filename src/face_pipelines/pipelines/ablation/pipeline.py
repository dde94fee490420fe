"""ablation: ArcFace vs TopoFR vs TopoFR without SDE (or any recipe variants) on the real subset and
the synthetic dataset - same seed and budget - as one table (json + markdown + figure + MLflow).
Not part of the default run: `kedro run --pipelines ablation` after the recognizer pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import run_recognizer_ablation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                run_recognizer_ablation,
                inputs=[
                    "real.training_set",
                    "synthetic.training_set",
                    "faceworld_info",
                    "ablation_dir",
                    "params:ablation",
                    "params:recognizer",
                    "params:evaluate",
                    "params:common",
                ],
                outputs=[
                    "ablation_table",
                    "ablation_markdown",
                    "ablation_figure",
                    "ablation_mlflow_metrics",
                ],
                name="run_recognizer_ablation",
            ),
        ]
    )
