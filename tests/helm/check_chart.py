#!/usr/bin/env python3
"""Checks of the Helm chart in helm/enigma, with no helm binary and no cluster.

- lints the chart strictly with the real Helm engine (PyPI `helm-python-sdk`,
  which embeds Helm's Go SDK);
- renders it under several value sets (defaults, production-like, each Redis
  mode, the in-chart Redis) and validates every rendered object with
  `kubernetes-validate` in strict mode (unknown fields are errors), against the
  oldest Kubernetes the chart supports and a recent one;
- checks the properties operators rely on: hardened containers, probes on
  /healthz and /readyz, a termination grace that covers preStop + drain,
  surge-only rolling updates, the Redis URL wiring, the TOML config the relay
  will actually parse;
- renders value sets that must be refused (several replicas without Redis, a
  schema violation, …) and checks the message.

Run from anywhere:  python3 tests/helm/check_chart.py   (add -v for details)
Prints one line per check and ends with "N passed, M failed"; exits 1 on failure.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import ipaddress
import os
import sys
import time
import traceback
from pathlib import Path

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

import yaml

try:
    import helm_python
    import kubernetes_validate
except ModuleNotFoundError as e:  # pragma: no cover
    sys.exit(f"check_chart: {e.name} is missing: pip install -r tests/helm/requirements.txt")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "enigma"
RELEASE = "enigma"
NAMESPACE = "relay"
# The chart's kubeVersion floor (Chart.yaml) and a recent release.
KUBE_VERSIONS = ["1.30.0", "1.35.0"]
VERBOSE = "-v" in sys.argv[1:]

# Every key enigma-server accepts in its TOML file (src/config.rs denies unknown
# ones). server.addr and redis.url come from environment variables in the chart.
SERVER_KEYS = {
    "server": {"addr", "cors_origins", "shutdown_grace_ms", "ping_interval_ms", "idle_timeout_ms",
               "max_connections", "max_connections_per_address", "trusted_proxies"},
    "limits": {
        "max_public_key_bytes", "max_payload_bytes", "inbox_capacity", "inbox_ttl_secs",
        "outbound_queue_frames", "outbound_queue_bytes", "send_timeout_ms",
        "inbox_share", "inbox_share_bytes", "inbox_max_bytes", "memory_max_bytes",
    },
    "rate": {
        "login_per_address", "challenge_per_address", "socket_per_address", "socket_per_user",
        "send_messages_per_user", "send_bytes_per_user",
    },
    "redis": {"url", "mode", "sentinel_master", "prefix", "command_timeout_ms", "probe_interval_ms"},
    "log": {"format", "level"},
}

# ---------------------------------------------------------------- harness

RESULTS: list[tuple[str, bool]] = []


class CheckFailed(Exception):
    pass


def expect(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def check(name: str, fn, *args) -> object:
    """Runs one named check; records and prints the outcome; returns fn's result."""
    started = time.monotonic()
    try:
        result = fn(*args)
    except CheckFailed as e:
        RESULTS.append((name, False))
        print(f"FAIL {name}: {_oneline(str(e))}")
        return None
    except Exception as e:  # an unexpected error is a failure too, with its trace
        RESULTS.append((name, False))
        print(f"FAIL {name}: {type(e).__name__}: {_oneline(str(e))}")
        if VERBOSE:
            traceback.print_exc()
        return None
    RESULTS.append((name, True))
    print(f"ok   {name} ({time.monotonic() - started:.2f}s)")
    return result


def _oneline(text: str) -> str:
    """Helm's messages span lines (fail messages start with blank ones)."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


class StrictLoader(yaml.SafeLoader):
    """YAML loader that rejects duplicate mapping keys (Kubernetes would reject
    or silently merge them; PyYAML silently keeps the last)."""


def _no_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)

# ---------------------------------------------------------------- rendering


def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(str(CHART))


class Rendered:
    """One rendering: the raw files, the parsed objects and helpers to find them."""

    def __init__(self, files: dict[str, str]):
        self.files = files
        self.objects: list[dict] = []
        self.notes = ""
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            if not path.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.load_all(text, Loader=StrictLoader):
                if doc:
                    expect(isinstance(doc, dict), f"{path}: a document is not a mapping")
                    doc["__file__"] = path
                    self.objects.append(doc)

    def of_kind(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        expect(len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return found[0]

    def maybe(self, kind: str) -> dict | None:
        found = self.of_kind(kind)
        return found[0] if found else None

    def relay(self) -> dict:
        return self.one("Deployment")

    def relay_container(self) -> dict:
        containers = self.relay()["spec"]["template"]["spec"]["containers"]
        return next(c for c in containers if c["name"] == "enigma")

    def env(self) -> list[dict]:
        return self.relay_container().get("env", [])

    def env_var(self, name: str) -> dict | None:
        return next((e for e in self.env() if e["name"] == name), None)

    def config_toml(self) -> dict:
        cm = self.one("ConfigMap")
        return tomllib.loads(cm["data"]["enigma.toml"])


# No relay image is published, so the chart has no default one and every install names its
# own; so does every rendering here, except the check that a missing one is refused.
IMAGE_REPOSITORY = "registry.example.com/enigma-server"


def with_image(values: dict | None) -> dict:
    """values, with image.repository set unless they set it themselves."""
    merged = copy.deepcopy(values) if values else {}
    merged.setdefault("image", {}).setdefault("repository", IMAGE_REPOSITORY)
    return merged


def render(values: dict | None, name: str = RELEASE, image: bool = True) -> Rendered:
    with load_chart() as chart:
        files = chart.render(with_image(values) if image else values, name=name, namespace=NAMESPACE,
                             is_install=True)
    return Rendered(files)


def render_error(values: dict | None, image: bool = True) -> str:
    """Renders values that must be refused; returns the error text."""
    try:
        render(values, image=image)
    except helm_python.HelmError as e:
        return str(e)
    raise CheckFailed("rendering succeeded but should have been refused")


# ---------------------------------------------------------------- value sets

PRODUCTION = {
    "replicaCount": 3,
    "image": {"registry": "registry.example.com/team", "tag": "0.1.0"},
    "redis": {"existingSecret": "enigma-redis", "existingSecretUrlKey": "url"},
    "config": {
        "server": {"cors_origins": ["https://chat.example.com", "https://app.example.com"],
                   "shutdown_grace_ms": 25000},
        "limits": {"inbox_ttl_secs": 604800},
        "log": {"level": "info,enigma=debug"},
    },
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "relay.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "relay-tls", "hosts": ["relay.example.com"]}],
    },
    "autoscaling": {
        "enabled": True, "minReplicas": 3, "maxReplicas": 20,
        "targetCPUUtilizationPercentage": 65,
        "customMetric": {"enabled": True, "name": "enigma_connections_open", "targetAverageValue": "4000"},
    },
    "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                   "interval": "15s"}},
    "lifecycle": {"preStop": {"sleepSeconds": 10}},
    "podAntiAffinityPreset": "soft",
    "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
}

# An external Redis whose password lives in an existing Secret, spliced into the URL.
EXISTING_PASSWORD = {
    "replicaCount": 2,
    "redis": {"url": "rediss://:$(REDIS_PASSWORD)@redis.db.svc:6380/0",
              "existingSecret": "redis-auth", "existingSecretPasswordKey": "password"},
}

# A plain URL kept in the chart's Secret; preStop via exec; LoadBalancer service.
PLAIN_URL = {
    "replicaCount": 2,
    "redis": {"url": "redis://redis.db.svc:6379/1"},
    "lifecycle": {"preStop": {"mode": "exec", "sleepSeconds": 3}},
    "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
    "podAntiAffinityPreset": "hard",
    "tests": {"enabled": False},
}

# URL + password both given to the chart (password in the chart's Secret).
URL_PASSWORD = {
    "replicaCount": 2,
    "redis": {"url": "redis://:$(REDIS_PASSWORD)@redis.db.svc:6379/0", "password": "s3cr3t"},
}

# The master that three Sentinels name, followed across failovers.
SENTINEL = {
    "replicaCount": 2,
    "redis": {"url": "redis://sentinel-0.sentinel:26379,redis://sentinel-1.sentinel:26379,"
                     "redis://sentinel-2.sentinel:26379"},
    "config": {"redis": {"mode": "sentinel", "sentinel_master": "enigma"}},
}

IN_CHART_REDIS = {
    "replicaCount": 3,
    "redisServer": {"enabled": True},
}

IN_CHART_REDIS_PASSWORD_EPHEMERAL = {
    "replicaCount": 2,
    "redis": {"password": "hunter2"},
    "redisServer": {"enabled": True, "persistence": {"enabled": False}},
    "terminationGracePeriodSeconds": 60,
}

# Limits raised and one turned off, the trusted proxies set by hand (behind the ingress).
LIMITS_RAISED = {
    "config": {
        "server": {"trusted_proxies": ["10.42.0.0/16"], "max_connections_per_address": 0},
        "limits": {"inbox_share": 5000},
        "rate": {"send_messages_per_user": {"burst": 5000, "per_second": 100.5},
                 "login_per_address": {"burst": 0, "per_second": 0}},
    },
    "ingress": {"enabled": True, "className": "nginx"},
}

# TLS to an external Redis with a private CA from a Secret (and Sentinel's roots via SSL_CERT_FILE).
REDIS_TLS = {
    "replicaCount": 2,
    "redis": {"url": "rediss://:$(REDIS_PASSWORD)@redis.db.svc:6380/0",
              "existingSecret": "redis-auth", "existingSecretPasswordKey": "password",
              "tls": {"caSecret": "redis-ca", "caSecretKey": "ca.pem"}},
}

# The in-chart Redis with its password in a Secret of the operator's.
IN_CHART_REDIS_EXISTING_SECRET = {
    "replicaCount": 2,
    "redis": {"existingSecret": "my-redis", "existingSecretPasswordKey": "pw"},
    "redisServer": {"enabled": True},
}

# A LoadBalancer exposure: clients' addresses are allowed with an extra rule; custom selectors.
NETWORK_POLICY_CUSTOM = {
    "service": {"type": "LoadBalancer"},
    "networkPolicy": {
        "ingressController": {"namespaceSelector": {"matchLabels": {"team": "edge"}},
                              "podSelector": {"matchLabels": {"app": "traefik"}}},
        "monitoring": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
                       "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
        "extraIngress": [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                          "ports": [{"port": "http", "protocol": "TCP"}]}],
    },
}

NO_NETWORK_POLICY = {"replicaCount": 2, "redisServer": {"enabled": True}, "networkPolicy": {"enabled": False}}

VALID_SETS = {
    "defaults": None,
    "limits-raised": LIMITS_RAISED,
    "production": PRODUCTION,
    "existing-secret-password": EXISTING_PASSWORD,
    "plain-url": PLAIN_URL,
    "url-with-password": URL_PASSWORD,
    "sentinel": SENTINEL,
    "in-chart-redis": IN_CHART_REDIS,
    "in-chart-redis-password-ephemeral": IN_CHART_REDIS_PASSWORD_EPHEMERAL,
    "redis-tls": REDIS_TLS,
    "in-chart-redis-existing-secret": IN_CHART_REDIS_EXISTING_SECRET,
    "network-policy-custom": NETWORK_POLICY_CUSTOM,
    "no-network-policy": NO_NETWORK_POLICY,
}

# (name, values, substrings the error must contain)
INVALID_SETS = [
    ("schema: unknown rate limit", {"config": {"rate": {"logins_per_address": {"burst": 1, "per_second": 1}}}},
     ["'logins_per_address' not allowed"]),
    ("schema: rate burst not an integer", {"config": {"rate": {"socket_per_user": {"burst": "many"}}}},
     ["burst", "want integer"]),
    ("schema: trusted proxy not a string", {"ingress": {"trustedProxies": [10]}},
     ["trustedProxies", "want string"]),
    ("3 replicas without Redis", {"replicaCount": 3},
     ["replicaCount=3 needs Redis", "single-node", "redisServer.enabled=true"]),
    ("autoscaling without Redis", {"autoscaling": {"enabled": True}},
     ["autoscaling.enabled=true needs Redis", "single-node"]),
    ("schema: replicaCount \"three\"", {"replicaCount": "three"},
     ["replicaCount", "want integer"]),
    ("schema: unknown top-level key (typo)", {"replicas": 3},
     ["'replicas' not allowed"]),
    ("schema: unknown config key", {"config": {"server": {"shutdown_grace": 5000}}},
     ["/config/server", "'shutdown_grace' not allowed"]),
    ("schema: bad log format", {"config": {"log": {"format": "xml"}}},
     ["format"]),
    ("schema: unknown Redis mode", {"config": {"redis": {"mode": "sentinels"}}},
     ["mode"]),
    ("schema: bad preStop mode", {"lifecycle": {"preStop": {"mode": "wait"}}},
     ["mode"]),
    ("grace shorter than preStop + drain", {"terminationGracePeriodSeconds": 12},
     ["terminationGracePeriodSeconds=12 must be greater than", "(15 s)"]),
    ("password not used in the URL",
     {"redis": {"url": "redis://redis:6379/0", "password": "x"}},
     ["does not use it", "$(REDIS_PASSWORD)"]),
    ("URL references a password nobody provides",
     {"redis": {"url": "redis://:$(REDIS_PASSWORD)@redis:6379/0"}},
     ["no password is configured"]),
    ("in-chart Redis and an external URL",
     {"redisServer": {"enabled": True}, "redis": {"url": "redis://redis:6379/0"}},
     ["choose one Redis"]),
    ("a Redis CA with a plain redis:// URL",
     {"redis": {"url": "redis://redis:6379/0", "tls": {"caSecret": "ca"}}},
     ["redis.tls.caSecret is set but redis.url is not rediss://"]),
    ("a Redis CA with the in-chart Redis",
     {"redisServer": {"enabled": True}, "redis": {"tls": {"caSecret": "ca"}}},
     ["in-chart Redis speaks plain TCP"]),
    ("metrics on the public port", {"metricsPort": 8000},
     ["metricsPort must differ from containerPort"]),
    ("schema: unknown networkPolicy key", {"networkPolicy": {"ingressNamespace": "x"}},
     ["'ingressNamespace' not allowed"]),
    ("idle timeout not above the ping interval",
     {"config": {"server": {"idle_timeout_ms": 20000}}},
     ["idle_timeout_ms must be longer"]),
]

# ---------------------------------------------------------------- checks


def check_lint(values: dict | None) -> None:
    for kube in ("v1.30.0", "v" + KUBE_VERSIONS[-1]):
        report = helm_python.lint(str(CHART), with_image(values), strict=True, kube_version=kube)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        expect(report.get("total_charts_linted") == 1, f"lint linted {report.get('total_charts_linted')} charts")
        expect(not problems and not report.get("errors"),
               f"lint ({kube}): {problems or report.get('errors')}")
        if VERBOSE:
            for m in report.get("messages", []):
                print(f"     lint {kube} severity={m['severity']} {m['path']}: {m['error'].strip()}")


def check_kubernetes_validate(r: Rendered) -> None:
    failures = []
    for obj in r.objects:
        body = {k: v for k, v in obj.items() if k != "__file__"}
        label = f"{obj['kind']}/{obj['metadata']['name']} ({obj['__file__']})"
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: structural check in check_service_monitor
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                failures.append(f"{label} against {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failures.append(f"{label}: no schema ({e.message})")
    expect(r.objects, "nothing rendered")
    expect(not failures, " | ".join(failures))


def pod_specs(r: Rendered) -> list[tuple[str, dict]]:
    specs = []
    for o in r.objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            specs.append((f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((f"Pod/{o['metadata']['name']}", o["spec"]))
    return specs


def check_hardening(r: Rendered) -> None:
    specs = pod_specs(r)
    expect(specs, "no pod templates rendered")
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        expect(spec.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            at = f"{where} container {c['name']}"
            expect(sc.get("readOnlyRootFilesystem") is True, f"{at}: readOnlyRootFilesystem is not true")
            expect(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{at}: runAsNonRoot is not true")
            expect(sc.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation is not false")
            expect(not sc.get("privileged"), f"{at}: privileged")
            expect("ALL" in sc.get("capabilities", {}).get("drop", []), f"{at}: capabilities do not drop ALL")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            expect(seccomp.get("type") == "RuntimeDefault", f"{at}: seccomp profile is not RuntimeDefault")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            expect(uid is None or uid != 0, f"{at}: runs as uid 0")
            expect(c.get("resources", {}).get("requests"), f"{at}: no resource requests")


def check_relay_pod(r: Rendered, values: dict | None) -> None:
    merged = merged_values(values)
    dep = r.relay()
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = r.relay_container()

    # Ports and probes.
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(ports == {"http": merged["containerPort"], "metrics": merged["metricsPort"]}, f"container ports {ports}")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = c.get(probe, {}).get("httpGet", {})
        expect(got.get("path") == path and got.get("port") == "http",
               f"{probe} is {got}, want GET {path} on port http")

    # Rolling update never drops below the desired count.
    ru = spec["strategy"]["rollingUpdate"]
    expect(spec["strategy"]["type"] == "RollingUpdate", "strategy is not RollingUpdate")
    expect(ru["maxUnavailable"] in (0, "0%"), f"maxUnavailable is {ru['maxUnavailable']}, want 0")
    expect(ru["maxSurge"] not in (0, "0%"), "maxSurge is 0")
    if merged["autoscaling"]["enabled"]:
        expect("replicas" not in spec, "replicas set although the HPA owns it")
    else:
        expect(spec["replicas"] == merged["replicaCount"], f"replicas {spec.get('replicas')}")

    # Termination grace covers preStop + the relay's drain.
    cfg = r.config_toml()
    grace_s = -(-cfg["server"]["shutdown_grace_ms"] // 1000)
    pre = c.get("lifecycle", {}).get("preStop")
    pre_s = 0
    if merged["lifecycle"]["preStop"]["mode"] == "sleep":
        expect(pre and set(pre) == {"sleep"}, f"preStop is {pre}, want the sleep action")
        pre_s = pre["sleep"]["seconds"]
    elif merged["lifecycle"]["preStop"]["mode"] == "exec":
        expect(pre and pre["exec"]["command"][0] == "sleep", f"preStop is {pre}")
        pre_s = int(pre["exec"]["command"][1])
    else:
        expect(pre is None, f"preStop is {pre}, want none")
    expect(pre_s == merged["lifecycle"]["preStop"]["sleepSeconds"] or pre is None, "preStop seconds differ from values")
    tgp = pod["terminationGracePeriodSeconds"]
    expect(tgp > pre_s + grace_s, f"terminationGracePeriodSeconds {tgp} <= preStop {pre_s} + drain {grace_s}")

    # Config: mounted ConfigMap passed with --config, valid TOML with keys the server knows.
    args = c.get("args", [])
    expect("--config" in args, f"no --config in args {args}")
    path = args[args.index("--config") + 1]
    mount = next((m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    expect(mount is not None, f"{path} is not under any volumeMount")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = r.one("ConfigMap")
    expect(volume.get("configMap", {}).get("name") == cm["metadata"]["name"], "config volume is not the ConfigMap")
    expect(os.path.basename(path) in cm["data"], f"ConfigMap has no key {os.path.basename(path)}")
    for section, keys in cfg.items():
        expect(section in SERVER_KEYS, f"TOML section [{section}] unknown to the server")
        unknown = set(keys) - SERVER_KEYS[section]
        expect(not unknown, f"TOML keys unknown to the server in [{section}]: {unknown}")
    for section, keys in merged["config"].items():
        for key, value in keys.items():
            if (section, key) == ("server", "trusted_proxies"):
                continue  # derived from the ingress too: check_trusted_proxies
            got = cfg[section][key]
            expect(got == value and type(got) is type(value),
                   f"TOML {section}.{key} = {got!r} ({type(got).__name__}), values say {value!r}")
    expect(cfg["log"]["format"] == "json" or (values or {}).get("config", {}).get("log", {}).get("format"),
           "log format is not json by default")

    # Config changes roll the pods: the annotation is the hash of the rendered ConfigMap.
    annotations = spec["template"]["metadata"].get("annotations", {})
    cm_text = r.files[f"{CHART.name}/templates/configmap.yaml"]
    expect(annotations.get("checksum/config") == hashlib.sha256(cm_text.encode()).hexdigest(),
           "checksum/config does not match the rendered ConfigMap")

    # Environment.
    addr = r.env_var("ENIGMA__SERVER__ADDR")
    expect(addr and addr.get("value") == f"{merged['bindHost']}:{merged['containerPort']}",
           f"ENIGMA__SERVER__ADDR is {addr}")
    names = [e["name"] for e in r.env()]
    expect(len(names) == len(set(names)), f"duplicate env vars {names}")

    # Service, PDB and HPA point at these pods.
    pod_labels = spec["template"]["metadata"]["labels"]
    expect(dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "selector does not match pod labels")
    svc = r.one("Service", dep["metadata"]["name"])
    expect(svc["spec"]["selector"].items() <= pod_labels.items(), "Service selector does not match the relay pods")
    expect(svc["spec"]["type"] == merged["service"]["type"], f"Service type {svc['spec']['type']}")
    sp = svc["spec"]["ports"]
    expect(len(sp) == 2 and sp[0]["name"] == "http" and sp[0]["port"] == merged["service"]["port"]
           and sp[0]["targetPort"] == "http", f"Service ports {sp}")
    expect(sp[1] == {"name": "metrics", "port": merged["service"]["metricsPort"], "targetPort": "metrics",
                     "protocol": "TCP"}, f"Service metrics port {sp[1]}")
    for o in r.objects:  # no other pod (Redis, helm test) may receive relay traffic
        if o is dep or o["kind"] not in ("Deployment", "StatefulSet", "Pod"):
            continue
        labels = (o["spec"]["template"]["metadata"] if o["kind"] != "Pod" else o["metadata"]).get("labels", {})
        expect(not svc["spec"]["selector"].items() <= labels.items(),
               f"{o['kind']}/{o['metadata']['name']} matches the relay Service selector")
    pdb = r.maybe("PodDisruptionBudget")
    if merged["podDisruptionBudget"]["enabled"]:
        expect(pdb and pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "PDB does not select the relay")
        expect(("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"]), "PDB needs exactly one bound")
    else:
        expect(pdb is None, "PDB rendered although disabled")
    hpa = r.maybe("HorizontalPodAutoscaler")
    if merged["autoscaling"]["enabled"]:
        expect(hpa, "HPA missing")
        ref = hpa["spec"]["scaleTargetRef"]
        expect(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], f"HPA targets {ref}")
        expect(hpa["spec"]["minReplicas"] == merged["autoscaling"]["minReplicas"], "HPA minReplicas")
        metrics = hpa["spec"]["metrics"]
        cpu = [m for m in metrics if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        expect(cpu and cpu[0]["resource"]["target"]["averageUtilization"]
               == merged["autoscaling"]["targetCPUUtilizationPercentage"], "HPA CPU target")
        custom = merged["autoscaling"]["customMetric"]
        pods = [m for m in metrics if m["type"] == "Pods"]
        if custom["enabled"]:
            expect(pods and pods[0]["pods"]["metric"]["name"] == custom["name"]
                   and pods[0]["pods"]["target"] == {"type": "AverageValue", "averageValue": str(custom["targetAverageValue"])},
                   f"HPA custom metric {pods}")
        else:
            expect(not pods, "HPA has a custom metric although disabled")
    else:
        expect(hpa is None, "HPA rendered although disabled")

    # Names fit Kubernetes limits; namespaced objects carry the release namespace.
    for o in r.objects:
        expect(len(o["metadata"]["name"]) <= 63, f"{o['kind']} name too long: {o['metadata']['name']}")
        if o["kind"] != "ServiceMonitor":
            expect(o["metadata"].get("namespace") == NAMESPACE, f"{o['kind']}/{o['metadata']['name']} namespace")


def check_redis_wiring(r: Rendered, values: dict | None, mode: str) -> None:
    """mode: none | url | urlPassword | existingUrl | existingPassword | server"""
    merged = merged_values(values)
    url = r.env_var("ENIGMA__REDIS__URL")
    password = r.env_var("REDIS_PASSWORD")
    # The token key Secret (`<fullname>-auth`) and the key directory's (`<fullname>-directory`)
    # are not part of the Redis wiring: check_auth_secret, check_directory_secret.
    secrets = {s["metadata"]["name"]: s for s in r.of_kind("Secret")
               if not s["metadata"]["name"].endswith(("-auth", "-directory"))}

    def secret_ref(env: dict) -> tuple[str, str]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        expect(ref, f"{env['name']} is not read from a Secret: {env}")
        if ref["name"] in secrets:  # a Secret this chart renders must hold the key
            expect(ref["key"] in secrets[ref["name"]].get("data", {}),
                   f"Secret {ref['name']} has no key {ref['key']}")
        return ref["name"], ref["key"]

    if mode == "none":
        expect(url is None and password is None, "Redis env vars set in memory mode")
        engine = r.env_var("ENIGMA__ENGINE") or {}
        expect(engine.get("value") == "memory", f"the memory engine is not chosen without Redis: {engine}")
        expect(not secrets, "a Secret rendered without Redis")
        expect("in-memory engine" in r.notes and "ONE replica" in r.notes, "NOTES do not warn about the memory engine")
        return
    expect(url is not None, "ENIGMA__REDIS__URL missing")
    names = [e["name"] for e in r.env()]
    if "$(REDIS_PASSWORD)" in url.get("value", ""):
        expect(password is not None, "URL references $(REDIS_PASSWORD) but it is not defined")
        expect(names.index("REDIS_PASSWORD") < names.index("ENIGMA__REDIS__URL"),
               "REDIS_PASSWORD must be defined before ENIGMA__REDIS__URL for $(…) expansion")
    if mode == "url":
        expect(secret_ref(url) == (r.relay()["metadata"]["name"], "redis-url"), "URL not from the chart Secret")
        expect(password is None, "REDIS_PASSWORD set without a password")
    elif mode == "urlPassword":
        expect(url.get("value") == merged["redis"]["url"], f"URL value {url}")
        expect(secret_ref(password) == (r.relay()["metadata"]["name"], "redis-password"), "password source")
    elif mode == "existingUrl":
        expect(secret_ref(url) == (merged["redis"]["existingSecret"], merged["redis"]["existingSecretUrlKey"]),
               "URL not from the existing Secret")
        expect(not secrets, "chart rendered a Secret although an existing one is used")
    elif mode == "existingPassword":
        expect(url.get("value") == merged["redis"]["url"], f"URL value {url}")
        expect(secret_ref(password) == (merged["redis"]["existingSecret"], merged["redis"]["existingSecretPasswordKey"]),
               "password not from the existing Secret")
        expect(not secrets, "chart rendered a Secret although an existing one is used")
    elif mode == "server":
        sts = r.one("StatefulSet")
        svc_name = sts["metadata"]["name"]
        r.one("Service", svc_name)
        headless = r.one("Service", sts["spec"]["serviceName"])
        expect(headless["spec"].get("clusterIP") == "None", "StatefulSet governing Service is not headless")
        expect(f"@{svc_name}:6379/" in url["value"] or url["value"].startswith(f"redis://{svc_name}:6379/"),
               f"URL {url['value']} does not point at Service {svc_name}")
        rc = sts["spec"]["template"]["spec"]["containers"][0]
        expect(rc["image"].startswith("docker.io/library/redis:7"), f"Redis image {rc['image']}")
        args = rc["args"]
        expect("--appendonly" in args and args[args.index("--appendonly") + 1] == "yes", f"Redis args {args}")
        persistent = merged["redisServer"]["persistence"]["enabled"]
        expect(bool(sts["spec"].get("volumeClaimTemplates")) == persistent, "volumeClaimTemplates vs persistence")
        # Always a password: given, from an existing Secret, or generated (check_generated_password).
        expect("--requirepass" in args and args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)",
               "in-chart Redis does not require the password")
        expect(url["value"].startswith("redis://:$(REDIS_PASSWORD)@"), f"URL {url['value']} carries no password")
        want = ((merged["redis"]["existingSecret"], merged["redis"]["existingSecretPasswordKey"])
                if merged["redis"]["existingSecret"] else (r.relay()["metadata"]["name"], "redis-password"))
        expect(password is not None and secret_ref(password) == want, f"relay password source {password}")
        redis_pw = next((e for e in rc.get("env", []) if e["name"] == "REDIS_PASSWORD"), None)
        expect(redis_pw is not None and secret_ref(redis_pw) == want, f"Redis container password {redis_pw}")
        if merged["redis"]["existingSecret"]:
            expect(not secrets, "chart rendered a Secret although an existing one is used")
        else:
            data = secrets[r.relay()["metadata"]["name"]]["data"]
            given = merged["redis"]["password"]
            got = base64.b64decode(data["redis-password"]).decode()
            expect(got == given if given else (len(got) == 32 and got.isalnum()), "in-chart Redis password")
        expect("in-chart Redis" in r.notes, "NOTES do not mention the in-chart Redis")
    secret = secrets.get(r.relay()["metadata"]["name"])
    generated = mode == "server" and not merged["redis"]["password"] and not merged["redis"]["existingSecret"]
    if generated:  # a fresh random value each offline render: no checksum (it is kept across upgrades)
        expect("checksum/secret" not in r.relay()["spec"]["template"]["metadata"].get("annotations", {}),
               "checksum of a generated password")
    elif secret is not None:
        annotations = r.relay()["spec"]["template"]["metadata"]["annotations"]
        text = r.files[f"{CHART.name}/templates/secret.yaml"]
        expect(annotations.get("checksum/secret") == hashlib.sha256(text.encode()).hexdigest(),
               "checksum/secret does not match the rendered Secret")


def check_ingress(r: Rendered, values: dict | None) -> None:
    merged = merged_values(values)
    ing = r.maybe("Ingress")
    if not merged["ingress"]["enabled"]:
        expect(ing is None, "Ingress rendered although disabled")
        return
    expect(ing, "Ingress missing")
    ann = ing["metadata"].get("annotations", {})
    for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
        expect(ann.get(key) == "3600", f"{key} is {ann.get(key)!r}, want \"3600\" for long-lived WebSockets")
    svc = r.one("Service", r.relay()["metadata"]["name"])
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            backend = p["backend"]["service"]
            expect(backend["name"] == svc["metadata"]["name"] and backend["port"] == {"name": "http"},
                   f"Ingress backend {backend}")
    if merged["ingress"]["className"]:
        expect(ing["spec"]["ingressClassName"] == merged["ingress"]["className"], "ingressClassName")


def check_trusted_proxies(r: Rendered, values: dict | None) -> None:
    """The relay trusts config.server.trusted_proxies if set, else the ingress controller's
    pods when the chart's ingress is on, else nobody (every forwarded header is ignored)."""
    merged = merged_values(values)
    got = r.config_toml()["server"].get("trusted_proxies")
    explicit = merged["config"]["server"].get("trusted_proxies") or []
    if explicit:
        want = explicit
    elif merged["ingress"]["enabled"]:
        want = merged["ingress"]["trustedProxies"]
        expect(want, "ingress enabled but ingress.trustedProxies is empty")
    else:
        want = []
    expect(got == want, f"trusted_proxies = {got!r}, want {want!r}")
    for entry in got:
        ipaddress.ip_network(entry, strict=False)  # a CIDR or an address the relay can parse


def check_rate_limits(r: Rendered, values: dict | None) -> None:
    """Every rate limit is rendered as a { burst, per_second } table the relay reads."""
    rate = r.config_toml().get("rate", {})
    expect(set(rate) == SERVER_KEYS["rate"], f"[rate] has {sorted(rate)}")
    for name, bucket in rate.items():
        expect(set(bucket) == {"burst", "per_second"}, f"rate.{name} = {bucket}")
        expect(isinstance(bucket["burst"], int) and bucket["burst"] >= 0, f"rate.{name}.burst")
        expect(bucket["burst"] == 0 or bucket["per_second"] > 0, f"rate.{name} never refills")


SERVICE_MONITOR_ENDPOINT_KEYS = {
    "port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings",
}


def check_service_monitor(r: Rendered, values: dict | None) -> None:
    """kubernetes-validate has no schema for the Prometheus Operator CRD: a
    structural check of the fields this chart sets instead."""
    merged = merged_values(values)
    sm = r.maybe("ServiceMonitor")
    if not merged["metrics"]["serviceMonitor"]["enabled"]:
        expect(sm is None, "ServiceMonitor rendered although disabled")
        return
    expect(sm, "ServiceMonitor missing")
    expect(sm["apiVersion"] == "monitoring.coreos.com/v1", f"apiVersion {sm['apiVersion']}")
    expect(set(sm) - {"__file__"} == {"apiVersion", "kind", "metadata", "spec"}, f"top-level keys {set(sm)}")
    expect(set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, f"spec keys {set(sm['spec'])}")
    svc = r.one("Service", r.relay()["metadata"]["name"])
    expect(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(),
           "ServiceMonitor selector does not match the relay Service")
    expect(all(not sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
               for s in r.of_kind("Service") if s is not svc), "ServiceMonitor also selects another Service")
    expect(sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}, "namespaceSelector")
    service_ports = {p["name"] for p in svc["spec"]["ports"]}
    expect(len(sm["spec"]["endpoints"]) == 1, "expected one endpoint")
    for ep in sm["spec"]["endpoints"]:
        expect(set(ep) <= SERVICE_MONITOR_ENDPOINT_KEYS, f"unknown endpoint keys {set(ep) - SERVICE_MONITOR_ENDPOINT_KEYS}")
        # The metrics-only port: the public one does not serve /metrics (check_metrics_private).
        expect(ep["port"] == "metrics" and ep["port"] in service_ports, f"endpoint port {ep['port']}")
        expect(ep["path"] == "/metrics", f"endpoint path {ep['path']}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep:
                expect(isinstance(ep[key], str) and ep[key][-1] in "smh", f"{key} {ep[key]!r}")
    for k, v in merged["metrics"]["serviceMonitor"]["labels"].items():
        expect(sm["metadata"]["labels"].get(k) == v, f"ServiceMonitor label {k}")


def check_metrics_private(r: Rendered, values: dict | None) -> None:
    """/metrics only on its own port: the server is told so, and only that port leads to it."""
    merged = merged_values(values)
    expect(merged["metricsPort"] != merged["containerPort"], "metrics port is the public port")
    addr = r.env_var("ENIGMA__SERVER__METRICS_ADDR")
    expect(addr and addr.get("value") == f"{merged['bindHost']}:{merged['metricsPort']}", f"metrics_addr {addr}")
    public = r.env_var("ENIGMA__SERVER__METRICS_PUBLIC")
    expect(public and public.get("value") == "false", f"metrics_public {public}")
    cfg = r.config_toml().get("server", {})
    expect("metrics_public" not in cfg and "metrics_addr" not in cfg, "config overrides the metrics settings")
    names = [e["name"] for e in r.env()]
    expect(names.count("ENIGMA__SERVER__METRICS_PUBLIC") == 1, "metrics_public set twice")
    ports = {p["name"]: p["containerPort"] for p in r.relay_container()["ports"]}
    expect(ports["metrics"] == merged["metricsPort"], f"container ports {ports}")
    ing = r.maybe("Ingress")
    for rule in (ing["spec"]["rules"] if ing else []):
        for p in rule["http"]["paths"]:
            expect(p["backend"]["service"]["port"] == {"name": "http"}, f"Ingress routes to {p['backend']}")


def _peer_matches(peer: dict, want: dict) -> bool:
    return {k: v for k, v in peer.items()} == want


def check_network_policies(r: Rendered, values: dict | None) -> None:
    merged = merged_values(values)
    np_values = merged["networkPolicy"]
    policies = r.of_kind("NetworkPolicy")
    if not np_values["enabled"]:
        expect(not policies, "NetworkPolicy rendered although disabled")
        return
    relay_labels = r.relay()["spec"]["template"]["metadata"]["labels"]
    relay_np = r.one("NetworkPolicy", r.relay()["metadata"]["name"])
    spec = relay_np["spec"]
    expect(spec["podSelector"]["matchLabels"].items() <= relay_labels.items(), "relay policy does not select the relay")
    expect(spec["policyTypes"] == ["Ingress"], f"policyTypes {spec['policyTypes']}")
    for o in r.objects:  # Redis and the test pod are not governed by the relay's policy
        if o["kind"] in ("StatefulSet", "Pod"):
            labels = (o["spec"]["template"]["metadata"] if o["kind"] != "Pod" else o["metadata"]).get("labels", {})
            expect(not spec["podSelector"]["matchLabels"].items() <= labels.items(), f"relay policy selects {o['kind']}")
    ic, mon = np_values["ingressController"], np_values["monitoring"]
    extra = np_values["extraIngress"]
    chart_rules = spec["ingress"][: len(spec["ingress"]) - len(extra)]
    expect(spec["ingress"][len(chart_rules):] == extra, "extraIngress not appended as given")
    test_labels = None
    if merged["tests"]["enabled"]:
        test_labels = r.one("Pod")["metadata"]["labels"]
    for rule in chart_rules:
        # A rule without `from` (or with an empty peer) would admit every pod in the cluster.
        expect(rule.get("from") and all(rule["from"]), f"rule admits anyone: {rule}")
        ports = [p["port"] for p in rule["ports"]]
        expect(len(ports) == 1 and ports[0] in ("http", "metrics"), f"rule ports {ports}")
        for peer in rule["from"]:
            if ports == ["metrics"]:
                expect(_peer_matches(peer, {"namespaceSelector": mon["namespaceSelector"],
                                            "podSelector": mon["podSelector"]}), f"metrics peer {peer}")
                expect(peer["namespaceSelector"], "metrics open to every namespace")
            elif "namespaceSelector" in peer:
                expect(_peer_matches(peer, {"namespaceSelector": ic["namespaceSelector"],
                                            "podSelector": ic["podSelector"]}), f"client peer {peer}")
                expect(peer["namespaceSelector"] and peer["podSelector"], "clients open to too many pods")
            else:  # the helm test pod, in the release namespace
                expect(test_labels and set(peer) == {"podSelector"}
                       and peer["podSelector"]["matchLabels"].items() <= test_labels.items()
                       and not peer["podSelector"]["matchLabels"].items() <= relay_labels.items(),
                       f"unexpected peer {peer}")
    kinds = sorted(p["port"] for rule in chart_rules for p in rule["ports"])
    expect(kinds.count("metrics") == 1 and "http" in kinds, f"rules cover ports {kinds}")
    redis = [p for p in policies if p is not relay_np]
    if not merged["redisServer"]["enabled"]:
        expect(not redis, "a Redis policy without the in-chart Redis")
        return
    expect(len(redis) == 1, f"{len(redis)} Redis policies")
    sts = r.one("StatefulSet")
    rspec = redis[0]["spec"]
    expect(rspec["podSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items(),
           "Redis policy does not select the Redis pod")
    expect(rspec["policyTypes"] == ["Ingress"] and len(rspec["ingress"]) == 1, f"Redis policy {rspec}")
    rule = rspec["ingress"][0]
    expect(rule["ports"] == [{"port": "redis", "protocol": "TCP"}], f"Redis policy ports {rule['ports']}")
    expect(len(rule["from"]) == 1 and set(rule["from"][0]) == {"podSelector"}, f"Redis peers {rule['from']}")
    peer = rule["from"][0]["podSelector"]["matchLabels"]
    expect(peer and peer.items() <= relay_labels.items(), "Redis does not admit the relay pods")
    for o in r.objects:  # ... and nothing else the chart runs
        if o is not r.relay() and o["kind"] in ("StatefulSet", "Pod"):
            labels = (o["spec"]["template"]["metadata"] if o["kind"] != "Pod" else o["metadata"]).get("labels", {})
            expect(not peer.items() <= labels.items(), f"Redis admits {o['kind']}/{o['metadata']['name']}")


def check_redis_tls(r: Rendered, values: dict | None) -> None:
    merged = merged_values(values)
    tls = merged["redis"]["tls"]
    ca_env = r.env_var("ENIGMA__REDIS__TLS_CA_FILE")
    if not tls["caSecret"]:
        expect(ca_env is None, "tls_ca_file set without a CA Secret")
        return
    pod = r.relay()["spec"]["template"]["spec"]
    vol = next((v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == tls["caSecret"]), None)
    expect(vol is not None, f"no volume from Secret {tls['caSecret']}")
    items = vol["secret"]["items"]
    expect(len(items) == 1 and items[0]["key"] == tls["caSecretKey"], f"CA items {items}")
    mount = next((m for m in r.relay_container()["volumeMounts"] if m["name"] == vol["name"]), None)
    expect(mount and mount.get("readOnly") is True, f"CA mount {mount}")
    path = f"{mount['mountPath'].rstrip('/')}/{items[0]['path']}"
    expect(ca_env and ca_env.get("value") == path, f"tls_ca_file {ca_env}, CA mounted at {path}")
    expect((r.env_var("SSL_CERT_FILE") or {}).get("value") == path, "SSL_CERT_FILE")
    url = r.env_var("ENIGMA__REDIS__URL")
    expect("value" not in url or url["value"].startswith("rediss://"), f"URL {url}")


def check_secrets_not_printed(r: Rendered, values: dict | None) -> None:
    """Passwords reach the pods through secretKeyRef only: never in a manifest, the NOTES or the config."""
    merged = merged_values(values)
    secret_values = [merged["redis"]["password"]]
    for sec in r.of_kind("Secret"):
        secret_values += [base64.b64decode(v).decode() for v in sec.get("data", {}).values()]
    for path, text in r.files.items():
        if path.endswith("secret.yaml"):
            continue
        for value in filter(None, secret_values):
            expect(value not in text, f"a secret value appears in {path}")


def check_generated_password_kept() -> None:
    """The in-chart Redis' generated password survives upgrades: secret.yaml reuses what `lookup`
    finds. The offline renderer has no cluster (lookup is empty), so a copy of the chart whose
    lookup returns an existing Secret stands in for the upgrade."""
    import shutil
    import tempfile
    lookup = 'lookup "v1" "Secret" (include "enigma.namespace" .) $name'
    text = (CHART / "templates" / "secret.yaml").read_text()
    expect(text.count(lookup) == 1, "secret.yaml no longer looks its Secret up")
    first = render(IN_CHART_REDIS).one("Secret", RELEASE)["data"]["redis-password"]
    second = render(IN_CHART_REDIS).one("Secret", RELEASE)["data"]["redis-password"]
    expect(first != second, "a fresh install does not generate a password")
    kept = base64.b64encode(b"existingPassw0rd").decode()
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / CHART.name
        shutil.copytree(CHART, chart)
        (chart / "templates" / "secret.yaml").write_text(
            text.replace(lookup, f'(dict "data" (dict "redis-password" "{kept}"))'))
        with helm_python.Chart.load(str(chart)) as c:
            files = c.render(with_image(IN_CHART_REDIS), name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    got = Rendered(files).one("Secret", RELEASE)["data"]["redis-password"]
    expect(got == kept, f"upgrade replaced the password: {got}")


def check_config_rolls_pods() -> None:
    a = render(None).relay()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    b = render({"config": {"log": {"level": "debug"}}}).relay()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    expect(a != b, "changing config does not change checksum/config")


def check_auth_secret() -> None:
    # Generated once (kept on uninstall), read by every replica; or an existing Secret, not rendered.
    r = render(None)
    name = r.relay()["metadata"]["name"] + "-auth"
    secret = next((s for s in r.of_kind("Secret") if s["metadata"]["name"] == name), None)
    expect(secret is not None, f"no Secret {name}")
    expect(secret["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "token key Secret not kept")
    keys = base64.b64decode(secret["data"]["token-keys"]).decode()
    expect(keys.startswith("k1:") and len(base64.b64decode(keys[3:])) == 32, f"token key {keys!r}")
    ref = r.env_var("ENIGMA__AUTH__TOKEN_KEYS")["valueFrom"]["secretKeyRef"]
    expect((ref["name"], ref["key"]) == (name, "token-keys"), f"token keys from {ref}")
    expect(r.env_var("ENIGMA__AUTH__MODE").get("value") == "claim", "auth mode")
    r = render({"auth": {"mode": "required", "tokenKeys": {"existingSecret": "mine", "existingSecretKey": "k"}}})
    expect(not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-auth")], "Secret rendered anyway")
    ref = r.env_var("ENIGMA__AUTH__TOKEN_KEYS")["valueFrom"]["secretKeyRef"]
    expect((ref["name"], ref["key"]) == ("mine", "k"), f"token keys from {ref}")
    expect(r.env_var("ENIGMA__AUTH__MODE").get("value") == "required", "auth mode")


def check_directory_secret() -> None:
    # The root signing key and the VRF key: generated once (kept on uninstall), read by every
    # replica; or an existing Secret, not rendered.
    r = render(None)
    name = r.relay()["metadata"]["name"] + "-directory"
    secret = next((s for s in r.of_kind("Secret") if s["metadata"]["name"] == name), None)
    expect(secret is not None, f"no Secret {name}")
    expect(secret["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep", "directory Secret not kept")
    keys = base64.b64decode(secret["data"]["signing-keys"]).decode()
    expect(keys.startswith("k1:") and len(base64.b64decode(keys[3:])) == 32, f"signing key {keys!r}")
    vrf = base64.b64decode(base64.b64decode(secret["data"]["vrf-key"]))
    expect(len(vrf) == 32, f"VRF key of {len(vrf)} bytes")
    for var, key in (("ENIGMA__DIRECTORY__SIGNING_KEYS", "signing-keys"), ("ENIGMA__DIRECTORY__VRF_KEY", "vrf-key")):
        ref = r.env_var(var)["valueFrom"]["secretKeyRef"]
        expect((ref["name"], ref["key"]) == (name, key), f"{var} from {ref}")
    r = render({"directory": {"keys": {"existingSecret": "mine", "signingKeysKey": "s", "vrfKeyKey": "v"}}})
    expect(not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-directory")],
           "Secret rendered anyway")
    for var, key in (("ENIGMA__DIRECTORY__SIGNING_KEYS", "s"), ("ENIGMA__DIRECTORY__VRF_KEY", "v")):
        ref = r.env_var(var)["valueFrom"]["secretKeyRef"]
        expect((ref["name"], ref["key"]) == ("mine", key), f"{var} from {ref}")


def check_image() -> None:
    """The relay's image is the one the values name, tagged with the appVersion unless they say
    otherwise; without image.repository the chart refuses to render and says how to make one."""
    with load_chart() as chart:
        app_version = chart.metadata["appVersion"]
    image = render(None).relay_container()["image"]
    expect(image == f"{IMAGE_REPOSITORY}:{app_version}", f"image {image}, appVersion {app_version}")
    image = render({"image": {"registry": "ghcr.io/acme/", "repository": "relay", "tag": "1.2"}}).relay_container()["image"]
    expect(image == "ghcr.io/acme/relay:1.2", f"image {image}")
    for values in (None, {"image": {"repository": ""}}, {"image": {"registry": "ghcr.io/acme", "tag": "1.2"}}):
        error = _oneline(render_error(values, image=False))
        for needle in ("image.repository is not set", "docker build -f deploy/Dockerfile",
                       "docker push", "--set image.repository="):
            expect(needle in error, f"{values}: error lacks {needle!r}: {error}")
        if VERBOSE:
            print("     " + error)


def check_release_names() -> None:
    # A release named like the chart gets plain names; others get "<release>-enigma".
    r = render(None, name="prod")
    expect(r.relay()["metadata"]["name"] == "prod-enigma", f"name {r.relay()['metadata']['name']}")
    r = render({"fullnameOverride": "relay"}, name="prod")
    expect({o["metadata"]["name"] for o in r.objects if o["kind"] != "Pod"} == {"relay", "relay-auth", "relay-directory"},
           "fullnameOverride not applied")


def merged_values(values: dict | None) -> dict:
    """The chart's defaults coalesced with values, as an install would see them."""
    with load_chart() as chart:
        return chart.merge_values(with_image(values))


def expected_mode(values: dict | None) -> str:
    v = merged_values(values)
    r = v["redis"]
    if v["redisServer"]["enabled"]:
        return "server"
    if r["existingSecret"]:
        return "existingPassword" if r["url"] else "existingUrl"
    if r["url"]:
        return "urlPassword" if r["password"] else "url"
    return "none"


def main() -> int:
    started = time.monotonic()
    print(f"chart {CHART.relative_to(ROOT)}: helm SDK {helm_python.helm_sdk_version()}, "
          f"kubernetes-validate {kubernetes_validate.__version__} (Kubernetes {', '.join(KUBE_VERSIONS)}, strict)")
    print("note: ServiceMonitor (a Prometheus Operator CRD) has no schema in kubernetes-validate; "
          "it gets a structural check instead")

    check("lint --strict (defaults, image.repository set)", check_lint, None)
    check("lint --strict (production values)", check_lint, PRODUCTION)
    check("lint --strict (in-chart Redis)", check_lint, IN_CHART_REDIS)

    for name, values in VALID_SETS.items():
        r = check(f"[{name}] renders", render, values)
        if r is None:
            continue
        check(f"[{name}] every object passes kubernetes-validate", check_kubernetes_validate, r)
        check(f"[{name}] containers are non-root, read-only, no capabilities", check_hardening, r)
        check(f"[{name}] relay pod: probes, rollout, grace, config, selectors", check_relay_pod, r, values)
        mode = expected_mode(values)
        check(f"[{name}] Redis wiring ({mode})", check_redis_wiring, r, values, mode)
        check(f"[{name}] ingress", check_ingress, r, values)
        check(f"[{name}] trusted proxies", check_trusted_proxies, r, values)
        check(f"[{name}] rate limits", check_rate_limits, r, values)
        check(f"[{name}] ServiceMonitor (structural)", check_service_monitor, r, values)
        check(f"[{name}] /metrics only on the metrics port", check_metrics_private, r, values)
        check(f"[{name}] NetworkPolicies", check_network_policies, r, values)
        check(f"[{name}] Redis TLS CA", check_redis_tls, r, values)
        check(f"[{name}] secrets never printed", check_secrets_not_printed, r, values)

    check("config changes roll the pods", check_config_rolls_pods)
    check("release and fullname overrides", check_release_names)
    check("image: as the values name it; refused without image.repository", check_image)
    check("authentication token key Secret", check_auth_secret)
    check("key directory Secret", check_directory_secret)
    check("in-chart Redis: generated password kept across upgrades", check_generated_password_kept)

    for name, values, needles in INVALID_SETS:
        def refused(values=values, needles=needles):
            error = render_error(values)
            missing = [n for n in needles if n not in error]
            expect(not missing, f"error lacks {missing}: {error.strip()}")
            if VERBOSE:
                print("     " + error.strip().replace("\n", "\n     "))
        check(f"refused: {name}", refused)

    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"({time.monotonic() - started:.1f}s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
