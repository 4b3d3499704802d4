# One image for every ctloop process (processors, trainer, sink, the traffic app, demo, bench):
# `ctloop <command>`. CPU torch by default; for the GPU trainer build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t ctloop:gpu .
# TORCH_VERSION pins torch (the version .ci/run tests with); tests/test_dockerfile.py lints this file
# (hadolint) and checks the pins. Never built on the project's machines (no Docker engine there).

# --- build: the ctloop wheel, with the SDK's C encoder (streams/_speedups.c; optional, about twice the
# log_prediction rate). gcc stays in this stage.
FROM python:3.11-slim AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY streams streams
COPY processors processors
COPY trainers trainers
COPY infra infra
COPY schemas schemas
COPY bench bench
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime: the installed wheel only, no source folder that could shadow it
FROM python:3.11-slim
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CTLOOP_DATA_DIR=/data CTLOOP_ARTIFACT_STORE=/artifacts
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX" "torch==${TORCH_VERSION}"
COPY --from=build /wheels /wheels
# the data folder is the working folder (no source tree in it): relative paths, and
# `ctloop bench --out results`, land there
WORKDIR /data
# the import check runs in isolated mode (-I) from /data: it finds the installed extension and
# packages, never a source tree that shadows them
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -I -c "import streams._speedups, infra.commands, infra.demo, bench"
RUN useradd --create-home --uid 10001 ctloop && mkdir -p /data /artifacts && chown 10001 /data /artifacts
USER 10001
VOLUME ["/data", "/artifacts"]
ENTRYPOINT ["ctloop"]
CMD ["--help"]
