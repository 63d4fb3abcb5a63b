# syntax=docker/dockerfile:1
#
# netpol-agent node image: docker build -t ghcr.io/netpol-agent/netpol-agent:0.1.0 .
#
# Two stages on the same base: `build` compiles wheels (netfilterqueue has a C extension against
# libnetfilter_queue), the runtime stage installs them next to the netfilter tools and the two
# shared libraries, with no compiler and no headers.
#
# The base is pinned by its full version tag. A digest (python:3.11.13-slim-bookworm@sha256:...)
# would pin it byte for byte; resolve one with `docker buildx imagetools inspect` where a
# registry is reachable and append it to both FROM lines (it could not be resolved where this
# file was written).
#
# Debian packages are pinned to their bookworm versions. libc6-dev is pinned to a version pattern,
# bookworm's glibc series 2.36-9+deb12u*: it must equal the base image's libc6 exactly, and that
# moves with Debian's security updates.

FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        gcc=4:12.2.0-3 \
        'libc6-dev=2.36-9+deb12u*' \
        libnetfilter-queue-dev=1.0.5-3 \
        libnfnetlink-dev=1.0.2-2 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > requirements.txt \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

COPY README.md ./
COPY agent ./agent
COPY enforcement ./enforcement
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


FROM python:3.11.13-slim-bookworm

# The agent runs iptables-restore, ip6tables-restore and iptables/ip6tables (package iptables,
# nf_tables backend by default) and ipset; netfilterqueue links against libnetfilter-queue1 and
# libnfnetlink0. Nothing else: no conntrack CLI (the agent keeps its own flow table), no nft CLI
# (a recommendation of iptables, left out).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        iptables=1.8.9-2 \
        ipset=7.17-1 \
        libnetfilter-queue1=1.0.5-3 \
        libnfnetlink0=1.0.2-2 \
    && rm -rf /var/lib/apt/lists/*

# Bytecode is compiled at install time; the root filesystem is read-only at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl

# No USER: the agent must be uid 0 in the host network namespace. iptables, ipset and the NFQUEUE
# binding need CAP_NET_ADMIN, and Kubernetes only makes added capabilities effective for root
# (daemonset.yaml drops every other capability and keeps the root filesystem read-only).
# No HEALTHCHECK: the DaemonSet's liveness and readiness probes use /healthz and /readyz.
ENTRYPOINT ["netpol-agent"]
CMD ["--help"]
