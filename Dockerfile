# The monitor's image: worker, relay, rules/dashboards generators and the traffic simulator.

# Stage 1: the wheel, with the native core (docs/native.md) compiled by the Rust toolchain of this image.
# Debian bookworm's python3 is 3.11, the same minor version and libc as the runtime image below.
FROM rust:1-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY monitor ./monitor
COPY native ./native
# The native build is optional for users; in the image it is not: fail here rather than ship pure Python.
RUN python3 -m venv /venv && /venv/bin/pip wheel --no-cache-dir --no-deps -w /wheels . \
    && /venv/bin/python -c "import glob, sys, zipfile; names = zipfile.ZipFile(glob.glob('/wheels/*.whl')[0]).namelist(); sys.exit(not any(n.startswith('monitor/_native') for n in names))"

# Stage 2: the runtime, without the toolchain.
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 mlmon \
    && mkdir -p /var/lib/mlmon && chown mlmon /var/lib/mlmon

USER mlmon
WORKDIR /var/lib/mlmon
ENTRYPOINT ["monitor"]
CMD ["--help"]
