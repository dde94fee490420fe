"""The project skeleton: imports, pipeline registry, config environments, DVC stages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from face_pipelines.errors import ParameterError
from face_pipelines.params import validate_all, validate_section

STAGES = {"subset", "teacher", "vec2face", "sample", "render", "recognizer", "evaluate"}


def _loader(conf: Path, env: str) -> OmegaConfigLoader:
    from face_pipelines import settings

    return OmegaConfigLoader(conf_source=str(conf), env=env, **settings.CONFIG_LOADER_ARGS)


def test_pipelines_register(repo_root):
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(repo_root)
    names = set(pipelines.keys())
    assert STAGES | {"synth", "__default__"} <= names
    synth_nodes = {n.name for n in pipelines["synth"].nodes}
    default_nodes = {n.name for n in pipelines["__default__"].nodes}
    for stage in ("subset", "teacher", "vec2face", "sample", "render"):
        assert {n.name for n in pipelines[stage].nodes} <= synth_nodes
    assert synth_nodes <= default_nodes
    assert "select_subset" in synth_nodes
    # The ablation is opt-in: registered, but not part of the default chain.
    assert "run_recognizer_ablation" not in default_nodes
    assert {n.name for n in pipelines["ablation"].nodes} == {"run_recognizer_ablation"}
    assert "train_drgan" not in default_nodes
    assert {n.name for n in pipelines["drgan"].nodes} == {"train_drgan"}
    assert {n.name for n in pipelines["elegant"].nodes} == {
        "train_elegant_attribute_classifier",
        "train_elegant",
    }
    assert {n.name for n in pipelines["elegant_edit"].nodes} == {"edit_synthetic_attributes"}
    # The edited set's recognizer and table: the shared chain's nodes under namespaces.
    assert {n.name for n in pipelines["elegant_eval"].nodes} == {
        "elegant_set.build_training_set",
        "elegant_set.train_recognizer",
        "elegant.compare_recognizers",
    }
    assert not {
        "train_elegant",
        "edit_synthetic_attributes",
        "elegant_set.train_recognizer",
    } & (default_nodes)
    # DR-GAN's set goes through the same render, recognizer and table nodes (namespace drgan).
    assert {n.name for n in pipelines["drgan_synth"].nodes} == {
        "drgan.sample_identities",
        "drgan.render_synthetic_dataset",
        "drgan.make_dataset_card",
    }
    assert {n.name for n in pipelines["drgan_eval"].nodes} == {
        "drgan.export_encoder",
        "drgan.plan_matched_training_set",
        "drgan_set.build_training_set",
        "drgan_set.train_recognizer",
        "drgan.compare_recognizers",
    }
    render_node = next(n for n in pipelines["render"].nodes if n.name == "render_synthetic_dataset")
    drgan_render = next(n for n in pipelines["drgan_synth"].nodes if "render" in n.name)
    assert drgan_render.func is render_node.func


@pytest.mark.parametrize("env", ["local", "paper"])
def test_config_loads_and_validates(repo_root, env):
    params = _loader(repo_root / "conf", env)["parameters"]
    assert set(params) >= STAGES
    validated = validate_all(params, conf_dirs=[repo_root / "conf" / "base"])
    assert validated["subset"].n_ids > 0


def test_paper_env_soft_merges_single_nested_keys(repo_root):
    base = _loader(repo_root / "conf", "local")["parameters"]
    paper = _loader(repo_root / "conf", "paper")["parameters"]
    # paper changes the subset size and source but keeps keys it does not mention
    assert paper["subset"]["n_ids"] != base["subset"]["n_ids"]
    assert paper["subset"]["seed"] == base["subset"]["seed"]
    assert paper["common"]["progress"] == base["common"]["progress"]
    assert paper["common"]["num_workers"] != base["common"]["num_workers"]


def test_mlflow_config_uses_sqlite_and_env_override(repo_root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    conf = _loader(repo_root / "conf", "local")["mlflow"]
    assert conf["server"]["mlflow_tracking_uri"] == "sqlite:///mlflow.db"
    assert conf["tracking"]["experiment"]["name"] == "face_pipelines"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    conf = _loader(repo_root / "conf", "local")["mlflow"]
    assert conf["server"]["mlflow_tracking_uri"] == "sqlite:////tmp/elsewhere.db"


def test_malformed_parameters_file_names_the_file(project_copy):
    bad = project_copy / "conf" / "base" / "parameters_subset.yml"
    bad.write_text("subset:\n  n_ids: [1, 2\n  seed: 0\n")
    with pytest.raises(Exception) as exc:
        _loader(project_copy / "conf", "local")["parameters"]
    assert "parameters_subset.yml" in str(exc.value)


def test_unknown_parameter_names_file_and_key(project_copy):
    f = project_copy / "conf" / "base" / "parameters_subset.yml"
    f.write_text(f.read_text().replace("n_ids:", "n_idz: 3\n  n_ids:", 1))
    params = _loader(project_copy / "conf", "local")["parameters"]
    with pytest.raises(ParameterError) as exc:
        validate_all(params, conf_dirs=[project_copy / "conf" / "base"])
    msg = str(exc.value)
    assert "parameters_subset.yml" in msg and "subset.n_idz" in msg and "unknown" in msg


def test_ill_typed_parameter_names_key():
    with pytest.raises(ParameterError) as exc:
        validate_section("subset", {"n_ids": "many"})
    assert "subset.n_ids" in str(exc.value)
    with pytest.raises(ParameterError) as exc:
        validate_section("common", {"device": "tpu"})
    assert "device" in str(exc.value)


def test_unknown_section_is_refused(project_copy):
    (project_copy / "conf" / "base" / "parameters_typo.yml").write_text("subsett: {n_ids: 3}\n")
    params = _loader(project_copy / "conf", "local")["parameters"]
    with pytest.raises(ParameterError, match=r"subsett.*parameters_typo.yml"):
        validate_all(params, conf_dirs=[project_copy / "conf" / "base"])


def test_dvc_lists_every_stage(repo_root):
    dvc = Path(sys.executable).with_name("dvc")
    out = subprocess.run(
        [str(dvc), "stage", "list", "--all"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    # The default chain in dvc.yaml; opt-in stages in opt_in/dvc.yaml run only when named.
    opt_in = {"ablation", "drgan", "elegant", "elegant_edit", "elegant_eval"}
    assert listed >= STAGES | {f"opt_in/dvc.yaml:{name}" for name in opt_in}


def test_kedro_cli_accepts_legacy_pipeline_flag(repo_root):
    kedro = Path(sys.executable).with_name("kedro")
    out = subprocess.run(
        [str(kedro), "run", "--help"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout
    assert "--pipeline" in out


def test_settings_turn_on_mlflow_system_metrics_unless_overridden():
    code = (
        "import os, face_pipelines.settings as s; "
        "print(os.environ['MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING'], "
        "os.environ['MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL'])"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["true", "10"], out.stderr[-2000:]
    env["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["false", "10"], out.stderr[-2000:]


def test_settings_make_openmp_waits_passive_before_torch_loads_unless_overridden():
    # The policy is read when torch's OpenMP runtime loads: record its value at torch's import.
    code = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY", "unset"))
sys.meta_path.insert(0, Spy())
import face_pipelines.settings
import torch
print(seen[0])
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["PASSIVE"], out.stderr[-2000:]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["ACTIVE"], out.stderr[-2000:]
