"""elegant (opt-in): real subset + attribute labels -> attribute classifier, ELEGANT editor, grids;
elegant_edit (opt-in, after render): synthetic dataset -> attribute-edited copy + edit report + card;
elegant_eval (opt-in, after elegant_edit and recognizer): a recognizer trained on the edited copy
    (the recognizer plan's image count and selection) verified next to the unedited-set and real ones."""

from kedro.pipeline import Node, Pipeline

from face_pipelines.pipelines.recognizer.pipeline import synthetic_set_instance

from .nodes import (
    edit_synthetic_attributes,
    evaluate_elegant_recognizers,
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


def create_eval_pipeline(**kwargs) -> Pipeline:
    # The edited copy keeps the synthetic set's paths, so the recognizer plan's count and seed
    # select the same images as for the unedited set: only the edits differ.
    edited = synthetic_set_instance(
        "elegant_set", "recognizer_training_plan", "elegant_synthetic_dataset_info"
    )
    return edited + Pipeline(
        [
            Node(
                evaluate_elegant_recognizers,
                inputs=[
                    "elegant_set.summary",
                    "synthetic.summary",
                    "real.summary",
                    "faceworld_info",
                    "params:evaluate",
                    "params:common",
                ],
                outputs=[
                    "elegant_verification",
                    "elegant_verification_markdown",
                    "elegant_evaluate_mlflow_metrics",
                ],
                name="evaluate_elegant_recognizers",
            ),
        ]
    )
