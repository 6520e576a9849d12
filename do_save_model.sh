#!/usr/bin/env bash
# The model tarball, no Docker needed: out/model_<date>.tar.gz, the contents of model/ (ensemble.json at its
# root), which Grand Challenge unpacks at /opt/ml/model, where inference.py looks first. Upload it on the
# algorithm's Models page once its image is there ("upload the image once, then each model"); do_save.sh makes
# it beside the image.
# Usage: ./do_save_model.sh [STAMP]        (default: the date and time, as do_save.sh names its files)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAMP="${1:-$(date +"%Y%m%d_%H%M%S")}"
OUT_DIR="${SCRIPT_DIR}/out"
MODEL_TARBALL="${OUT_DIR}/model_${STAMP}.tar.gz"

if [ ! -f "${SCRIPT_DIR}/model/ensemble.json" ]; then
    echo "error: ${SCRIPT_DIR}/model has no ensemble.json: no model to save" >&2
    exit 2
fi
# every file that ships is the model's: one its manifest or card names (training/ownership.py, standard library)
(cd "$SCRIPT_DIR" && python3 -m training.ownership model)
mkdir -p "$OUT_DIR"
echo "=+= Creating the model tarball ${MODEL_TARBALL}"
(cd "${SCRIPT_DIR}/model" && tar -czf "$MODEL_TARBALL" -- ./*)
echo "=+= Saved ${MODEL_TARBALL}"
