"""The WAF in the policy: which mode each operation gets on each listener (section, listener,
route settings), and bad input reported with file, pointer and reason, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

from controlplane import ir
from controlplane.compiler import compile
from controlplane.errors import Severity

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
paths:
  /search:
    get: {operationId: search, responses: {"200": {description: ok}}}
  /upload:
    post: {operationId: upload, responses: {"200": {description: ok}}}
  /pages:
    post: {operationId: updatePage, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
waf: {mode: prevent}
listeners:
  - {name: public, address: 127.0.0.1, port: 8080}
  - {name: internal, address: 127.0.0.1, port: 8081, waf: {mode: detect, onServiceFailure: closed}}
  - {name: partners, address: 127.0.0.1, port: 8082, waf: {mode: "off"}}
upstreams: [{name: backend, endpoints: ["127.0.0.1:9000"]}]
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    operations:
      upload: {waf: {mode: "off"}}
      updatePage: {waf: {mode: prevent}}
"""


def write(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp / name).write_text(textwrap.dedent(text))
    return tmp


def wafs(gateway: ir.Gateway) -> dict[tuple[str, str], ir.Waf | None]:
    return {
        (lst.name, op.name.split(".")[1]): op.waf
        for lst in gateway.listeners
        for pr in lst.paths
        for op in pr.operations
    }


def test_the_listener_sets_the_mode_and_route_settings_win(tmp_path: Path) -> None:
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": POLICY})])
    assert result.ok and result.gateway is not None, result.diagnostics
    got = wafs(result.gateway)
    # the section's mode where the listener says nothing; prevent fails closed
    public = got["public", "search"]
    assert public is not None and public.prevent and not public.fail_open
    # the listener's mode and failure mode
    internal = got["internal", "search"]
    assert internal is not None and not internal.prevent and not internal.fail_open
    assert got["partners", "search"] is None
    # an operation's own mode wins over every listener's
    for listener in ("public", "internal", "partners"):
        assert got[listener, "upload"] is None
        page = got[listener, "updatePage"]
        assert page is not None and page.prevent, listener


def test_a_detect_listener_fails_open_unless_it_says_otherwise(tmp_path: Path) -> None:
    policy = POLICY.replace("waf: {mode: detect, onServiceFailure: closed}", "waf: {mode: detect}")
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
    assert result.ok and result.gateway is not None
    internal = wafs(result.gateway)["internal", "search"]
    assert internal is not None and internal.fail_open


def test_listener_waf_settings_without_a_waf_section_are_a_warning(tmp_path: Path) -> None:
    policy = (
        POLICY.replace("waf: {mode: prevent}\n", "")
        .replace("      updatePage: {waf: {mode: prevent}}\n", "")
        .replace('      upload: {waf: {mode: "off"}}\n', "      upload: {timeout: 5s}\n")
    )
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
    assert result.ok and result.gateway is not None
    warnings = [d for d in result.diagnostics if d.code == "waf-unused"]
    assert sorted(d.pointer for d in warnings) == ["/listeners/1/waf", "/listeners/2/waf"]
    assert all(d.severity == Severity.WARNING and d.file.endswith("policy.yaml") for d in warnings)
    assert all(op is None for op in wafs(result.gateway).values())


def test_bad_listener_waf_settings_are_located(tmp_path: Path) -> None:
    policy = POLICY.replace("waf: {mode: detect, onServiceFailure: closed}", "waf: {mode: log, onFailure: open}")
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
    assert not result.ok
    errors = [d for d in result.diagnostics if d.severity == Severity.ERROR]
    located = {(d.pointer, d.line) for d in errors}
    assert located == {("/listeners/1/waf/mode", 7), ("/listeners/1/waf/onFailure", 7)}, errors


def test_moving_the_waf_service_changes_no_listener(tmp_path: Path) -> None:
    """Scaling the service out (another endpoint) must not drain every client connection: the
    check's target is the cluster, so only the cluster's endpoints change."""

    def listeners(endpoints: str) -> dict[str, bytes]:
        section = f"waf: {{mode: prevent, service: {{endpoints: [{endpoints}]}}}}\nlisteners:"
        policy = POLICY.replace("waf: {mode: prevent}\nlisteners:", section, 1)
        result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
        assert result.ok and result.resources is not None, result.diagnostics
        found = result.resources.of(result.resources.LISTENER)
        return {name: found[name].SerializeToString(deterministic=True) for name in found}

    one, two = listeners('"10.0.0.5:8082"'), listeners('"10.0.0.6:9000", "10.0.0.7:9000"')
    assert one == two and len(one) == 3


def test_masking_an_endless_stream_is_a_warning_at_its_operation(tmp_path: Path) -> None:
    spec = (
        SPEC
        + """
  /events:
    get:
      operationId: events
      responses:
        "200":
          description: live
          content: {text/event-stream: {schema: {type: string}}}
  /report:
    get:
      operationId: report
      responses: {"200": {$ref: "#/components/responses/Report"}}
components:
  responses:
    Report:
      description: lines
      content: {application/x-ndjson: {schema: {type: string}}}
"""
    )
    policy = POLICY.replace(
        '      upload: {waf: {mode: "off"}}\n', "      events: {sensitive: true}\n      report: {maskFields: [ssn]}\n"
    )
    result = compile([write(tmp_path, {"spec.yaml": spec, "policy.yaml": policy})])
    assert result.ok, result.diagnostics
    warned = {d.pointer: d.message for d in result.diagnostics if d.code == "waf-mask-stream"}
    assert set(warned) == {"/paths/~1events/get", "/paths/~1report/get"}, result.diagnostics
    assert (
        "text/event-stream" in warned["/paths/~1events/get"]
        and "never reaches the client" in warned["/paths/~1events/get"]
    )
