# budgetd: one uvicorn process per container (scale with replicas; BUDGETD_WORKERS for more).
# Build: docker build -t budgetd .   Run: docker run -p 8080:8080 -e BUDGETD_REDIS_URL=redis://... budgetd
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 budgetd \
 && useradd --system --uid 10001 --gid budgetd --home-dir /app --shell /usr/sbin/nologin budgetd

WORKDIR /app
# Only what `pip install .` needs (no tests, bench, .git). httptools: uvicorn's fast HTTP
# parser, which `budgetd serve` uses when it is installed.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip install . httptools \
 && rm -rf /app/service /root/.cache

# The shipped price table; mount a policy directory over /etc/budgetd/policies in real use.
COPY policies /etc/budgetd/policies

USER 10001:10001

ENV BUDGETD_HOST=0.0.0.0 \
    BUDGETD_PORT=8080 \
    BUDGETD_POLICY_DIR=/etc/budgetd/policies

EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BUDGETD_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status == 200 else 1)"]

CMD ["budgetd", "serve"]
