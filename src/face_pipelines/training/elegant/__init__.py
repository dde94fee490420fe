"""Training ELEGANT (seed 004) and using it: exemplar attribute transfer, interpolation grids, and the
attribute classifier that judges whether an edit worked.

Modules: config (recipes), data (labels, training pairs), losses, trainer (train_elegant),
inference (transfer, grids, edit scores), classifier (the judge of attributes), editing (a synthetic
dataset edited into a new one). The names below are the package's API for nodes and params.

Iterative training, one attribute per iteration, cycling over the n attributes (batch k trains
attribute k mod n). A batch holds pairs (A, B): A has attribute i, B lacks it, drawn independently
(unpaired identities; B is re-drawn when it shares A's identity). With z = Enc(x):

    z_C, z_D = swap slot i of z_A and z_B
    A' = A + Dec([z_A, z_A])    B' = B + Dec([z_B, z_B])       reconstructions
    C  = A + Dec([z_C, z_A])    D  = B + Dec([z_D, z_B])       A without i, B with A's i
    labels: y_C = y_A with y_i = 0, y_D = y_B with y_i = 1

    D loss (both scales, least squares): real (A, y_A) and (B, y_B) -> 1; (C, y_C), (D, y_D) -> 0;
           plus `mismatch_weight` x [(A, y_A with i flipped), (B, y_B with i flipped)] -> 0
    G loss: recon_weight x (|A' - A| + |B' - B|) + adversarial (C, y_C) and (D, y_D) -> 1

The mismatch term is this project's addition to the paper (a matching-aware discriminator): a real
image shown with the wrong label for attribute i counts as fake, so D must check the attribute
itself, not only realism - on small CPU runs this is what makes the edits change the attribute.
Least-squares GAN losses keep the early, unbalanced phase stable.

The attribute classifier (`AttributeClassifier`, models/attributes.py) is a small CNN trained with
binary cross-entropy on the labels of the real subset, identity-disjoint held-out split for its
accuracy; it never enters ELEGANT's loss, so the edit success it measures is not self-graded.
"""

from face_pipelines.training.elegant.classifier import train_attribute_classifier
from face_pipelines.training.elegant.config import AttributeClassifierConfig, ELEGANTTrainConfig
from face_pipelines.training.elegant.data import (
    AttributePairDataset,
    attribute_labels,
    attribute_labels_by_path,
    read_label_table,
)
from face_pipelines.training.elegant.editing import EDIT_COLUMNS, choose_edits, edit_dataset
from face_pipelines.training.elegant.inference import (
    classify_attributes,
    interpolation_grid,
    score_edits,
    transfer_attribute,
)
from face_pipelines.training.elegant.trainer import train_elegant

__all__ = [
    "EDIT_COLUMNS",
    "AttributeClassifierConfig",
    "AttributePairDataset",
    "ELEGANTTrainConfig",
    "attribute_labels",
    "attribute_labels_by_path",
    "choose_edits",
    "classify_attributes",
    "edit_dataset",
    "interpolation_grid",
    "read_label_table",
    "score_edits",
    "train_attribute_classifier",
    "train_elegant",
    "transfer_attribute",
]
