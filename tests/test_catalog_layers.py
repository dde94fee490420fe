"""Every catalog entry carries its kedro-viz layer, named after its data/0N_<layer> folder, and
every dataset a registered pipeline reads or writes resolves to such an entry (kedro-viz draws a
dataset outside the catalog without a layer)."""

from __future__ import annotations

import pytest
import yaml
from kedro.io.catalog_config_resolver import CatalogConfigResolver

from face_pipelines.pipeline_registry import register_pipelines
from tests.conftest import REPO

LAYERS = {
    "01_raw": "raw",
    "02_intermediate": "intermediate",
    "03_primary": "primary",
    "04_feature": "feature",
    "05_model_input": "model_input",
    "06_models": "models",
    "07_model_output": "model_output",
    "08_reporting": "reporting",
}
CATALOGS = sorted(REPO.glob("conf/*/catalog*.yml"))
BASE = yaml.safe_load((REPO / "conf/base/catalog.yml").read_text())


def _layer(entry: dict) -> str | None:
    return ((entry.get("metadata") or {}).get("kedro-viz") or {}).get("layer")


def _expected_layer(entry: dict) -> str:
    inner = entry.get("dataset") if isinstance(entry.get("dataset"), dict) else {}
    path = entry.get("path") or entry.get("filepath") or inner.get("filepath") or inner.get("path")
    if path is None:  # MLflow metric histories have no file: they report, like the JSON reports
        assert entry["type"].endswith("MlflowMetricsHistoryDataset"), entry
        return "reporting"
    return LAYERS[path.split("/")[1]]


@pytest.mark.parametrize("catalog", CATALOGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_entry_and_factory_has_the_layer_of_its_folder(catalog):
    entries = yaml.safe_load(catalog.read_text()) or {}
    wrong = {
        name: (_layer(entry), _expected_layer(entry))
        for name, entry in entries.items()
        if _layer(entry) != _expected_layer(entry)
    }
    assert not wrong, f"{catalog.name}: entry -> (layer, expected from its folder): {wrong}"


def test_every_pipeline_dataset_resolves_to_an_entry_with_a_layer():
    resolver = CatalogConfigResolver(BASE)
    datasets = set().union(*(p.datasets() for p in register_pipelines().values()))
    unlayered = []
    for name in sorted(d for d in datasets if not d.startswith("params:") and d != "parameters"):
        if name in BASE:
            entry = BASE[name]
        elif resolver.match_dataset_pattern(name):
            entry = resolver.resolve_pattern(name)
        else:
            entry = {}
        if _layer(entry) not in LAYERS.values():
            unlayered.append(name)
    assert not unlayered, f"not in conf/base/catalog.yml with a kedro-viz layer: {unlayered}"
