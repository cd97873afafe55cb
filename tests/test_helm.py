"""The Helm chart (helm/controlplane) rendered and linted by Helm's own engine (helm-python-sdk binds
Helm's Go SDK: no cluster, no helm binary), for several value sets.

Each rendered manifest is validated against the Kubernetes API schemas of a current version
(kubernetes-validate); the gateway's bootstrap in its ConfigMap must be exactly what
``python -m controlplane bootstrap`` prints for the same inputs, and Envoy must accept it.
``pytest --update-goldens`` rewrites tests/golden_helm/<value set>.yaml.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from controlplane import cli, filesync
from controlplane.certs import CertificateAuthority
from controlplane.kube import crds
from controlplane.ratelimit.options import parser as ratelimit_parser
from controlplane.waf.options import parser as waf_parser
from tests.conftest import REPO
from tests.harness import Response, envoy_binary, envoy_validate_file, free_port, raw_request, stop_process
from tests.kube_fake import FakeKube
from tests.redis_harness import REDIS_SERVER
from tests.redis_harness import command as redis_command
from tests.xds_harness import http_get, wait_for

CHART = REPO / "helm" / "controlplane"
GOLDEN = Path(__file__).parent / "golden_helm"
RELEASE = "edge"
NAMESPACE = "gateway-system"
FULLNAME = "edge-controlplane"
XDS_HOST = f"{FULLNAME}.{NAMESPACE}.svc"
TLS_DIR = "/etc/controlplane/xds-tls"
# The Kubernetes version manifests are validated against: the newest kubernetes-validate knows.
KUBERNETES = kubernetes_validate.utils.latest_version()
# Kinds whose CRDs are not in the Kubernetes schemas (cert-manager, Prometheus operator): their
# manifests are checked by the goldens and the tests below, not by an API schema.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

SOURCES = {"controlplane": {"sources": {"files": {"gateway.policy.yaml": "apiVersion: controlplane.dev/v1\n"}}}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    # The least a user sets: the sources. mTLS from cert-manager with the release's own CA.
    "minimal": {},
    # More replicas, hard spreading across zones, backends in two other namespaces.
    "ha": {
        "controlplane": {"replicas": 3, "pdb": {"minAvailable": 2}},
        "gateway": {"autoscaling": {"minReplicas": 4, "maxReplicas": 30}, "pdb": {"maxUnavailable": 2}},
        "topologySpread": {"zones": "DoNotSchedule"},
        "backends": {
            "namespaces": ["shop", "payments"],
            "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api", "web"]}]},
            "ports": [{"port": 8080, "protocol": "TCP"}],
        },
    },
    # Certificates from the cluster's own ClusterIssuer; incremental xDS.
    "tls-cert-manager": {
        "tls": {"certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
        "xds": {"delta": True},
    },
    # Certificates the user provides as Secrets (no cert-manager), a fixed gateway replica count.
    "tls-existing-secrets": {
        "tls": {
            "certManager": {"enabled": False},
            "existingSecret": "xds-server",
            "existingClientSecrets": {"gateway": "xds-gateway", "ratelimit": "xds-ratelimit", "waf": "xds-waf"},
        },
        "gateway": {"autoscaling": {"enabled": False}, "replicas": 3, "nodeId": "edge-gw", "adminPort": 9000},
    },
    # Limits counted across every Envoy: the rate-limit service and the chart's Redis; metrics.
    "global-limits": {
        "rateLimits": {"global": {"enabled": True, "domains": ["gateway", "partners"]}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "adminFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    },
    # The rate-limit service on an external Redis.
    "external-redis": {
        "rateLimits": {"global": {"enabled": True, "redis": {"url": "redis://redis.data.svc:6379/2"}}},
    },
    "waf": {"waf": {"enabled": True}, "serviceMonitor": {"enabled": True}},
    # The geo-blocking country database from a volume geoipupdate fills, in both kinds of pods.
    "geo": {"geoDatabase": {"volume": {"persistentVolumeClaim": {"claimName": "geoip", "readOnly": True}}}},
    # The push API on every replica, its versions in ConfigMaps; pipelines with client certificates
    # from one namespace only.
    "push": {
        "push": {
            "enabled": True,
            "serviceType": "LoadBalancer",
            "dnsNames": ["push.example.com"],
            "clientCASecret": "ci-ca",
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}}}],
        },
    },
    # Plaintext xDS only because it is asked for.
    "insecure": {"xds": {"insecure": True}, "tls": {"certManager": {"enabled": False}}},
    # Everything from the cluster, in two namespaces only (Roles there, no ClusterRole); no files.
    "cluster-namespaces": {"controlplane": {"kubernetes": {"namespaces": ["shop", "payments"]}}},
    # Files only: no watcher, no RBAC, no service account token.
    "files-only": {"controlplane": {"kubernetes": {"enabled": False}}},
}
# Value sets given without SOURCES (the cluster is their only source).
WITHOUT_FILES = {"cluster-namespaces"}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_of(case: str) -> dict[str, Any]:
    return merge({} if case in WITHOUT_FILES else SOURCES, VALUE_SETS[case])


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in sorted(rendered):
        if name.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(rendered[name]) if doc)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def case(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(case: str) -> list[dict[str, Any]]:
    return manifests(render(values_of(case)))


def test_lint_clean(case: str) -> None:
    report = helm.lint(CHART, values_of(case), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBERNETES}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_manifests_valid_for_kubernetes(docs: list[dict[str, Any]]) -> None:
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        checked += 1
    assert checked >= 10


def test_crd_kinds_only_when_asked(case: str, docs: list[dict[str, Any]]) -> None:
    values = values_of(case)
    kinds = {d["kind"] for d in docs}
    assert ("ServiceMonitor" in kinds) == bool(values.get("serviceMonitor", {}).get("enabled"))
    cert_manager = values.get("tls", {}).get("certManager", {}).get("enabled", True)
    assert ("Certificate" in kinds) == (cert_manager and not values.get("xds", {}).get("insecure", False))


def test_crds_shipped_and_valid_for_kubernetes() -> None:
    # Helm installs crds/ before the templates (and never deletes them); they are what the
    # generator makes from the policy schema (tests/test_crds.py checks the files themselves).
    with helm.Chart.load(CHART) as chart:
        shipped = {c["name"]: yaml.safe_load(c["data"]) for c in chart.crds}
    generated = crds.custom_resource_definitions()
    assert shipped == {f"crds/{name}": crd for name, crd in generated.items()}
    for crd in shipped.values():
        kubernetes_validate.validate(crd, KUBERNETES, strict=True)


def _kube_values(case: str) -> dict[str, Any]:
    return merge(
        helm_defaults()["controlplane"]["kubernetes"], values_of(case).get("controlplane", {}).get("kubernetes", {})
    )


def test_the_control_plane_follows_the_cluster_unless_turned_off(case: str, docs: list[dict[str, Any]]) -> None:
    kube = _kube_values(case)
    container = _container(docs, FULLNAME, "controlplane")
    spec = find(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    parsed = cli.parser().parse_args([str(a) for a in container["args"]])
    service_account = find(docs, "ServiceAccount", FULLNAME)
    assert parsed.kubernetes == kube["enabled"]
    assert service_account["automountServiceAccountToken"] == kube["enabled"]
    if not kube["enabled"]:
        assert "env" not in container
        assert not [v for v in spec["volumes"] if v["name"] == "kube-state"]
        return
    assert parsed.kube_lease == f"{NAMESPACE}/{FULLNAME}-leader"
    assert (parsed.kube_namespace or []) == kube["namespaces"]
    assert parsed.kube_configmap_selector == kube["configMapSelector"]
    assert parsed.kube_secret_selector == kube["secretSelector"]
    # $(POD_NAME) is expanded by the kubelet from the container's env: each replica its own name.
    assert parsed.kube_identity == "$(POD_NAME)"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    # The root filesystem is read-only: the mirror needs a writable volume, in memory (TLS keys).
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == parsed.kube_state]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]
    assert not mount.get("readOnly")


# (group, resource, verb, resource name or "") the watcher needs in each namespace it watches.
WATCH_GRANTS = {
    *((g, r, v, "") for g, r in (("controlplane.dev", "apispecs"), ("controlplane.dev", "gatewaypolicies"),
                                 ("", "configmaps"), ("", "secrets"), ("", "services"),
                                 ("discovery.k8s.io", "endpointslices")) for v in ("get", "list", "watch")),
    *(("controlplane.dev", f"{r}/status", v, "") for r in ("apispecs", "gatewaypolicies") for v in ("patch", "update")),
    ("", "events", "create", ""),
    ("", "events", "patch", ""),
}  # fmt: skip
LEASE_GRANTS = {
    ("coordination.k8s.io", "leases", "create", ""),
    ("coordination.k8s.io", "leases", "get", f"{FULLNAME}-leader"),
    ("coordination.k8s.io", "leases", "update", f"{FULLNAME}-leader"),
}


def _grants(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str, str]]]:
    """{namespace, or "*" for the cluster: what the control plane's service account may do}."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("Role", "ClusterRole")}  # fmt: skip
    out: dict[str, set[tuple[str, str, str, str]]] = {}
    for binding in docs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace")
        role = roles.pop((ref["kind"], None if ref["kind"] == "ClusterRole" else namespace, ref["name"]))
        scope = namespace if binding["kind"] == "RoleBinding" else "*"
        for rule in role["rules"]:
            for text in (*rule["apiGroups"], *rule["resources"], *rule["verbs"], *rule.get("resourceNames", [])):
                assert "*" not in text, rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames", [""]):
                            out.setdefault(scope, set()).add((group, resource, verb, name))
    assert not roles, f"roles bound to nothing: {sorted(roles)}"
    return out


def test_rbac_is_exactly_what_the_watcher_needs(case: str, docs: list[dict[str, Any]]) -> None:
    kube = _kube_values(case)
    grants = _grants(docs)
    if not kube["enabled"]:
        assert grants == {}
        return
    expected = {ns: set(WATCH_GRANTS) for ns in kube["namespaces"] or ["*"]}
    expected[NAMESPACE] = expected.get(NAMESPACE, set()) | LEASE_GRANTS
    if values_of(case).get("push", {}).get("enabled"):
        expected[NAMESPACE] |= PUSH_GRANTS
    assert grants == expected


# The push store: ConfigMaps of the release's namespace, read, created and rewritten.
PUSH_GRANTS = {("", "configmaps", v, "") for v in ("get", "list", "watch", "create", "update", "patch")}


def test_the_push_api_on_every_replica_with_its_versions_in_the_cluster() -> None:
    values = values_of("push")
    docs = manifests(render(values))
    container = _container(docs, FULLNAME, "controlplane")
    parsed = cli.parser().parse_args([str(a) for a in container["args"]])
    options = cli._push_options(parsed)  # what serve makes of them: refused combinations fail here
    assert options.address == "0.0.0.0:18443" and options.configmaps == f"{NAMESPACE}/{FULLNAME}-push"
    assert options.peers == (f"{FULLNAME}-peers.{NAMESPACE}.svc:9100",)
    assert (options.cert_file, options.client_ca) == (
        "/etc/controlplane/push-tls/tls.crt",
        "/etc/controlplane/push-client-ca/ca.crt",
    )
    # every replica behind the push Service; the peers Service headless, so its name resolves to each
    push = find(docs, "Service", f"{FULLNAME}-push")["spec"]
    assert push["type"] == "LoadBalancer" and push["ports"][0]["targetPort"] == "push"
    assert push["selector"] == find(docs, "Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    peers = find(docs, "Service", f"{FULLNAME}-peers")["spec"]
    assert peers["clusterIP"] == "None" and peers["ports"][0]["port"] == 9100
    # the certificate names what pipelines dial; its Secret and the client CA are what serve reads
    certificate = find(docs, "Certificate", f"{FULLNAME}-push")["spec"]
    assert {f"{FULLNAME}-push.{NAMESPACE}.svc", "push.example.com"} <= set(certificate["dnsNames"])
    assert "server auth" in certificate["usages"]
    spec = find(docs, "Deployment", FULLNAME)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/etc/controlplane/push-tls"]]["secret"]["secretName"] == certificate["secretName"]
    assert volumes[mounts["/etc/controlplane/push-client-ca"]]["secret"]["secretName"] == "ci-ca"
    assert "emptyDir" in volumes[mounts[parsed.push_store]]  # the copy; the ConfigMaps are the store
    # the push port from the namespace values name; the admin port from the other replicas
    ingress = find(docs, "NetworkPolicy", f"{FULLNAME}-controlplane")["spec"]["ingress"]
    (push_rule,) = [r for r in ingress if {"port": "push", "protocol": "TCP"} in r["ports"]]
    assert push_rule["from"] == values["push"]["from"]
    pods = _pod_labels(docs)
    admin = [r for r in ingress if {"port": "admin", "protocol": "TCP"} in r["ports"]]
    admitted = {
        n
        for r in admin
        for n, labels in pods.items()
        if any(_labels_match(p.get("podSelector", {}), labels) for p in r["from"] if "podSelector" in p)
    }
    assert admitted == {FULLNAME}
    assert not [d for d in manifests(render(values_of("minimal"))) if "push" in d["metadata"]["name"]]


def test_every_pod_locked_down(docs: list[dict[str, Any]]) -> None:
    pods = list(pod_specs(docs))
    assert pods
    for name, template in pods:
        spec = template["spec"]
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, name
        assert pod_context["runAsUser"] > 0, name
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert "add" not in context["capabilities"], where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, where


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def _pod_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {name: template["metadata"]["labels"] for name, template in pod_specs(docs)}


def test_backends_accept_only_the_gateway(case: str, docs: list[dict[str, Any]]) -> None:
    values = values_of(case)
    backends = merge(helm_defaults()["backends"], values.get("backends", {}))
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"{FULLNAME}-backends"]
    assert sorted(p["metadata"]["namespace"] for p in policies) == sorted(backends["namespaces"] or [NAMESPACE])
    pods = _pod_labels(docs)
    for policy in policies:
        spec = policy["spec"]
        assert spec["podSelector"] == backends["podSelector"]
        assert spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        (peer,) = rule["from"]
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}
        admitted = {name for name, labels in pods.items() if _labels_match(peer["podSelector"], labels)}
        assert admitted == {f"{FULLNAME}-gateway"}
        # The chart's own pods are never taken for backends (they would lose their callers).
        assert not any(_labels_match(spec["podSelector"], labels) for labels in pods.values())
        assert rule.get("ports", []) == backends["ports"]


def test_xds_port_only_from_its_clients(docs: list[dict[str, Any]]) -> None:
    policy = find(docs, "NetworkPolicy", f"{FULLNAME}-controlplane")["spec"]
    pods = _pod_labels(docs)
    assert {n for n, labels in pods.items() if _labels_match(policy["podSelector"], labels)} == {FULLNAME}
    xds_rules = [r for r in policy["ingress"] if {"port": "xds", "protocol": "TCP"} in r["ports"]]
    (rule,) = xds_rules
    assert rule["ports"] == [{"port": "xds", "protocol": "TCP"}]
    admitted = {n for n, labels in pods.items() if any(_labels_match(p["podSelector"], labels) for p in rule["from"])}
    clients = {f"{FULLNAME}-gateway", f"{FULLNAME}-ratelimit", f"{FULLNAME}-waf"}
    assert admitted == clients & set(pods)
    assert all(set(p) == {"podSelector"} for p in rule["from"])  # this namespace only


def test_network_policies_can_be_turned_off() -> None:
    docs = manifests(render(merge(SOURCES, {"networkPolicy": {"enabled": False}})))
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]


def _container(docs: list[dict[str, Any]], deployment: str, name: str) -> dict[str, Any]:
    spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    return container


def test_xds_mtls_unless_insecure_is_asked(case: str, docs: list[dict[str, Any]]) -> None:
    insecure = values_of(case).get("xds", {}).get("insecure", False)
    args = _container(docs, FULLNAME, "controlplane")["args"]
    assert ("--insecure" in args) == insecure
    if not insecure:
        for flag, file in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-client-ca", "ca.crt")):
            assert args[args.index(flag) + 1] == f"{TLS_DIR}/{file}"
    for deployment, container in ((f"{FULLNAME}-ratelimit", "ratelimit"), (f"{FULLNAME}-waf", "waf")):
        if any(d["kind"] == "Deployment" and d["metadata"]["name"] == deployment for d in docs):
            client_args = _container(docs, deployment, container)["args"]
            assert ("--insecure" in client_args) == insecure
            assert ("--xds-cert" in client_args) != insecure
            assert client_args[client_args.index("--xds") + 1] == f"{XDS_HOST}:18000"


def test_commands_parse_with_the_real_options(case: str, docs: list[dict[str, Any]]) -> None:
    # The container command lines as the project's own parsers read them: a renamed or mistyped
    # option fails here instead of in a crash-looping pod.
    parsers = {"serve": cli.parser, "ratelimit": ratelimit_parser, "waf": waf_parser, "sync-files": filesync.parser}
    seen = set()
    for name, template in pod_specs(docs):
        for container in template["spec"]["containers"] + template["spec"].get("initContainers", []):
            if container["command"][:3] != ["python", "-m", "controlplane"]:
                continue
            args = [str(a) for a in container["args"]]
            command = args[0]
            seen.add(command)
            parsed = parsers[command]().parse_args(args if command == "serve" else args[1:])
            if command == "sync-files":
                continue  # (its arguments: test_the_geo_database_is_a_copy_envoy_sees_change_…)
            if command == "serve":
                files = "files" in values_of(case).get("controlplane", {}).get("sources", {})
                assert parsed.paths == (["/etc/controlplane/sources"] if files else []), name
                assert parsed.xds_address == f"0.0.0.0:{container['ports'][0]['containerPort']}", name
            else:
                assert parsed.xds == f"{XDS_HOST}:18000", name
        for container in template["spec"]["containers"]:
            if container["command"][:2] == ["python", "-c"]:  # the gateway's agent
                compile(container["command"][2], f"{name}/{container['name']}", "exec")
                for hook in (container["readinessProbe"], container["lifecycle"]["preStop"]):
                    compile(hook["exec"]["command"][2], f"{name}/{container['name']}", "exec")
    assert "serve" in seen


def test_server_certificate_names_the_xds_host() -> None:
    docs = manifests(render(values_of("minimal")))
    server = find(docs, "Certificate", f"{FULLNAME}-xds-controlplane")["spec"]
    assert XDS_HOST in server["dnsNames"]
    assert "server auth" in server["usages"]
    docs = manifests(render(values_of("global-limits")))
    for group in ("gateway", "ratelimit"):
        client = find(docs, "Certificate", f"{FULLNAME}-xds-{group}")["spec"]
        assert "client auth" in client["usages"]
        # the control plane takes a client's node group from its certificate's organizational unit
        assert client["subject"]["organizationalUnits"] == [group]
    assert find(docs, "Certificate", f"{FULLNAME}-xds-gateway")["spec"]["commonName"] == "gateway"


def test_gateway_ready_and_drained(docs: list[dict[str, Any]]) -> None:
    deployment = find(docs, "Deployment", f"{FULLNAME}-gateway")
    spec = deployment["spec"]["template"]["spec"]
    envoy = _container(docs, f"{FULLNAME}-gateway", "envoy")
    agent = _container(docs, f"{FULLNAME}-gateway", "agent")
    admin = yaml.safe_load(_bootstrap_text(docs))["admin"]["address"]["socket_address"]
    probe = " ".join(agent["readinessProbe"]["exec"]["command"])
    assert f"http://127.0.0.1:{admin['port_value']}/ready" in probe
    drain = " ".join(agent["lifecycle"]["preStop"]["exec"]["command"])
    assert f"http://127.0.0.1:{admin['port_value']}/drain_listeners?graceful" in drain
    drain_seconds = int(envoy["args"][envoy["args"].index("--drain-time-s") + 1])
    assert f"time.sleep({drain_seconds})" in drain
    assert envoy["lifecycle"]["preStop"]["sleep"]["seconds"] > drain_seconds
    assert spec["terminationGracePeriodSeconds"] > envoy["lifecycle"]["preStop"]["sleep"]["seconds"]
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_the_geo_database_is_a_copy_envoy_sees_change_at_the_same_path_in_both_pods(
    case: str, docs: list[dict[str, Any]]
) -> None:
    """The compile checks the file Envoy reads, at one path; the volume itself is copied there
    (sync-files), since Envoy does not see a ConfigMap or Secret volume's updates."""
    for deployment, container in ((FULLNAME, "controlplane"), (f"{FULLNAME}-gateway", "envoy")):
        spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mount = next(
            (m for m in _container(docs, deployment, container)["volumeMounts"] if m["name"] == "geo-database"), None
        )
        if case != "geo":
            assert (
                mount is None and not {"geo-database", "geo-source"} & set(volumes) and not spec.get("initContainers")
            )
            continue
        assert volumes["geo-source"] == {
            "name": "geo-source",
            "persistentVolumeClaim": {"claimName": "geoip", "readOnly": True},
        }
        assert set(volumes["geo-database"]) == {"name", "emptyDir"}
        assert mount == {"name": "geo-database", "mountPath": "/var/lib/geoip", "readOnly": True}
        # copied before the pod's other containers start, then kept current beside them
        (first,) = spec["initContainers"]
        for copier, once in ((first, True), (_container(docs, deployment, "geo-sync"), False)):
            assert copier["command"] == ["python", "-m", "controlplane"] and copier["args"][0] == "sync-files"
            args = filesync.parser().parse_args([str(a) for a in copier["args"][1:]])
            assert (str(args.src), str(args.dst), args.once) == (
                "/var/run/controlplane/geo-source",
                "/var/lib/geoip",
                once,
            )
            mounts = {m["name"]: m for m in copier["volumeMounts"]}
            assert mounts["geo-source"] == {"name": "geo-source", "mountPath": str(args.src), "readOnly": True}
            assert mounts["geo-database"] == {"name": "geo-database", "mountPath": str(args.dst)}


def test_high_availability(case: str, docs: list[dict[str, Any]]) -> None:
    assert find(docs, "Deployment", FULLNAME)["spec"]["replicas"] >= 2
    gateway = find(docs, "Deployment", f"{FULLNAME}-gateway")["spec"]
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    if hpas:
        assert "replicas" not in gateway  # the HPA owns it
        assert hpas[0]["spec"]["minReplicas"] >= 2
    else:
        assert gateway["replicas"] >= 2
    for name in (FULLNAME, f"{FULLNAME}-gateway"):
        find(docs, "PodDisruptionBudget", name)


def _bootstrap_text(docs: list[dict[str, Any]]) -> str:
    return str(find(docs, "ConfigMap", f"{FULLNAME}-gateway-bootstrap")["data"]["envoy.yaml"])


def _bootstrap_cli(values: dict[str, Any]) -> dict[str, Any]:
    merged = merge(helm_defaults(), values)
    argv = [
        sys.executable, "-m", "controlplane", "bootstrap",
        "--node-id", merged["gateway"]["nodeId"],
        "--cluster", "gateway",
        "--xds-address", f"{XDS_HOST}:{merged['xds']['port']}",
        "--admin-port", str(merged["gateway"]["adminPort"]),
    ]  # fmt: skip
    if merged["xds"]["delta"]:
        argv.append("--delta")
    if merged["xds"]["insecure"]:
        argv.append("--insecure")
    else:
        argv += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key", "--tls-ca", f"{TLS_DIR}/ca.crt"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout
    parsed: dict[str, Any] = yaml.safe_load(out)
    return parsed


def test_bootstrap_is_what_the_cli_prints(case: str, docs: list[dict[str, Any]]) -> None:
    assert yaml.safe_load(_bootstrap_text(docs)) == _bootstrap_cli(values_of(case))


@pytest.mark.envoy
@pytest.mark.parametrize("case_name", ["minimal", "tls-existing-secrets", "insecure"])
def test_envoy_accepts_the_bootstrap(case_name: str, tmp_path: Path) -> None:
    text = _bootstrap_text(manifests(render(values_of(case_name))))
    # The certificate files are mounted from a Secret in the pod: real ones stand in for them here.
    ca = CertificateAuthority(tmp_path, "xds-ca")
    issued = ca.issue("gateway", client=True)
    for file, path in (("tls.crt", issued.cert), ("tls.key", issued.key), ("ca.crt", ca.path)):
        text = text.replace(f"{TLS_DIR}/{file}", str(path))
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    proc = envoy_validate_file(config)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def helm_defaults() -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.values


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"controlplane": {"replicas": "two"}}, "/controlplane/replicas"),
        ({"controlplane": {"replicas": 1}}, "/controlplane/replicas"),
        ({"gatway": {"replicas": 3}}, "gatway"),
        ({"gateway": {"autoscaling": {"minReplica": 3}}}, "minReplica"),
        ({"gateway": {"resources": {"requests": {"cpu": "lots"}}}}, "/gateway/resources/requests/cpu"),
        ({"gateway": {"resources": {"limits": None}}}, "/gateway/resources"),
        ({"gateway": {"ports": [{"name": "http", "containerPort": 80}]}}, "/gateway/ports/0/containerPort"),
        # null removes a default: what is left of the selector is empty, which selects every pod
        ({"backends": {"podSelector": {"matchLabels": None}}}, "/backends/podSelector"),
        ({"xds": {"insecure": "yes"}}, "/xds/insecure"),
        ({"podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
        ({"tls": {"certManager": {"enabled": False}}}, "set tls.certManager.enabled, or tls.existingSecret"),
        ({"gateway": {"autoscaling": {"minReplicas": 12}}}, "minReplicas is above gateway.autoscaling.maxReplicas"),
        ({"controlplane": {"sources": {"files": None}}}, "/controlplane/sources"),
        ({"controlplane": {"sources": {"existingConfigMap": "specs"}}}, "controlplane.sources: set files or"),
        ({"controlplane": {"kubernetes": {"namespaces": ["Shop"]}}}, "/controlplane/kubernetes/namespaces/0"),
        ({"controlplane": {"kubernetes": {"enabled": "yes"}}}, "/controlplane/kubernetes/enabled"),
        ({"controlplane": {"kubernetes": {"stateSizeLimit": "lots"}}}, "/controlplane/kubernetes/stateSizeLimit"),
        ({"push": {"enabled": True, "pushPort": 1}}, "/push"),
        (
            {"push": {"enabled": True}, "controlplane": {"kubernetes": {"enabled": False}}},
            "it needs controlplane.kubernetes.enabled",
        ),
        (
            {"push": {"enabled": True}, "xds": {"insecure": True}},
            "push.existingSecret (the push API's TLS certificate) is required",
        ),
    ],
)
def test_wrong_value_fails_naming_it(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmError) as error:
        render(merge(SOURCES, values))
    assert named in str(error.value)


def test_without_the_cluster_the_sources_are_needed() -> None:
    render({"controlplane": {"kubernetes": {"namespaces": ["shop"]}}})  # the cluster is enough
    with pytest.raises(helm.HelmError) as error:
        render({"controlplane": {"kubernetes": {"enabled": False}}})
    assert "controlplane.sources: set files" in str(error.value)


def test_every_value_is_documented() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented: list[str] = []
    # (indent, documented) of the keys enclosing the current line
    stack: list[tuple[int, bool]] = []
    previous = ""
    for line in lines:
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or any(d for _, d in stack)
            if not documented:
                is_parent = line.rstrip().endswith(":")
                if not is_parent:
                    undocumented.append(line.strip())
            stack.append((indent, documented))
        if line.strip():
            previous = line
    assert not undocumented


def _golden_text(case: str) -> str:
    rendered = render(values_of(case))
    parts = [f"# {name}\n{rendered[name].strip()}\n" for name in sorted(rendered) if rendered[name].strip()]
    return "\n".join(parts)


def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    path = GOLDEN / f"{case}.yaml"
    actual = _golden_text(case)
    if request.config.getoption("--update-goldens"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(actual)
        for orphan in GOLDEN.glob("*.yaml"):
            if orphan.stem not in VALUE_SETS:
                orphan.unlink()
        return
    assert path.exists(), f"{path} is missing: run pytest --update-goldens"
    assert actual == path.read_text(), f"{path} differs: run pytest --update-goldens and review the diff"


E2E_SPEC = """\
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /}]
paths:
  /items:
    get:
      operationId: listItems
      parameters: [{name: q, in: query, schema: {type: string}}]
      responses: {"200": {description: ok}}
"""


def _as_configmap_volume(data: dict[str, str], directory: Path) -> None:
    # The kubelet's layout: the files in a hidden timestamped folder, `..data` pointing at it and
    # each key a link through `..data` (swapped at once on an update).
    stamped = directory / "..2026_01_01_00_00_00.000000000"
    stamped.mkdir(parents=True)
    for key, text in data.items():
        (stamped / key).write_text(text)
        (directory / key).symlink_to(Path("..data") / key)
    (directory / "..data").symlink_to(stamped.name)


def _localize(args: list[str], swaps: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for old, new in swaps.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


@pytest.mark.envoy
@pytest.mark.slow
def test_rendered_pods_as_processes(tmp_path: Path, echo: Any) -> None:
    """The control plane, the gateway pod's containers, the WAF and rate-limit services and Redis
    run from their rendered command lines, with certificates as the rendered cert-manager
    Certificates describe them (the services check the server's name as in the cluster): Envoy and
    the services get their configuration over mTLS, the agent's readiness probe passes, traffic
    flows, an attack is refused, a global limit is counted in Redis, and the agent's preStop hook
    drains the listeners. Only addresses and mounted paths are swapped for local ones."""
    listener, xds_port, cp_admin, envoy_admin = free_port(), free_port(), free_port(), free_port()
    waf_port, waf_admin, rl_port, rl_admin, redis_port = free_port(), free_port(), free_port(), free_port(), free_port()
    policy = (
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
        f"listeners: [{{name: public, address: 127.0.0.1, port: {listener}}}]\n"
        f'upstreams: [{{name: backend, endpoints: ["127.0.0.1:{echo.port}"]}}]\n'
        f'waf: {{service: {{endpoints: ["127.0.0.1:{waf_port}"], timeout: 2s}}, mode: prevent}}\n'
        f'rateLimits: {{service: {{endpoints: ["127.0.0.1:{rl_port}"], timeout: 2s}},'
        " limits: [{name: per-client, by: ip, minute: 2}]}\n"
        "apis: [{name: items, spec: items.openapi.yaml, upstream: backend}]\n"
    )
    values = merge(
        values_of("waf"),
        {
            "rateLimits": {"global": {"enabled": True}},
            "controlplane": {"sources": {"files": {"items.openapi.yaml": E2E_SPEC, "gateway.policy.yaml": policy}}},
            "gateway": {"drain": {"seconds": 1}},
        },
    )
    docs = manifests(render(values))

    sources = tmp_path / "sources"
    _as_configmap_volume(find(docs, "ConfigMap", f"{FULLNAME}-sources")["data"], sources)
    ca = CertificateAuthority(tmp_path, "xds-ca")
    tls_dirs = {}
    for component in ("controlplane", "gateway", "waf", "ratelimit"):
        spec = find(docs, "Certificate", f"{FULLNAME}-xds-{component}")["spec"]
        units = spec.get("subject", {}).get("organizationalUnits", [None])
        issued = ca.issue(spec["commonName"], spec.get("dnsNames", ()), client="client auth" in spec["usages"],
                          unit=units[0], stem=component)  # fmt: skip
        folder = tmp_path / f"tls-{component}"
        folder.mkdir()
        for file, path in (("tls.crt", issued.cert), ("tls.key", issued.key), ("ca.crt", ca.path)):
            (folder / file).write_bytes(path.read_bytes())
        tls_dirs[component] = str(folder)

    plane = _container(docs, FULLNAME, "controlplane")
    kube = FakeKube().start()
    plane_argv = _localize(
        plane["command"][1:] + plane["args"],
        {TLS_DIR: tls_dirs["controlplane"], "/etc/controlplane/sources": str(sources),
         "0.0.0.0:18000": f"127.0.0.1:{xds_port}", "0.0.0.0:9100": f"127.0.0.1:{cp_admin}",
         "/var/run/controlplane/kube": str(tmp_path / "kube-state"), "$(POD_NAME)": "controlplane-0"},
    )  # fmt: skip
    plane_argv += ["--kubeconfig", str(kube.kubeconfig(tmp_path / "kubeconfig"))]  # in-cluster in the pod
    waf = _container(docs, f"{FULLNAME}-waf", "waf")
    waf_argv = _localize(
        waf["command"][1:] + waf["args"],
        {TLS_DIR: tls_dirs["waf"], "0.0.0.0:8082": f"127.0.0.1:{waf_port}", "0.0.0.0:8083": f"127.0.0.1:{free_port()}",
         "9103": str(waf_admin), f"{XDS_HOST}:18000": f"127.0.0.1:{xds_port}", "0.0.0.0": "127.0.0.1"},
    )  # fmt: skip
    waf_argv += ["--xds-server-name", XDS_HOST]  # the name it checks by default in the cluster
    redis_url = f"redis://{FULLNAME}-redis.{NAMESPACE}.svc:6379/0"
    ratelimit = _container(docs, f"{FULLNAME}-ratelimit", "ratelimit")
    assert redis_url in ratelimit["args"]
    ratelimit_argv = _localize(
        ratelimit["command"][1:] + ratelimit["args"],
        {TLS_DIR: tls_dirs["ratelimit"], "0.0.0.0:8081": f"127.0.0.1:{rl_port}", "9102": str(rl_admin),
         f"{XDS_HOST}:18000": f"127.0.0.1:{xds_port}", "0.0.0.0": "127.0.0.1",
         redis_url: f"redis://127.0.0.1:{redis_port}/0"},
    )  # fmt: skip
    ratelimit_argv += ["--xds-server-name", XDS_HOST]
    redis = _container(docs, f"{FULLNAME}-redis", "redis")
    (tmp_path / "redis").mkdir()
    redis_argv = _localize(redis["args"], {"6379": str(redis_port), "/data": str(tmp_path / "redis")})
    redis_argv = [REDIS_SERVER, *redis_argv, "--bind", "127.0.0.1"]  # loopback only on this machine
    envoy = _container(docs, f"{FULLNAME}-gateway", "envoy")
    agent = _container(docs, f"{FULLNAME}-gateway", "agent")
    (bootstrap,) = _localize(
        [_bootstrap_text(docs)],
        {TLS_DIR: tls_dirs["gateway"], f"address: {XDS_HOST}\n": "address: 127.0.0.1\n",
         "port_value: 18000": f"port_value: {xds_port}", "port_value: 9901": f"port_value: {envoy_admin}"},
    )  # fmt: skip
    assert f"sni: {XDS_HOST}" in bootstrap  # Envoy still asks for the Service's name
    (tmp_path / "envoy").mkdir()
    (tmp_path / "envoy" / "envoy.yaml").write_text(bootstrap)
    envoy_argv = _localize(envoy["command"] + envoy["args"], {"/etc/envoy": str(tmp_path / "envoy")})
    envoy_argv[0] = envoy_binary()

    def agent_hook(command: list[str]) -> subprocess.CompletedProcess[str]:
        code = command[2].replace("http://127.0.0.1:9901/", f"http://127.0.0.1:{envoy_admin}/")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)

    def request(target: str) -> Response:
        return raw_request(listener, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), timeout=2)

    def get(target: str) -> int:
        return request(target).status

    def refused() -> bool:
        try:
            get("/items")
        except ConnectionRefusedError:
            return True
        return False

    logs = tmp_path / "logs.txt"
    procs: list[subprocess.Popen[bytes]] = []
    with logs.open("w") as log:
        try:
            runs = (redis_argv, [sys.executable, *plane_argv], [sys.executable, *waf_argv],
                    [sys.executable, *ratelimit_argv], envoy_argv)  # fmt: skip
            for argv in runs:
                procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path))
            wait_for(lambda: agent_hook(agent["readinessProbe"]["exec"]["command"]).returncode == 0, 60,
                     "the agent's readiness probe")  # fmt: skip
            wait_for(lambda: http_get(waf_admin, "/ready")[0] == 200, 30, "the WAF service's rules over mTLS")
            wait_for(lambda: http_get(rl_admin, "/ready")[0] == 200, 30, "the rate-limit service's limits, Redis")
            assert get("/items?q=shoes") == 200
            assert get("/items?q=" + quote("1' OR '1'='1' --")) == 403
            # 2 a minute: of four more, one is over in whichever windows they fall; the first refusal
            # is the service's (Retry-After; Envoy's own backstop allows twice as many)
            answers = [request("/items?q=socks") for _ in range(4)]
            refusals = [a for a in answers if a.status == 429]
            assert refusals and refusals[0].header("retry-after"), [a.status for a in answers]
            assert redis_command(redis_port, "DBSIZE") > 0  # counted in Redis
            drained = agent_hook(agent["lifecycle"]["preStop"]["exec"]["command"])
            assert drained.returncode == 0, drained.stderr
            wait_for(refused, 15, "the drained listener to close")
            # A rejected custom resource: the leader writes its status and an Event, as the
            # rendered RBAC allows (every request the control plane made is checked against it).
            broken = {"name": "broken", "namespace": "shop"}
            kube.apply("gatewaypolicies", {"kind": "GatewayPolicy", "metadata": broken, "spec": {"upstreams": [{}]}})

            def rejected() -> bool:
                (obj,) = kube.objects("gatewaypolicies", "shop")
                conditions = {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}
                return conditions.get("Accepted", {}).get("status") == "False" and bool(kube.objects("events", "shop"))

            wait_for(rejected, 30, "the rejected GatewayPolicy's status and Event")
            grants = _grants(docs)
            unauthorized = [(v, p) for v, p, _ in kube.requests if not _authorized(grants, v, p)]
            assert not unauthorized
            assert {v for v, _, _ in kube.requests} >= {"list", "watch", "get", "create", "patch"}
        except BaseException:
            print(logs.read_text())
            raise
        finally:
            for proc in procs:
                stop_process(proc)
            kube.stop()


def _authorized(grants: dict[str, set[tuple[str, str, str, str]]], verb: str, path: str) -> bool:
    """Whether the rendered RBAC lets the control plane's service account make this request."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else ""
    scopes = ["*"] + ([namespace] if namespace else [])
    return any((group, resource, verb, n) in grants.get(scope, set()) for scope in scopes for n in {"", name})
