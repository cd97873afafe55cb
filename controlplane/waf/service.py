"""The verdict on one request, and the masking of one response.

Envoy sends each inspected request whole (method, target, headers, body: ext_authz over plain
HTTP/1.1, :mod:`.http1`) with its route's WAF settings: the operation, the mode (``prevent``
or ``detect``) and what not to inspect. In prevent mode a finding is a 403 (Envoy answers
with the gateway's JSON body); in detect mode the request goes on. Either way each finding is
logged as one JSON line (family, rule, location, a short redacted snippet; never the payload)
and counted, and the verdict reaches Envoy as a header it turns into dynamic metadata
(``x-waf-verdict``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2
from envoy.type.v3 import http_status_pb2

from .config import Config
from .inspect import Exclusions, Finding, Inspector, Request
from .mask import Unmaskable, mask_body
from .metrics import Metrics
from .model import UNREAD, Violation

log = logging.getLogger("controlplane.waf")
findings_log = logging.getLogger("controlplane.waf.findings")

MASK_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@dataclass(frozen=True)
class RouteSettings:
    """What the route tells the service (``x-waf-route``: the fields joined by tabs)."""

    operation: str = ""
    prevent: bool = True
    exclude: tuple[str, ...] = ()
    families: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> RouteSettings:
        operation, mode, exclude, families = [*text.split("\t"), "", "", ""][:4]
        return cls(
            operation,
            mode != "detect",
            tuple(x for x in exclude.split("\n") if x),
            tuple(x for x in families.split(",") if x),
        )


@dataclass(frozen=True)
class Verdict:
    status: int  # 200: the request goes on; else Envoy answers the client with it
    message: str = ""  # the reason a client may read (400/415), never a payload
    metadata: str = ""  # for Envoy's dynamic metadata (x-waf-verdict): "refused: sqli/…"


PASS = Verdict(200)


class Checker:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.config: Config | None = None
        self.inspector: Inspector | None = None
        self._passed = metrics.requests.labels("pass")  # (a labelled child costs a lookup and a lock)
        self._routes: dict[str, RouteSettings] = {}

    def use(self, config: Config) -> None:
        self.inspector = Inspector(config.rules)
        self.config = config

    def route(self, header: str) -> RouteSettings:
        """The settings an ``x-waf-route`` value says (each route sends the same one)."""
        route = self._routes.get(header)
        if route is None:
            if len(self._routes) >= 4096:
                self._routes.clear()
            route = self._routes[header] = RouteSettings.parse(header)
        return route

    def check(self, method: str, target: str, headers: dict[str, str], body: bytes, route: RouteSettings) -> Verdict:
        if self.inspector is None or self.config is None:
            raise NoRules
        started = time.perf_counter()
        operation, prevent = route.operation, route.prevent
        model = self.config.models.get(operation)
        safe: frozenset[str] = frozenset()
        document: Any = UNREAD
        if model is not None:
            violation, document = model.check(target, headers, body)
            if violation is not None:
                self.metrics.seconds.observe(time.perf_counter() - started)
                return self._violation(violation, prevent, operation, headers.get("x-request-id", ""))
            safe = model.safe  # the description constrains these values, and they fit it
            if document is UNREAD:  # (a body it did not read, e.g. another JSON type: nothing in it is known safe)
                safe = frozenset(s for s in safe if not s.startswith("body"))
        findings = self.inspector.inspect(
            Request(method, target, tuple(headers.items()), body, document, document is not UNREAD),
            Exclusions(locations=route.exclude, families=route.families),
            safe_locations=safe,
        )
        self.metrics.seconds.observe(time.perf_counter() - started)
        if not findings:
            self._passed.inc()
            return PASS
        verdict = "refused" if prevent else "detected"
        self.metrics.requests.labels(verdict).inc()
        for f in findings:
            self.metrics.findings.labels(f.family, f.rule, operation).inc()
        _log(findings, verdict, operation, headers.get("x-request-id", ""))
        metadata = f"{verdict}: " + ", ".join(sorted({f"{f.family}/{f.rule}" for f in findings}))
        return Verdict(403 if prevent else 200, "", metadata)

    def _violation(self, violation: Violation, prevent: bool, operation: str, request_id: str) -> Verdict:
        """A request its operation's description does not allow: 400/415 naming what, in
        prevent mode; logged (family ``protocol``) and let through in detect mode."""
        verdict = "refused" if prevent else "detected"
        self.metrics.requests.labels(verdict).inc()
        self.metrics.findings.labels("protocol", "openapi", operation).inc()
        _log(
            [Finding("protocol", "openapi", violation.location, violation.message[:64])], verdict, operation, request_id
        )
        metadata = f"{verdict}: protocol/openapi {violation.location}"
        if not prevent:
            return Verdict(200, "", metadata)
        return Verdict(violation.status, violation.message, metadata)


class NoRules(Exception):
    """No rules from the control plane yet: answered as a failure, so that Envoy applies the
    operation's failure mode (refuse or let through), never as a verdict."""


def _log(findings: list[Finding], verdict: str, operation: str, request_id: str) -> None:
    for f in findings:
        entry: dict[str, Any] = {
            "verdict": verdict,
            "request_id": request_id,
            "operation": operation,
            "family": f.family,
            "rule": f.rule,
            "location": f.location,
            "snippet": f.snippet,
        }
        findings_log.warning("%s", json.dumps(entry, sort_keys=True))


class ResponseMasker:
    """One response of a masked operation (one ext_proc stream, full duplex): Envoy streams its
    headers, body chunks and trailers as they arrive; nothing is answered until the body has
    ended, so that the client gets the masked response whole or the refusal (502), never a part
    of the original. A body that cannot be read, or that grows past ``max_bytes``, is refused."""

    CHUNK = 64 << 10  # the largest body chunk sent back (Envoy's recommendation)

    def __init__(self, metrics: Metrics, operation: str, fields: list[str], max_bytes: int = 8 << 20):
        self.metrics = metrics
        self.operation = operation
        self.fields = [f for f in fields if f]
        self.max_bytes = max_bytes
        self.content_type = ""
        self.encoding = ""
        self.body = bytearray()
        self.done = False

    def answer(
        self, request: external_processor_pb2.ProcessingRequest
    ) -> list[external_processor_pb2.ProcessingResponse]:
        """What to send back for one message from Envoy (nothing until the response is whole)."""
        P = external_processor_pb2
        if self.done:
            return []
        if request.HasField("response_headers"):
            for h in request.response_headers.headers.headers:
                value = h.value or h.raw_value.decode("latin-1")
                if h.key == "content-type":
                    self.content_type = value
                elif h.key == "content-encoding":
                    self.encoding = value
            if request.response_headers.end_of_stream:  # no body (HEAD, 204, 304)
                self.done = True
                return [P.ProcessingResponse(response_headers=P.HeadersResponse())]
            return []
        if request.HasField("response_body"):
            chunk = request.response_body
            self.body += chunk.body
            if len(self.body) > self.max_bytes:
                return self._refuse(f"a response of more than {self.max_bytes} bytes")
            return self._finish(trailers=False) if chunk.end_of_stream else []
        if request.HasField("response_trailers"):
            return self._finish(trailers=True)
        return []

    def _finish(self, trailers: bool) -> list[external_processor_pb2.ProcessingResponse]:
        P = external_processor_pb2
        self.done = True
        try:
            masked = mask_body(bytes(self.body), self.content_type, self.encoding, self.fields, self.max_bytes)
        except Unmaskable as exc:
            return self._refuse(str(exc))
        self.body = bytearray()
        if masked.cards or masked.fields:
            self.metrics.masked.labels("masked", self.operation).inc(masked.cards + masked.fields)
        remove = ["content-length", *(["content-encoding"] if masked.decompressed else [])]
        out = [
            P.ProcessingResponse(
                response_headers=P.HeadersResponse(
                    response=P.CommonResponse(header_mutation=P.HeaderMutation(remove_headers=remove))
                )
            )
        ]
        body = masked.body
        pieces = [body[i : i + self.CHUNK] for i in range(0, len(body), self.CHUNK)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1 and not trailers
            streamed = P.StreamedBodyResponse(body=piece, end_of_stream=last)
            common = P.CommonResponse(body_mutation=P.BodyMutation(streamed_response=streamed))
            out.append(P.ProcessingResponse(response_body=P.BodyResponse(response=common)))
        if trailers:
            out.append(P.ProcessingResponse(response_trailers=P.TrailersResponse()))
        return out

    def _refuse(self, why: str) -> list[external_processor_pb2.ProcessingResponse]:
        P = external_processor_pb2
        self.done = True
        self.body = bytearray()
        log.error("refused a response of %s: %s", self.operation, why)
        self.metrics.masked.labels("refused", self.operation).inc()
        return [
            P.ProcessingResponse(
                immediate_response=P.ImmediateResponse(
                    status=http_status_pb2.HttpStatus(code=http_status_pb2.BadGateway),
                    body=b"the response cannot be checked for card numbers",
                )
            )
        ]
