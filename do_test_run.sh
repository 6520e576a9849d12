#!/usr/bin/env bash
# Build the image, run it on test/input as Grand Challenge does, and compare the result with the model's own
# expected output, model/expected_output.json (same classes, confidences within 1e-3; training.export writes it
# with the model; after changing model/ by hand: make expected).
# As on the platform: no network, input read-only, /tmp a volume, the GPU when the host has one.
# Without a Docker engine it stops first (do_build.sh's check), naming the checks that run without one.
# Usage: ./do_test_run.sh [TAG]
#   AMF_TEST_TARBALL=1 ./do_test_run.sh   also mounts model/ at /opt/ml/model, the path of a model tarball
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER_IMAGE_TAG="${1:-midog25-track2-amf}"
DOCKER_NOOP_VOLUME="${DOCKER_IMAGE_TAG}-volume"
INPUT_DIR="${SCRIPT_DIR}/test/input"
OUTPUT_DIR="${SCRIPT_DIR}/out/test-run"
RESULT="${OUTPUT_DIR}/multiple-mitotic-figure-classification.json"
EXPECTED="${SCRIPT_DIR}/model/expected_output.json"

echo "=+= (Re)building the container"
"${SCRIPT_DIR}/do_build.sh" "$DOCKER_IMAGE_TAG"

cleanup() {
    # The container writes as its own user: open its files to the host user, drop the /tmp volume.
    docker run --rm --platform=linux/amd64 --quiet \
        --volume "$OUTPUT_DIR":/output \
        --entrypoint /bin/sh \
        "$DOCKER_IMAGE_TAG" \
        -c "chmod -R -f o+rwX /output/* || true"
    docker volume rm "$DOCKER_NOOP_VOLUME" > /dev/null 2>&1 || true
}

if [ -d "$OUTPUT_DIR" ]; then
    # a previous run's files, opened to us by its cleanup
    rm -rf "${OUTPUT_DIR:?}"/*
fi
mkdir -p "$OUTPUT_DIR"
chmod o+rwx "$OUTPUT_DIR"
trap cleanup EXIT

GPU_ARGS=()
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi > /dev/null 2>&1; then
    GPU_ARGS=(--gpus all)
else
    echo "=+= No GPU on this host: the algorithm will run on the CPU"
fi
MODEL_ARGS=()
if [ "${AMF_TEST_TARBALL:-0}" = "1" ]; then
    MODEL_ARGS=(--volume "${SCRIPT_DIR}/model":/opt/ml/model:ro)
fi

echo "=+= Doing a forward pass"
# --network none: the platform gives no internet; /tmp: the platform mounts it as a volume.
docker volume create "$DOCKER_NOOP_VOLUME" > /dev/null
docker run --rm \
    --platform=linux/amd64 \
    --network none \
    ${GPU_ARGS[@]+"${GPU_ARGS[@]}"} \
    --volume "$INPUT_DIR":/input:ro \
    --volume "$OUTPUT_DIR":/output \
    --volume "$DOCKER_NOOP_VOLUME":/tmp \
    ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"} \
    "$DOCKER_IMAGE_TAG"

echo "=+= Wrote ${RESULT}"
echo "=+= Comparing with ${EXPECTED}"
python3 "${SCRIPT_DIR}/test/compare_output.py" "$RESULT" "$EXPECTED"
