"""elegant (opt-in): real subset + attribute labels -> attribute classifier, ELEGANT editor, grids;
elegant_edit (opt-in, after render): synthetic dataset -> attribute-edited copy (a new dataset) +
    edit report + card.
elegant_eval (the edited set's recognizer and table) is the shared chain's nodes under the
`elegant` namespace: pipeline_registry builds it."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    edit_synthetic_attributes,
    train_attribute_editor,
    train_edit_classifier,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_edit_classifier,
                inputs=[
                    "subset_packed_dir",
                    "subset_packed_manifest",
                    "elegant_dir",
                    "params:elegant",
                    "params:common",
                ],
                outputs="elegant_classifier_report",
                name="train_elegant_attribute_classifier",
            ),
            Node(
                train_attribute_editor,
                inputs=[
                    "subset_packed_dir",
                    "subset_packed_manifest",
                    "elegant_dir",
                    "elegant_classifier_report",
                    "judge_summary",
                    "params:elegant",
                    "params:teacher",
                    "params:common",
                ],
                outputs=["elegant_report", "elegant_grid_plot", "elegant_mlflow_metrics"],
                name="train_elegant",
            ),
        ]
    )


def create_edit_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                edit_synthetic_attributes,
                inputs=[
                    "synthetic_dir",
                    "synthetic_dataset_info",
                    "dataset_card",
                    "elegant_edited_dir",
                    "elegant_report",
                    "elegant_classifier_report",
                    "judge_summary",
                    "subset_packed_dir",
                    "subset_packed_manifest",
                    "params:elegant",
                    "params:teacher",
                    "params:common",
                ],
                outputs=[
                    "elegant_edit_report",
                    "elegant_edit_mlflow_metrics",
                    "elegant_synthetic_dataset_info",
                    "elegant_dataset_card",
                ],
                name="edit_synthetic_attributes",
            ),
        ]
    )
