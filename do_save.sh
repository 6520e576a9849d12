#!/usr/bin/env bash
# Build the image and save it for upload to Grand Challenge, with the model tarball beside it:
#   out/<TAG>_<date>.tar.gz    the image (docker save, gzipped)
#   out/model_<date>.tar.gz    the contents of model/ (ensemble.json at its root), which the
#                              platform unpacks at /opt/ml/model, where inference.py looks first
#                              (do_save_model.sh, which makes it alone, without Docker)
# Refused first, in one line, when model/ holds a file its manifest and card do not name (make install-model).
# Then the preflight (make preflight: the container as packaged, on labelled data, against what the model's card
# says; docs/evaluation.md) on PREFLIGHT_DATA, by default ../shared/data/amibr-train where it is there; a FAIL stops
# here. PREFLIGHT_DATA= (empty) saves without it.
# Usage: ./do_save.sh [TAG]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER_IMAGE_TAG="${1:-midog25-track2-amf}"
STAMP="$(date +"%Y%m%d_%H%M%S")"
OUT_DIR="${SCRIPT_DIR}/out"
IMAGE_TARBALL="${OUT_DIR}/${DOCKER_IMAGE_TAG}_${STAMP}.tar.gz"

# every file that ships is the model's: one its manifest or card names (training/ownership.py, standard library)
(cd "$SCRIPT_DIR" && python3 -m training.ownership model)

if [ -z "${PREFLIGHT_DATA+set}" ] && [ -d "${SCRIPT_DIR}/../shared/data/amibr-train" ]; then
    PREFLIGHT_DATA="${SCRIPT_DIR}/../shared/data/amibr-train"
fi
if [ -n "${PREFLIGHT_DATA:-}" ]; then
    if [ ! -d "$PREFLIGHT_DATA" ]; then
        echo "error: PREFLIGHT_DATA=${PREFLIGHT_DATA} is not a folder" >&2
        exit 2
    fi
    echo "=+= Preflight of model/ on ${PREFLIGHT_DATA}"
    make --no-print-directory -C "$SCRIPT_DIR" preflight MODEL=model DATA="$(cd "$PREFLIGHT_DATA" && pwd)" || {
        echo "error: the preflight did not pass (its lines above); nothing saved (PREFLIGHT_DATA= saves without it)" >&2
        exit 2
    }
elif [ -n "${PREFLIGHT_DATA+set}" ]; then
    echo "=+= No preflight: PREFLIGHT_DATA is empty"
else
    echo "=+= No preflight: no labelled data here (PREFLIGHT_DATA=DIR ./do_save.sh runs it first; docs/evaluation.md)"
fi

"${SCRIPT_DIR}/do_build.sh" "$DOCKER_IMAGE_TAG"
mkdir -p "$OUT_DIR"

echo "=+= Exporting the image to ${IMAGE_TARBALL}"
docker save "$DOCKER_IMAGE_TAG" | gzip -c > "$IMAGE_TARBALL"

"${SCRIPT_DIR}/do_save_model.sh" "$STAMP"
echo "=+= Saved ${IMAGE_TARBALL}"
