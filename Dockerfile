# MIDOG 2025 Track 2 algorithm container: the ONNX ensemble in model/ behind inference.py.
# Build and test with ./do_build.sh and ./do_test_run.sh; export with ./do_save.sh.
#
# CUDA 12 + cuDNN 9 runtime, because onnxruntime-gpu 1.22 (requirements.txt) is a CUDA 12 / cuDNN 9
# build; recent PyPI releases need CUDA 13, which the platform's drivers may not run.
# Host driver: >= 525.60.13 (CUDA 12 minor-version compatibility, cuDNN 9 for CUDA 12).
# Without a usable GPU the algorithm runs on the CPU and says so in one log line.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

# The image's CUDA 12.4 libraries run on any driver >= 525.60.13 (minor-version compatibility);
# skip the container toolkit's check for a 12.4 driver so that such hosts still get the GPU.
ENV NVIDIA_DISABLE_REQUIRE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's python3 (3.10) in a virtual environment. Distribution packages are not pinned:
# the base image's tag fixes the release, and its security updates should come in.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && groupadd --system --gid 1001 user \
    && useradd --system --uid 1001 --gid 1001 --create-home --no-log-init user

WORKDIR /opt/app

COPY requirements.txt /opt/app/
RUN pip install --no-cache-dir -r /opt/app/requirements.txt

# Runtime files only (.dockerignore keeps everything else out of the build context).
COPY amf/ /opt/app/amf/
COPY model/ /opt/app/model/
COPY resources/ /opt/app/resources/
COPY inference.py /opt/app/
# Byte-code compiled now, as root: the non-root user cannot write it, and each job is a fresh process.
RUN python -m compileall -q /opt/app/amf

# Not root; numeric so that the host (and Grand Challenge) can resolve it.
USER 1001:1001

ENTRYPOINT ["python", "inference.py"]
