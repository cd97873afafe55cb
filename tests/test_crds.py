"""The CRDs in helm/controlplane/crds: what ``python -m controlplane.kube.crds`` generates from the
policy JSON Schema, structural as Kubernetes requires, accepting every policy the schema accepts
and refusing what it can express of the rest."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from controlplane.kube import crds
from controlplane.model.policy import policy_schema
from tests.conftest import REPO

CRD_DIR = REPO / "helm" / "controlplane" / "crds"
KUBERNETES = kubernetes_validate.utils.latest_version()


def _policy_files() -> list[Path]:
    found = []
    for folder in [REPO / "specs", *sorted(REPO.glob("tests/golden*"))]:
        for path in sorted(folder.rglob("*.y*ml")):
            if "kind: GatewayPolicy" not in path.read_text():
                continue  # rendered manifests and compiler outputs (policies are only quoted in them)
            documents = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
            if any(d.get("kind") == "GatewayPolicy" for d in documents):
                found.append(path)
    return found


POLICIES = _policy_files()


def _committed() -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))}


def _root(plural: str) -> dict[str, Any]:
    crd = _committed()[f"{plural}.controlplane.dev.yaml"]
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _as_resource(policy: dict[str, Any], name: str = "p") -> dict[str, Any]:
    spec = {k: v for k, v in policy.items() if k not in ("apiVersion", "kind", "metadata")}
    return {"apiVersion": "controlplane.dev/v1", "kind": "GatewayPolicy", "metadata": {"name": name}, "spec": spec}


def _crd_errors(resource: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_root("gatewaypolicies"))
    return ["/" + "/".join(map(str, e.absolute_path)) + ": " + e.message for e in validator.iter_errors(resource)]


def _schema_accepts(policy: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft202012Validator(policy_schema()).is_valid(policy))


def test_committed_crds_are_the_generated_ones() -> None:
    generated = {name: crds.render(crd) for name, crd in crds.custom_resource_definitions().items()}
    committed = {p.name: p.read_text() for p in sorted(CRD_DIR.glob("*.yaml"))}
    assert committed == generated, "helm/controlplane/crds is stale: run python -m controlplane.kube.crds"


def test_check_option_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--check", str(tmp_path)]) == 1
    assert crds.main([str(tmp_path)]) == 0
    assert crds.main(["--check", str(tmp_path)]) == 0
    stale = tmp_path / "gatewaypolicies.controlplane.dev.yaml"
    stale.write_text(stale.read_text().replace("minimum: 1\n", "minimum: 2\n", 1))
    assert crds.main(["--check", str(tmp_path)]) == 1
    assert "gatewaypolicies.controlplane.dev.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["apispecs.controlplane.dev.yaml", "gatewaypolicies.controlplane.dev.yaml"])
def test_valid_for_kubernetes(name: str) -> None:
    kubernetes_validate.validate(_committed()[name], KUBERNETES, strict=True)


# Structural schema rules (Kubernetes "Specifying a structural schema"), checked independently of
# the generator's own reasoning.
_FORBIDDEN = {"$ref", "$defs", "$schema", "$id", "const", "if", "then", "else", "uniqueItems", "patternProperties",
              "dependentRequired", "dependentSchemas", "unevaluatedProperties", "prefixItems", "examples"}  # fmt: skip
_NOT_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable"}
_JUNCTORS = ("oneOf", "anyOf", "allOf", "not")


def structural_problems(node: Any, at: str = "") -> list[str]:
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{at}: not a schema"]
    problems += [f"{at}: {k}" for k in sorted(_FORBIDDEN & set(node))]
    untyped = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if not isinstance(node.get("type"), str) and not untyped:
        problems.append(f"{at}: no single type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{at}: additionalProperties beside properties")
    declared = set(node.get("properties", {}))

    def junctor(branch: Any, where: str) -> None:
        if isinstance(branch, list):
            for i, b in enumerate(branch):
                junctor(b, f"{where}/{i}")
            return
        problems.extend(f"{where}: {k} in a junctor" for k in sorted((_NOT_IN_JUNCTORS | _FORBIDDEN) & set(branch)))
        problems.extend(f"{where}: {f} not declared outside" for f in branch.get("properties", {}) if f not in declared)
        for name in _JUNCTORS:
            if name in branch:
                junctor(branch[name], f"{where}/{name}")

    for name in _JUNCTORS:
        if name in node:
            junctor(node[name], f"{at}/{name}")
    for key, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{at}/properties/{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{at}/{key}")
    return problems


@pytest.mark.parametrize("plural", ["apispecs", "gatewaypolicies"])
def test_schemas_are_structural(plural: str) -> None:
    assert structural_problems(_root(plural)) == []


def test_the_policy_schema_itself_is_not_structural() -> None:
    # The check above can tell: the source schema breaks each rule the generator works around.
    schema = policy_schema()
    problems = structural_problems(schema) + [p for d in schema["$defs"].values() for p in structural_problems(d)]
    text = " ".join(problems)
    for rule in ("$ref", "const", "if", "uniqueItems", "no single type", "additionalProperties beside properties"):
        assert rule in text


def test_status_and_printer_columns() -> None:
    for plural, short in (("apispecs", "aspec"), ("gatewaypolicies", "gwpol")):
        crd = _committed()[f"{plural}.controlplane.dev.yaml"]
        assert crd["spec"]["names"]["shortNames"] == [short]
        (version,) = crd["spec"]["versions"]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
        assert columns["Accepted"]["jsonPath"] == '.status.conditions[?(@.type=="Accepted")].status'
        assert columns["Programmed"]["jsonPath"] == '.status.conditions[?(@.type=="Programmed")].status'
        assert columns["Message"]["priority"] == 1
        status = {
            "observedGeneration": 3,
            "conditions": [
                {
                    "type": t,
                    "status": "False",
                    "reason": "Invalid",
                    "message": "x",
                    "observedGeneration": 3,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
                for t in ("Accepted", "Programmed")
            ],
        }
        jsonschema.validate(status, version["schema"]["openAPIV3Schema"]["properties"]["status"])


def test_api_spec_needs_its_document() -> None:
    validator = jsonschema.Draft202012Validator(_root("apispecs"))
    base: dict[str, Any] = {"apiVersion": "controlplane.dev/v1", "kind": "ApiSpec", "metadata": {"name": "orders"}}
    assert validator.is_valid({**base, "spec": {"openapi": "openapi: 3.0.3\n"}})
    wrongs: list[dict[str, Any]] = [
        {},
        {"spec": {}},
        {"spec": {"openapi": ""}},
        {"spec": {"openapi": {"openapi": "3.0.3"}}},
    ]
    for wrong in wrongs:
        assert not validator.is_valid({**base, **wrong}), wrong


def test_there_are_example_policies() -> None:
    assert len(POLICIES) >= 4


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_policies_validate(path: Path) -> None:
    for policy in yaml.safe_load_all(path.read_text()):
        if isinstance(policy, dict) and policy.get("kind") == "GatewayPolicy":
            assert _crd_errors(_as_resource(policy)) == []


# The constructs the conversion rewrites, each in a policy the schema accepts.
ACCEPTED: dict[str, dict[str, Any]] = {
    "rate limit switched off without by (if/then/else)": {
        "apis": [
            {
                "name": "a",
                "spec": "a.yaml",
                "upstream": "u",
                "defaults": {"rateLimits": [{"name": "x", "disabled": True}]},
            },
        ],
        "upstreams": [{"name": "u", "url": "http://u:80"}],
    },
    "by as a list (two types)": {
        "rateLimits": {"limits": [{"name": "pair", "by": ["consumer", "ip"], "minute": 5}]},
    },
    "tls true and tls as an object (oneOf of types)": {
        "upstreams": [
            {"name": "a", "url": "https://a:443", "tls": True},
            {"name": "b", "endpoints": ["b:443"], "tls": {"sni": "b.example", "minVersion": "1.3"}},
        ],
    },
    "strictTransportSecurity false": {"headers": {"strictTransportSecurity": False}},
    "upstream named as a Service": {"upstreams": [{"name": "s", "service": "orders.shop:8080"}]},
}

REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "a port as a word": ({"listeners": [{"name": "l", "port": "http"}]}, "/spec/listeners/0/port"),
    "an unknown enum value": (
        {"rateLimits": {"limits": [{"name": "x", "by": "ip", "minute": 1, "onStoreFailure": "maybe"}]}},
        "/spec/rateLimits/limits/0/onStoreFailure",
    ),
    "a limit with neither by nor disabled": (
        {"apis": [{"name": "a", "spec": "a.yaml", "defaults": {"rateLimits": [{"name": "x", "minute": 1}]}}]},
        "/spec/apis/0/defaults/rateLimits/0",
    ),
    "an upstream with no address": ({"upstreams": [{"name": "u"}]}, "/spec/upstreams/0"),
    "an upstream with two addresses": (
        {"upstreams": [{"name": "u", "url": "http://u", "endpoints": ["u:80"]}]},
        "/spec/upstreams/0",
    ),
    "a duration in words": (
        {"upstreams": [{"name": "u", "url": "http://u", "connectTimeout": "five seconds"}]},
        "/spec/upstreams/0/connectTimeout",
    ),
    "a bad name": ({"listeners": [{"name": "Not A Name", "port": 8080}]}, "/spec/listeners/0/name"),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_the_schema_accepts_the_crd_accepts(case: str) -> None:
    policy = {"apiVersion": "controlplane.dev/v1", "kind": "GatewayPolicy", **ACCEPTED[case]}
    assert _schema_accepts(policy), "the example itself is wrong"
    assert _crd_errors(_as_resource(policy)) == []


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_invalid_policies_are_refused(case: str) -> None:
    body, where = REFUSED[case]
    policy = {"apiVersion": "controlplane.dev/v1", "kind": "GatewayPolicy", **body}
    assert not _schema_accepts(policy), "the example is not invalid"
    errors = _crd_errors(_as_resource(policy))
    assert any(e.startswith(where + ":") for e in errors), errors


def test_unknown_keyword_fails_the_generation() -> None:
    schema = copy.deepcopy(policy_schema())
    schema["$defs"]["gateway"]["patternProperties"] = {"^x-": {"type": "string"}}
    with pytest.raises(crds.Unconvertible, match="patternProperties"):
        crds.gateway_policy_spec(schema)


def test_recursive_reference_ends() -> None:
    schema = {
        "$defs": {
            "tree": {"type": "object", "description": "a node", "properties": {"child": {"$ref": "#/$defs/tree"}}}
        },
        "properties": {"tree": {"$ref": "#/$defs/tree"}},
    }
    spec = crds.gateway_policy_spec(schema)
    child = spec["properties"]["tree"]["properties"]["child"]
    assert child == {"description": "a node", "x-kubernetes-preserve-unknown-fields": True}
    assert structural_problems(spec) == []
