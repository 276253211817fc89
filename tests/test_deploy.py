"""docs/deploy/: Kubernetes manifests checked against the Kubernetes API's strict JSON schemas (offline),
and against each other: probes on Triton's health endpoints, the Service routing to the pods."""

from pathlib import Path

import pytest
import yaml

from compiler.serving import probe

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test dependency")

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
KUBERNETES = "1.30.0"  # the oldest Kubernetes these manifests target


def manifests() -> dict:
    return {doc["kind"]: doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc}


@pytest.mark.parametrize("path", sorted(DEPLOY.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema_strictly(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # unknown or misspelled fields fail


def test_a_misspelled_field_is_caught():
    deployment = manifests()["Deployment"]
    deployment["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_probes_score_through_the_probe_script_and_metrics_are_scraped():
    pod = manifests()["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    probes = {kind: container[kind]["exec"]["command"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for kind, command in probes.items():  # the probe script, where the ConfigMap holding it is mounted
        assert command[:2] == ["python3", f"{mounts['stca-probe']}/probe.py"], kind
        args = probe.parser().parse_args(command[2:])  # the probe's own arguments, its own parser
        assert args.url == f"127.0.0.1:{ports['http']}", kind
    assert [probes[k].count("--liveness") for k in probes] == [0, 0, 1]  # only liveness forgives a busy server
    assert volumes["stca-probe"]["configMap"]["name"] == "stca-probe"
    assert container["livenessProbe"]["failureThreshold"] * container["livenessProbe"]["periodSeconds"] >= 60
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    args = container["args"]
    assert any(a.startswith("--model-repository=s3://") for a in args) and "--strict-model-config=true" in args


def test_the_service_and_the_budget_select_the_deployments_pods():
    m = manifests()
    labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"] for p in m["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in m["Service"]["spec"]["ports"]} == container_ports
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < m["Deployment"]["spec"]["replicas"]
