"""Render the Helm chart offline (helm-python-sdk: Helm's own Go SDK in a wheel, no binary, no
cluster) for a matrix of values, and split the output into Kubernetes objects.

``python -m tests.deploy.chart OUTDIR`` writes every case's manifests to OUTDIR/<case>/ for
tools that read files (checkov in ``.ci/run``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "budgetd"
RELEASE = "demo"
NAMESPACE = "budgets"
KUBE_VERSION = "1.31"
# The optional Valkey subchart is declared but not vendored (no download here): lint reports
# it as a warning, and rendering works without it while valkey.enabled is false.
MISSING_DEPENDENCY = "chart directory is missing these dependencies: valkey"

DIGEST = "0" * 64
KEYS = [
    {"sha256": DIGEST, "org": "acme", "role": "app", "name": "checkout"},
    {"sha256": "1" * 64, "org": "acme", "role": "admin", "name": "finance"},
]
ACME = """\
org: acme
timezone: America/New_York
budgets:
  - {name: org-month, scope: org, limit_usd: 5000, period: month}
"""

CASES: dict[str, dict[str, Any]] = {
    # Nothing set: one pod on the embedded store, auth on with the smoke-test key.
    "default": {},
    "production": {
        "replicaCount": 3,
        "image": {"repository": "registry.example.com/budgetd", "digest": "sha256:" + "a" * 64},
        "redis": {"existingSecret": "budgetd-redis", "existingSecretKey": "url"},
        "auth": {"keys": KEYS},
        "policies": {"acme.yaml": ACME},
        "config": {"workers": 2, "durability": "strict"},
        "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
        "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
        "networkPolicy": {
            "ingressFrom": [{"podSelector": {"matchLabels": {"app": "checkout"}}}],
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}},
            ],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True},
        "ledgerRetention": {"days": 90, "existingClaim": "budgetd-ledger"},
    },
    "cluster-redis": {
        "replicaCount": 3,
        "redis": {"url": "redis+cluster://redis-cluster.data.svc:6379"},
        "auth": {"existingSecret": "budgetd-keys", "existingSecretKey": "keys.yaml"},
        "existingPoliciesConfigMap": "budgetd-policies",
        "smokeTest": {"enabled": False},
    },
    "gateway": {
        "replicaCount": 2,
        "redis": {"url": "redis://redis.data.svc:6379/0"},
        "auth": {"keys": KEYS},
        "gateway": {
            "enabled": True,
            "upstreamKeysSecret": "anthropic-keys",
            "env": [{"name": "BUDGETD_GATEWAY_READ_TIMEOUT_S", "value": "300"}],
        },
    },
    "valkey-trial": {"replicaCount": 2, "valkey": {"enabled": True}},
    "auth-off": {"auth": {"enabled": False}, "smokeTest": {"enabled": False}},
}


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path → rendered text (empty templates left out), as `helm template` would."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return {path: text for path, text in rendered.items() if text.strip()}


def objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt is not one)."""
    found: list[dict[str, Any]] = []
    for path, text in render(values).items():
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def lint(values: dict[str, Any]) -> list[str]:
    """`helm lint --strict` findings, less the known missing-subchart warning."""
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    messages = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    return [m for m in [*messages, *report["errors"]] if MISSING_DEPENDENCY not in m]


def write_all(outdir: Path) -> None:
    for case, values in CASES.items():
        target = outdir / case
        target.mkdir(parents=True, exist_ok=True)
        for n, obj in enumerate(objects(values)):
            name = f"{n:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            (target / name).write_text(yaml.safe_dump(obj, sort_keys=False))


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
