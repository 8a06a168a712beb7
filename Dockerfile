# syntax=docker/dockerfile:1
# budgetd: built with uv from the committed uv.lock, in two stages.
#   docker build -t budgetd:0.1.0 .
#   docker run -p 8080:8080 -e BUDGETD_REDIS_URL=redis://redis:6379/0 budgetd:0.1.0
# The runtime stage has the virtualenv and the price table only: no pip, setuptools, uv,
# compilers or test packages. It keeps the embedded store (fakeredis, lupa: under 2 MB) so
# that, like `budgetd serve`, it runs without a Redis as one process: the chart's trial mode.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# uv comes from PyPI, pinned; the lock file pins everything else.
RUN pip install --no-cache-dir uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/budgetd
WORKDIR /src
# Dependencies first, from the lock alone: this layer is rebuilt only when uv.lock or
# pyproject.toml change, not on every code change. Left out of the runtime: polyfactory and
# Faker (test-data generators), which Litestar imports only to generate OpenAPI examples,
# and budgetd does not ask for them.
ENV UV_NO_INSTALL="--no-install-package polyfactory --no-install-package faker"
# Optional extras, e.g. --build-arg UV_EXTRAS="--extra otel" for OpenTelemetry traces.
ARG UV_EXTRAS=""
COPY pyproject.toml uv.lock ./
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project $UV_EXTRAS $UV_NO_INSTALL
# Then the code, installed as a regular (non-editable) package into the same environment.
COPY README.md ./
COPY service ./service
# budgetd_client ships in the same package: `budgetd gateway` runs on its core.
COPY clients/python/src ./clients/python/src
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable $UV_EXTRAS $UV_NO_INSTALL

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="budgetd" \
      org.opencontainers.image.description="Spend budgets and rate quotas for Claude API calls: reserve, commit, release on Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-bookworm"

# The base image's pip and setuptools are build tools: the runtime does not need them.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && groupadd --system --gid 10001 budgetd \
 && useradd --system --uid 10001 --gid budgetd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin budgetd \
 && mkdir -p /etc/budgetd/policies

COPY --from=build /opt/budgetd /opt/budgetd
# The shipped price table lives apart from the policy directory, so a ConfigMap mounted over
# /etc/budgetd/policies never hides it. No example policy: mount your own (the chart does).
COPY policies/pricing.yaml /usr/share/budgetd/pricing.yaml

ENV PATH=/opt/budgetd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BUDGETD_HOST=0.0.0.0 \
    BUDGETD_PORT=8080 \
    BUDGETD_POLICY_DIR=/etc/budgetd/policies \
    BUDGETD_PRICING_FILE=/usr/share/budgetd/pricing.yaml

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BUDGETD_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["budgetd"]
CMD ["serve"]
