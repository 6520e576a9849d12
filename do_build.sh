#!/usr/bin/env bash
# Build the algorithm image (needs Docker). do_test_run.sh and do_save.sh build through it, so a machine without a
# Docker engine is told here, before anything is built, which checks run without one.
# Usage: ./do_build.sh [TAG]        (default tag: midog25-track2-amf)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER_IMAGE_TAG="${1:-midog25-track2-amf}"

if ! command -v docker > /dev/null 2>&1 || ! docker info > /dev/null 2>&1; then
    echo "=+= Without a Docker engine these run: make demo (the container's entrypoint on model/, in the image's"
    echo "=+= runtime, on the sample job), make test (the container's checks, the model's tests, the runtime built"
    echo "=+= from requirements.txt alone) and ./do_save_model.sh (the model tarball, out/model_<date>.tar.gz)."
    echo "error: no Docker engine answers here (docker info failed): install Docker or start its daemon" >&2
    exit 2
fi

echo "=+= Building ${DOCKER_IMAGE_TAG}"
docker build "$SCRIPT_DIR" \
    --platform=linux/amd64 \
    --tag "$DOCKER_IMAGE_TAG" 2>&1
