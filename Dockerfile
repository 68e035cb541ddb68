# artd image: the daemon (default command) and the trainer (python -m core.train).
# Build: docker compose build. Runs on a GPU host with the NVIDIA Container Toolkit; the
# torch wheel pip picks on x86_64 is the CUDA 13 build, which needs a driver of 580 or newer.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a venv with the pinned dependencies and artd itself ---------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/artd/venv
# The large pair first, pinned exactly as in pyproject.toml (tests/test_deploy.py checks),
# so that a code change does not download them again.
RUN /opt/artd/venv/bin/pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY core /src/core
COPY daemon /src/daemon
RUN /opt/artd/venv/bin/pip install /src \
    && /opt/artd/venv/bin/python -c "import core; assert core.DEFAULT_CHECKPOINT.is_file(), 'no default model in the package'"

# --- runtime: the venv, an unprivileged user, nothing else -------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Ghostscript's CMYK profile: untagged CMYK inputs are converted through it (docs/colour.md).
RUN apt-get update && apt-get install -y --no-install-recommends libgs-common \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid so that bind-mounted folders can be given to it on the host.
RUN groupadd --system --gid 10001 artd \
    && useradd --system --uid 10001 --gid artd --home-dir /var/lib/artd --no-create-home \
        --shell /usr/sbin/nologin artd \
    && mkdir -p /var/lib/artd/data /var/lib/artd/checkpoints /var/lib/artd/training \
        /var/cache/artd/torch \
    && chown -R artd:artd /var/lib/artd /var/cache/artd
COPY --from=build /opt/artd/venv /opt/artd/venv
# The root file system is read-only under compose: caches go to /tmp (a tmpfs) or to the
# torch cache volume; HOME too, for libraries that insist on one.
ENV PATH=/opt/artd/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCH_HOME=/var/cache/artd/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ARTD_ROOT=/var/lib/artd/data \
    ARTD_CHECKPOINT=/var/lib/artd/checkpoints/current
USER artd:artd
WORKDIR /var/lib/artd
EXPOSE 9750
# SIGTERM drains (ARTD_DRAIN_SECONDS); the compose file's stop_grace_period waits for it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["artd"]
CMD ["run"]
