"""The Helm chart: lints, renders for every case of the matrix into objects Kubernetes accepts
(kubernetes-validate --strict), rejects typos through values.schema.json, and its default
install becomes ready and passes its own `helm test`."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import CASES, CHART, KUBE_VERSION, NAMESPACE, RELEASE, lint, objects
from tests.deploy.service import Service

REPO = CHART.parents[1]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def pod_specs(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Deployment"]
    return specs + [o["spec"] for o in objs if o["kind"] == "Pod"]


def selected(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(
        labels.get(e["key"]) in e["values"]
        for e in selector.get("matchExpressions", [])
        if e["operator"] == "In"
    )


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("case", CASES)
def test_lints_clean(case: str) -> None:
    assert lint(CASES[case]) == []


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_validates_strictly(case: str) -> None:
    objs = objects(CASES[case])
    assert objs
    for obj in objs:
        where = f"{case}: {obj['kind']} {obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            # Prometheus Operator kinds: no schema in kubernetes-validate; checked below.
            assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {str(exc).splitlines()[0]}")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCont": 3}, "additional properties 'replicaCont' not allowed"),
        ({"workers": "many"}, "additional properties 'workers' not allowed"),
        ({"config": {"workers": "many"}}, "/config/workers': got string, want integer"),
        ({"serviceMonitor": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
        ({"auth": {"keys": [{"sha256": "abc", "org": "acme"}]}}, "/auth/keys/0/sha256"),
        ({"ledgerRetention": {"days": 7}}, "/ledgerRetention/days"),
        ({"policies": {"pricing.yaml": "x"}}, "invalid propertyName 'pricing.yaml'"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 2}, "several budgetd processes need a shared Redis"),
        ({"config": {"workers": 2}}, "several budgetd processes need a shared Redis"),
        (
            {
                "redis": {"url": "redis://r:6379/0"},
                "auth": {"enabled": False},
                "gateway": {"enabled": True},
            },
            "gateway.enabled needs auth.enabled",
        ),
        (
            {"redis": {"url": "redis://r:6379/0"}, "smokeTest": {"enabled": False}},
            "auth.enabled is true but no keys are given",
        ),
    ],
)
def test_refuses_installs_that_cannot_work(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


@pytest.mark.parametrize("case", CASES)
def test_pods_are_locked_down(case: str) -> None:
    for spec in pod_specs(objects(CASES[case])):
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["limits"]["memory"]


@pytest.mark.parametrize("case", CASES)
def test_server_pods_are_probed_spread_and_covered(case: str) -> None:
    objs = objects(CASES[case])
    server = next(
        o for o in by_kind(objs, "Deployment") if not o["metadata"]["name"].endswith("-gateway")
    )
    pod = server["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["serve"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    labels = pod["metadata"]["labels"]
    selects = server["spec"]["selector"]["matchLabels"]
    assert selects.items() <= labels.items()
    for spread in pod["spec"]["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"] == selects
    services = [s for s in by_kind(objs, "Service") if s["spec"]["selector"] == selects]
    assert len(services) == 1
    for pdb in by_kind(objs, "PodDisruptionBudget"):
        if pdb["metadata"]["name"] == server["metadata"]["name"]:
            assert pdb["spec"]["selector"]["matchLabels"] == selects
    policy = by_kind(objs, "NetworkPolicy")[0]["spec"]
    assert selected(policy["podSelector"], labels)
    for test_pod in by_kind(objs, "Pod"):  # its egress to budgetd must not be cut
        assert not selected(policy["podSelector"], test_pod["metadata"]["labels"])
    # The price table comes from the image unless pricingTable overrides it: a policies
    # ConfigMap mounted over the directory never hides it.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "BUDGETD_PRICING_FILE" not in env
    assert "ENV PATH=/opt/budgetd/bin:$PATH" in (REPO / "Dockerfile").read_text()
    assert (
        "BUDGETD_PRICING_FILE=/usr/share/budgetd/pricing.yaml" in (REPO / "Dockerfile").read_text()
    )


def test_production_case_scales_on_cpu_and_is_monitored() -> None:
    objs = objects(CASES["production"])
    (hpa,) = by_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    server = by_kind(objs, "Deployment")[0]
    assert "replicas" not in server["spec"]  # the HPA owns it
    (monitor,) = by_kind(objs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    (rule,) = by_kind(objs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "BudgetdBudgetNearLimit",
        "BudgetdBudgetExhausted",
        "BudgetdStoreDown",
        "BudgetdReconcileDifferences",
        "BudgetdDeliveryDeadLetters",
        "BudgetdSlowDecisions",
    } <= alerts
    (dashboard,) = [o for o in by_kind(objs, "ConfigMap") if "budgetd.json" in o["data"]]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    env = {e["name"]: e for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BUDGETD_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "budgetd-redis"


def test_gateway_runs_the_gateway_command_beside_the_server() -> None:
    objs = objects(CASES["gateway"])
    gateway = next(
        o for o in by_kind(objs, "Deployment") if o["metadata"]["name"].endswith("-gateway")
    )
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "gateway"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["BUDGETD_REDIS_URL"] == "redis://redis.data.svc:6379/0"
    assert env["BUDGETD_KEYS_FILE"] == "/etc/budgetd/keys/keys.yaml"  # the gateway needs keys
    assert env["BUDGETD_GATEWAY_UPSTREAM_URL"] == "https://api.anthropic.com"
    assert env["BUDGETD_GATEWAY_PORT"] == str(container["ports"][0]["containerPort"])
    assert env["BUDGETD_GATEWAY_READ_TIMEOUT_S"] == "300"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["BUDGETD_GATEWAY_UPSTREAM_KEYS_DIR"] in mounts
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    selectors = [s["spec"]["selector"] for s in by_kind(objs, "Service")]
    assert len(selectors) == 2 and selectors[0] != selectors[1]


def _materialise(obj: dict[str, Any], directory: Path) -> None:
    """What the kubelet puts in a ConfigMap or Secret volume: one file per key."""
    directory.mkdir(parents=True)
    for key, text in obj.get("data", {}).items():
        raw = base64.b64decode(text).decode() if obj["kind"] == "Secret" else text
        (directory / key).write_text(raw)
    for key, text in obj.get("stringData", {}).items():
        (directory / key).write_text(text)


def test_default_install_becomes_ready_and_passes_helm_test(tmp_path: Path) -> None:
    """The default values, run the way the pod would run them: the rendered ConfigMap and
    Secret as mounted directories, the container's environment, the image's price table; then
    the `helm test` pod's own script (reserve, then release) against it."""
    objs = objects({})
    server = by_kind(objs, "Deployment")[0]
    container = server["spec"]["template"]["spec"]["containers"][0]
    volumes = {v["name"]: v for v in server["spec"]["template"]["spec"]["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        local = tmp_path / mount["name"]
        source = volume.get("configMap", {}).get("name") or volume.get("secret", {}).get(
            "secretName"
        )
        if source:
            (obj,) = [o for o in objs if o["metadata"]["name"] == source]
            _materialise(obj, local)
        else:
            local.mkdir()
        mounts[mount["mountPath"]] = local

    def local_path(value: str) -> str:
        for mount_path, local in mounts.items():
            if value == mount_path:
                return str(local)
            if value.startswith(mount_path + "/"):
                return str(local / value.removeprefix(mount_path + "/"))
        return value

    env = {e["name"]: local_path(e["value"]) for e in container["env"] if "value" in e}
    assert "BUDGETD_REDIS_URL" not in env  # the default is the embedded store, one pod
    # The image's ENV: the shipped price table, copied by the Dockerfile from this file.
    env["BUDGETD_PRICING_FILE"] = str(REPO / "policies" / "pricing.yaml")
    service = Service(env, tmp_path / "budgetd.log")
    try:
        ready = service.wait_ready().json()
        assert ready["policy"]["errors"] == []
        (test_pod,) = by_kind(objs, "Pod")
        assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        tester = test_pod["spec"]["containers"][0]
        test_env = {e["name"]: e["value"] for e in tester["env"]}
        (key_volume,) = test_pod["spec"]["volumes"]
        (secret,) = [o for o in objs if o["metadata"]["name"] == key_volume["secret"]["secretName"]]
        (key_mount,) = tester["volumeMounts"]
        assert key_mount["mountPath"] == test_env["KEY_DIR"]
        _materialise(secret, tmp_path / "test-key")
        test_env["KEY_DIR"] = str(tmp_path / "test-key")
        test_env["BUDGETD"] = service.url
        run = subprocess.run(
            [*tester["command"], *tester["args"]],
            env={"PATH": "/usr/bin:/bin", **test_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr + run.stdout + service.log.read_text()
        assert "reserved and released" in run.stdout
        assert '"held_micros"' in run.stdout and '"state":"released"' in run.stdout.replace(" ", "")
    finally:
        service.stop()


def test_values_file_matches_its_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))


def test_uv_lock_matches_pyproject() -> None:
    """The image installs from uv.lock with --frozen: a dependency added to pyproject.toml
    without `uv lock` would break the image build, so it breaks this test first."""
    uv = Path(sys.executable).parent / "uv"
    run = subprocess.run(
        [str(uv), "lock", "--check"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, "run `.venv/bin/uv lock` and commit uv.lock:\n" + run.stderr
