#!/usr/bin/env bash
# The FaceWorld study (docs/study.md): one `dvc exp run` per point, each on top of the default
# chain's results (dvc.lock), so only the stages whose parameters change re-run (sample, render,
# recognizer - the real-trained baseline is reused - and evaluate). Every kedro run is tracked in
# MLflow with its DVC experiment name as tag `dvc_exp`; the tables come from
#     face-pipelines compare --param ... (see docs/study.md)   and   dvc exp show.
# Run from the project root after the default chain (`dvc repro evaluate`). About 2.5 CPU hours on 2
# cores (cheapest points first); a point can be run on its own: `bash docs/study.sh c-sigma-015`; an
# interrupted study resumes with the points that have no experiment yet.
set -euo pipefail

SAMPLE=conf/base/parameters_sample.yml
RENDER=conf/base/parameters_render.yml

point() {  # point NAME [-S file:key=value ...]
  local name=$1
  shift
  if [[ -n "${ONLY:-}" && "$ONLY" != "$name" ]]; then return; fi
  if [[ -z "${ONLY:-}" ]] && grep -qx "$name" <<<"$DONE"; then
    echo "=== $name: done already (dvc exp list)"
    return
  fi
  git checkout -q -- conf/base  # each point changes one knob relative to the defaults
  echo "=== $name ($(date +%H:%M:%S))"
  dvc exp run --name "$name" "$@" evaluate
}

ONLY=${1:-}
# Resumable: a full run skips the points that already have an experiment (rerun one by naming it).
DONE=$(dvc exp list --all-commits --name-only 2>/dev/null || true)
# (a), (f) and the 1x / default point of every sweep: the default chain, evaluated under a name.
if [[ "$ONLY" == baseline ]] || { [[ -z "$ONLY" ]] && ! grep -qx baseline <<<"$DONE"; }; then
  echo "=== baseline ($(date +%H:%M:%S))"
  dvc exp run --name baseline --force --single-item evaluate
fi
# (e) AttrOP off: the same plan rendered without the attribute optimisation.
point e-attrop-off -S "$RENDER:render.attrop_enabled=false"
# (c) sigma: intra-class noise (x the real features' per-dim std); default mix 0.3/0.5/0.7 (mean 0.46).
point c-sigma-015 -S "$SAMPLE:sample.config.sigma_mix=[[0.15,1.0]]"
point c-sigma-100 -S "$SAMPLE:sample.config.sigma_mix=[[1.0,1.0]]"
# (d) identity separation: the threshold is this quantile of real centres' nearest-identity cosines
#     (default 0.95 -> 0.81, which rejects < 1% of candidates); stricter = more separated identities.
point d-quantile-050 -S "$SAMPLE:sample.config.calibration_quantile=0.5"
# (b) scaling the number of synthetic identities at 20 images each: 0.5x, 2x and 4x the real 500
#     (the 1x point is the baseline).
point b-ids-05x -S "$SAMPLE:sample.config.n_ids=250"
point b-ids-2x -S "$SAMPLE:sample.config.n_ids=1000"
point d-quantile-010 -S "$SAMPLE:sample.config.calibration_quantile=0.1"
point b-ids-4x -S "$SAMPLE:sample.config.n_ids=2000"
git checkout -q -- conf/base

# Every point's evaluate run, from MLflow: the table docs/study.md quotes, and its figure.
face-pipelines compare --filter "tags.dvc_exp LIKE '%'" \
  --markdown docs/study_runs.md --csv docs/study_runs.csv --plot docs/img/study_runs.png
