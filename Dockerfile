# One image for every ctloop process (processors, trainer, sink, demo app): `ctloop <command>`.
# CPU torch by default; for the GPU trainer build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t ctloop:gpu .
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 CTLOOP_DATA_DIR=/data

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams streams
COPY processors processors
COPY trainers trainers
COPY infra infra
COPY schemas schemas
COPY setup.py ./
# gcc builds the SDK's C encoder (streams/_speedups.c; optional, about twice the log_prediction rate),
# then goes away again.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple torch \
    && pip install . \
    && python -c "import streams._speedups" \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 ctloop && mkdir -p /data /artifacts && chown ctloop /data /artifacts
USER ctloop
VOLUME ["/data", "/artifacts"]
ENTRYPOINT ["ctloop"]
CMD ["--help"]
