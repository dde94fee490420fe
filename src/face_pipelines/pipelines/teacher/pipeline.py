"""The teacher pipeline (its nodes land with its issue; registered now so the stage names are stable)."""

from kedro.pipeline import Pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([])
