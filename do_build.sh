#!/usr/bin/env bash
# Build the algorithm image (needs Docker).
# Usage: ./do_build.sh [TAG]        (default tag: midog25-track2-amf)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER_IMAGE_TAG="${1:-midog25-track2-amf}"

echo "=+= Building ${DOCKER_IMAGE_TAG}"
docker build "$SCRIPT_DIR" \
    --platform=linux/amd64 \
    --tag "$DOCKER_IMAGE_TAG" 2>&1
