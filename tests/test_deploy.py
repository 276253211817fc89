"""docs/deploy/: Kubernetes manifests checked against the Kubernetes API's strict JSON schemas (offline),
and against each other: probes on Triton's health endpoints, the Service routing to the pods, the ingresses hashing
the routing key onto the Service.

Two sets, applied apart: docs/deploy/*.yaml (the GPU route) and docs/deploy/cpu/*.yaml (the CPU route: the python
target, with the history row cache)."""

import re
from pathlib import Path

import pytest
import yaml

from compiler.runtime.row_cache import DEFAULT_HISTORY_CACHE_BYTES
from compiler.serving import probe
from compiler.serving.routing import nginx_variable
from compiler.serving.server import SERVER_ENV

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is a test dependency")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy"
SETS = {"gpu": DEPLOY, "cpu": DEPLOY / "cpu"}  # each folder's *.yaml, applied together (kubectl apply -f <folder>)
KUBERNETES = "1.30.0"  # the oldest Kubernetes these manifests target

NGINX = "nginx.ingress.kubernetes.io/"
# ingress-nginx's own check of proxy-next-upstream (internal/ingress/annotations/proxy/main.go, validUpstreamAnnotation)
NEXT_UPSTREAM_VALUES = re.compile(r"^((error|timeout|invalid_header|http_500|http_502|http_503|http_504|http_403|http_404|"
                                  r"http_429|non_idempotent|off)\s?)+$")
# What a CPU replica holds beyond the row cache's budget, at least: Triton, and per instance the interpreter with numpy
# and ONNX Runtime, the weights and ONNX Runtime's arena at the longest request (docs/benchmarks.md, Memory).
HEADROOM_BYTES = 2 << 30
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def documents(folder: Path) -> list[dict]:
    return [doc for path in sorted(folder.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests(folder: Path) -> dict[str, list[dict]]:
    """The documents of one set by kind."""
    kinds: dict[str, list[dict]] = {}
    for doc in documents(folder):
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def one(folder: Path, kind: str) -> dict:
    docs = manifests(folder).get(kind, [])
    assert len(docs) == 1, f"{folder.relative_to(ROOT)}: {len(docs)} {kind}s, expected one"
    return docs[0]


def container(folder: Path) -> dict:
    return one(folder, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def quantity(value) -> float:
    """A Kubernetes quantity (16Gi, 6G, 512Mi, 4) as a number of bytes or cores."""
    match = QUANTITY.match(str(value))
    assert match, f"quantity {value!r}"
    return float(match[1]) * UNITS[match[2]]


def backends(ingress: dict) -> list[dict]:
    """Every Service backend of an Ingress: its rules' paths and its default backend."""
    spec = ingress["spec"]
    found = [path["backend"]["service"] for rule in spec.get("rules", []) for path in rule["http"]["paths"]]
    return found + ([spec["defaultBackend"]["service"]] if "defaultBackend" in spec else [])


def service_port(service: dict, port: dict) -> dict:
    """The Service port an Ingress backend names (by number or by name)."""
    for p in service["spec"]["ports"]:
        if p["port"] == port.get("number") or p.get("name") == port.get("name", object()):
            return p
    raise AssertionError(f"Service {service['metadata']['name']} exposes no port {port}")


YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema_strictly(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # unknown or misspelled fields fail


def test_every_manifest_belongs_to_a_checked_set():
    in_sets = {path for folder in SETS.values() for path in folder.glob("*.yaml")}
    assert set(YAML_FILES) == in_sets, "a manifest outside docs/deploy/ and docs/deploy/cpu/ escapes the checks below"


def test_a_misspelled_field_is_caught():
    deployment = one(DEPLOY, "Deployment")
    deployment["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("folder", SETS.values(), ids=SETS.keys())
def test_probes_score_through_the_probe_script_and_metrics_are_scraped(folder):
    pod = one(folder, "Deployment")["spec"]["template"]
    c = container(folder)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    probes = {kind: c[kind]["exec"]["command"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for kind, command in probes.items():  # the probe script, where the ConfigMap holding it is mounted
        assert command[:2] == ["python3", f"{mounts['stca-probe']}/probe.py"], kind
        args = probe.parser().parse_args(command[2:])  # the probe's own arguments, its own parser
        assert args.url == f"127.0.0.1:{ports['http']}", kind
    assert [probes[k].count("--liveness") for k in probes] == [0, 0, 1]  # only liveness forgives a busy server
    assert volumes["stca-probe"]["configMap"]["name"] == "stca-probe"
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 60
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    args = c["args"]
    assert any(a.startswith("--model-repository=s3://") for a in args) and "--strict-model-config=true" in args


def test_the_cpu_route_probes_like_the_gpu_route():
    gpu, cpu = container(DEPLOY), container(SETS["cpu"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert cpu[kind] == gpu[kind], kind
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for c in (gpu, cpu) for e in c["env"] if "valueFrom" in e}
    assert secrets == {one(DEPLOY, "Secret")["metadata"]["name"]}  # both read the repository with the one Secret


@pytest.mark.parametrize("folder", SETS.values(), ids=SETS.keys())
def test_the_service_and_the_budget_select_the_deployments_pods(folder):
    deployment, service, budget = one(folder, "Deployment"), one(folder, "Service"), one(folder, "PodDisruptionBudget")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container_ports = {p["name"] for p in container(folder)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports
    if "minAvailable" in budget["spec"]:
        assert budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]  # a drain can proceed
    else:
        assert budget["spec"]["maxUnavailable"] >= 1


@pytest.mark.parametrize("folder", SETS.values(), ids=SETS.keys())
def test_the_ingresses_hash_the_routing_key_onto_the_deployments_service(folder):
    ingresses = manifests(folder).get("Ingress", [])
    services = {s["metadata"]["name"]: s for s in manifests(folder).get("Service", [])}
    labels = one(folder, "Deployment")["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in container(folder)["ports"]}
    reached = set()
    for ingress in ingresses:
        name, notes = ingress["metadata"]["name"], ingress["metadata"].get("annotations", {})
        assert ingress["spec"]["ingressClassName"] == "nginx", name
        assert notes[NGINX + "upstream-hash-by"] == nginx_variable(), name  # the header ScoringClient sends
        for backend in backends(ingress):
            assert backend["name"] in services, f"{name}: no Service {backend['name']} in {folder.relative_to(ROOT)}"
            service = services[backend["name"]]
            assert service["spec"]["selector"].items() <= labels.items(), name
            target = service_port(service, backend["port"])["targetPort"]
            port = target if isinstance(target, str) else next(n for n, p in container_ports.items() if p == target)
            assert port in ("http", "grpc"), f"{name} routes to Triton's {port} port"
            reached.add(port)
            hosts = {rule["host"] for rule in ingress["spec"].get("rules", []) if "host" in rule}
            if port == "grpc":  # ingress-nginx proxies gRPC as such, and speaks HTTP/2 only over TLS
                assert notes.get(NGINX + "backend-protocol") == "GRPC", name
                assert hosts and hosts <= {h for tls in ingress["spec"].get("tls", []) for h in tls["hosts"]}, name
            else:
                assert notes.get(NGINX + "backend-protocol", "HTTP") == "HTTP", name
                retry = notes[NGINX + "proxy-next-upstream"]
                assert NEXT_UPSTREAM_VALUES.match(retry), f"{name}: ingress-nginx refuses {retry!r}"
                assert "non_idempotent" in retry.split(), f"{name}: inference is a POST, which nginx never resends without it"
                assert "timeout" not in retry.split(), f"{name}: a timed-out request may still be running (as ScoringClient)"
                assert int(notes[NGINX + "proxy-next-upstream-tries"]) >= 2, name
    assert reached == {"http", "grpc"}, f"{folder.relative_to(ROOT)}: ingresses for both of Triton's protocols"


def test_the_cpu_route_serves_the_row_cache_on_cpus_only():
    folder = SETS["cpu"]
    c = container(folder)
    resources = c["resources"]
    assert not [k for part in resources.values() for k in part if "gpu" in k.lower()], "the CPU route requests no GPU"
    assert resources["requests"] == resources["limits"], "Guaranteed QoS: whole cores, and the cache is not evicted first"
    assert quantity(resources["limits"]["cpu"]) >= 1
    memory = quantity(resources["limits"]["memory"])
    assert memory >= DEFAULT_HISTORY_CACHE_BYTES + HEADROOM_BYTES, "the row cache's default budget and the models must fit"
    shm = next(v for v in one(folder, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "dshm")
    assert quantity(shm["emptyDir"]["sizeLimit"]) < memory - DEFAULT_HISTORY_CACHE_BYTES  # /dev/shm counts against it
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: env.get(k) for k in SERVER_ENV} == SERVER_ENV  # malloc as `compiler serve` runs the server


def test_the_cpu_route_drains_before_it_stops():
    pod = one(SETS["cpu"], "Deployment")["spec"]["template"]["spec"]
    c = container(SETS["cpu"])
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = next(int(a.split("=")[1]) for a in c["args"] if a.startswith("--exit-timeout-secs="))
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + drain


def test_the_cpu_image_adds_pinned_packages_to_the_gpu_routes_image():
    dockerfile = (SETS["cpu"] / "Dockerfile").read_text()
    base = re.search(r"^ARG TRITON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)[1]
    assert re.search(r"^FROM \$\{TRITON_IMAGE\}$", dockerfile, re.MULTILINE)
    assert base == container(DEPLOY)["image"]  # the Triton release the GPU route and the embedded server run
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', dockerfile))
    assert set(pins) == {"numpy", "onnxruntime"}
    constraints = dict(line.split("==") for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
    assert pins["numpy"] == constraints["numpy"]  # onnxruntime: the newest with a wheel for the image's Python (the Dockerfile)
    image = container(SETS["cpu"])["image"]
    assert image.rsplit(":", 1)[1] == base.rsplit(":", 1)[1].split("-")[0], "the CPU image's tag names the NGC release"
