"""The push API: CI pipelines replace the specs of the APIs they own, and know when it is live.

| request | what it does |
|---|---|
| ``POST /v1/apis/<api>/versions`` | push: ``{"files": {name: text}, "spec": name, "policy"?, "message"?, "dryRun"?,`` |
| | ``"wait"?, "timeout"?}`` (``policy``: the name of a policy fragment among the files) |
| ``POST /v1/apis/<api>/rollback`` | serve an earlier version again: ``{"to": n?, "wait"?, "timeout"?}`` |
| ``GET /v1/apis/<api>/versions`` | every version: who pushed it, when, its state |
| ``GET /v1/apis`` | the APIs this client owns, and which version of each is live |

A client is a bearer token or a client certificate that the platform policy's
``push.clients`` names, and may only touch the APIs listed there; every request and every
decision is a line in the store's audit log.

A push compiles with everything else the control plane serves. With an error anywhere it
is refused whole (422, the errors named in the pushed files) and nothing changes. Otherwise
it is published at once, and its rollout is watched: when an Envoy NACKs it, the API goes
back to the version served before the push (409 to a waiting client, with the NACK and its
source). Pushes are taken one at a time, each rollout watched to its end before the next
push compiles, so that a NACK is always the last push's. A rollout that times out (an Envoy
slow, or not answering) is not rolled back: nothing was refused; ``--wait`` fails with the
Envoys that have not answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import ir
from ..documents import DocumentStore
from ..errors import Diagnostics
from . import peers, rollout
from .store import PushRefused, PushStore, Version, check_api_name, check_files

if TYPE_CHECKING:
    from ..sources import Pushed
    from ..worker import CompiledConfig, Compiler
    from ..xds.cache import SnapshotCache
    from ..xds.protocol import XdsContext


class Plane(Protocol):
    """What the push API needs of the control plane (``server.ControlPlane``)."""

    compiler: Compiler
    jwks: dict[str, str]
    ctx: XdsContext
    cache: SnapshotCache
    last_result: CompiledConfig | None

    @property
    def options(self) -> Any: ...  # ServeOptions: paths, listener_port

    @property
    def compile_lock(self) -> asyncio.Lock: ...

    async def compile_pushed(self, pushed: tuple[Pushed, ...]) -> CompiledConfig: ...

    async def serve_pushed(self, pushed: tuple[Pushed, ...], result: CompiledConfig) -> Any: ...


log = logging.getLogger("controlplane.push")

MAX_HEAD = 64 << 10
MAX_BODY = 24 << 20  # 16 MiB of files, in JSON strings
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 600.0
_FRAGMENT_KEYS = frozenset({"apiVersion", "kind", "metadata", "apis"})
_ROUTE = re.compile(r"^/v1/apis(?:/([^/]+)/(versions|rollback))?$")
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class PushOptions:
    address: str | None  # host:port; None: no API (the store serves pulls)
    store: Path
    cert_file: str | None = None  # no certificate: plain HTTP (serve --push-insecure)
    key_file: str | None = None
    client_ca: str | None = None  # verifies client certificates, which then identify clients
    rollout_timeout: float = DEFAULT_TIMEOUT_S  # how long a rollout is watched without --wait
    # "namespace/name": versions in the cluster's ConfigMaps (push.cluster), shared by the
    # replicas; ``store`` is then this replica's copy
    configmaps: str | None = None
    # the other replicas' admin addresses (push.peers): a rollout waits for their Envoys too
    peers: tuple[str, ...] = ()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: str
    certificate: dict[str, Any] | None  # verified client certificate (ssl's getpeercert())


@dataclass
class Answer:
    status: int
    data: dict[str, Any] = field(default_factory=dict)


class PushApi:
    def __init__(self, plane: Plane, options: PushOptions):
        self.plane = plane
        self.options = options
        if options.configmaps is not None:
            from .cluster import ClusterStore

            namespace, _, name = options.configmaps.partition("/")
            self.store: PushStore = ClusterStore(options.store, namespace, name)
        else:
            self.store = PushStore(options.store)
        self._lock = asyncio.Lock()  # one push (compile, publish, rollout) at a time
        self._server: asyncio.base_events.Server | None = None
        self._watching: set[asyncio.Future[Any]] = set()
        self.served: dict[str, str] = {}  # API → the snapshot version its last push was served in
        self.port = 0

    # -- the server -------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        o = self.options
        if o.cert_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(o.cert_file, o.key_file)
        if o.client_ca:
            context.load_verify_locations(o.client_ca)
            context.verify_mode = ssl.CERT_OPTIONAL  # a token is the other way in
        return context

    async def start(self) -> int:
        if self.options.address is None:
            return 0
        host, _, port = self.options.address.rpartition(":")
        self._server = await asyncio.start_server(self._connection, host or "127.0.0.1", int(port), ssl=self._ssl())
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info(
            "push API on %s:%d (%s), store %s",
            host,
            self.port,
            "TLS" if self.options.cert_file else "plain HTTP",
            self.store.where,
        )
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._watching):
            task.cancel()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read(reader, writer)
            if isinstance(request, Answer):  # not a request the API can read: audited all the same
                answer = request
                peer = writer.get_extra_info("peername")
                self.store.audit(
                    peer=f"{peer[0]}:{peer[1]}" if peer else "?",
                    action="malformed",
                    status=answer.status,
                    reason=answer.data.get("error", ""),
                )
            else:
                try:
                    answer = await self.handle(request)
                except Exception as exc:  # one request failing must not take the API down
                    log.exception("push API: %s %s failed", request.method, request.path)
                    answer = Answer(500, {"error": f"internal error: {exc}"})
            body = (json.dumps(answer.data, indent=2) + "\n").encode()
            head = (
                f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Error')}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | Answer:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except asyncio.LimitOverrunError:
            return Answer(413, {"error": "request head too large"})
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("closed before the end of the head") from exc
        if len(head) > MAX_HEAD:
            return Answer(413, {"error": "request head too large"})
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return Answer(400, {"error": "not an HTTP/1.1 request line"})
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return Answer(400, {"error": "malformed header line"})
            key = name.lower()
            if key in headers and key in ("content-length", "authorization", "transfer-encoding"):
                return Answer(400, {"error": f"{key} given twice"})
            headers[key] = value.strip()
        if "transfer-encoding" in headers:
            return Answer(411, {"error": "send a Content-Length (no chunked bodies)"})
        body = b""
        if parts[0] == "POST":
            length = headers.get("content-length", "")
            if not (length.isascii() and length.isdigit()):  # str.isdigit takes '²', which int() refuses
                return Answer(411, {"error": "a POST needs a Content-Length"})
            if int(length) > MAX_BODY:
                return Answer(413, {"error": f"the body is larger than {MAX_BODY >> 20} MiB"})
            body = await asyncio.wait_for(reader.readexactly(int(length)), 60)
        peer = writer.get_extra_info("peername")
        ssl_object = writer.get_extra_info("ssl_object")
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        return Request(
            parts[0],
            parts[1],
            headers,
            body,
            f"{peer[0]}:{peer[1]}" if peer else "?",
            certificate or None,
        )

    # -- requests ---------------------------------------------------------------------------
    async def handle(self, request: Request) -> Answer:
        """The answer to one request, and one line in the audit log for it, whatever it was."""
        entry: dict[str, Any] = {"peer": request.peer, "method": request.method, "path": request.path[:200]}
        answer = await self._answer(request, entry)
        self.store.audit(
            **entry,
            status=answer.status,
            version=answer.data.get("version"),
            reason=answer.data.get("error", ""),
        )
        return answer

    async def _answer(self, request: Request, audit: dict[str, Any]) -> Answer:
        route = _ROUTE.match(request.path)
        if route is None:
            return Answer(404, {"error": "no such endpoint; see GET /v1/apis, /v1/apis/<api>/versions"})
        api, action = route.group(1), route.group(2)
        expected = "GET" if action is None else ("POST" if action == "rollback" else request.method)
        if request.method != expected or request.method not in ("GET", "POST"):
            return Answer(405, {"error": f"{request.path} answers {expected}"})
        client = self._client(request)
        if isinstance(client, Answer):
            return client
        audit.update(client=client.name, api=api, action="list" if request.method == "GET" else action)
        if api is None:
            owned = [a for a in sorted(set(self.store.apis()) | set(self.store.live)) if client.owns(a)]
            return Answer(200, {"client": client.name, "apis": {a: self.store.live.get(a) for a in owned}})
        if not client.owns(api):
            return Answer(403, {"error": f"client {client.name!r} may not change api {api!r} (push.clients[].apis)"})
        if request.method == "GET":
            versions = [v.as_json() for v in self.store.versions(api)]
            return Answer(200, {"api": api, "live": self.store.live.get(api), "versions": versions})
        try:
            body = json.loads(request.body or b"{}")
            if not isinstance(body, dict):
                raise PushRefused("the body is a JSON object")
            if action == "versions":
                audit["action"] = "dry-run" if body.get("dryRun") is True else "push"
                return await self._push(api, body, client)
            return await self._rollback(api, body, client)
        except PushRefused as exc:
            return Answer(exc.status, {"error": str(exc)})
        except ValueError as exc:  # not JSON, or not UTF-8
            return Answer(400, {"error": f"the body is not JSON: {exc}"})

    def _client(self, request: Request) -> ir.PushClient | Answer:
        result = self.plane.last_result
        if result is None:
            return Answer(503, {"error": "no configuration is served yet: nobody can push"})
        clients = result.push_clients
        auth = request.headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return Answer(401, {"error": "Authorization: Bearer <token>"})
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            for client in clients:
                if client.token_sha256 is not None and hmac.compare_digest(client.token_sha256, digest):
                    return client
            return Answer(401, {"error": "unknown token"})
        if request.certificate is not None:
            name = certificate_name(request.certificate)
            for client in clients:
                if name and any(ir.name_matches(p, name) for p in client.subject_alt_names):
                    return client
            return Answer(401, {"error": f"client certificate {name!r} is no push client"})
        return Answer(401, {"error": "no credentials: send Authorization: Bearer <token>, or a client certificate"})

    # -- push -------------------------------------------------------------------------------
    async def _push(self, api: str, body: dict[str, Any], client: ir.PushClient) -> Answer:
        check_api_name(api)
        files, spec, policy = body.get("files"), body.get("spec"), body.get("policy")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise PushRefused("'files' is an object of file name → text")
        if not isinstance(spec, str) or (policy is not None and not isinstance(policy, str)):
            raise PushRefused("'spec' (and 'policy', if given) name one of the files")
        check_files(files, spec, policy)
        wait, dry_run, timeout = _flag(body, "wait"), _flag(body, "dryRun"), _timeout(body, self.options)
        message = body.get("message", "")
        if not isinstance(message, str):
            raise PushRefused("'message' is a string")
        return await self.submit(api, files, spec, policy, client.name, message[:1000], dry_run, wait, timeout, client)

    async def submit(
        self,
        api: str,
        files: dict[str, str],
        spec: str,
        policy: str | None,
        by: str,
        message: str = "",
        dry_run: bool = False,
        wait: bool = False,
        timeout: float | None = None,
        client: ir.PushClient | None = None,
        allow_security_changes: bool = False,
    ) -> Answer:
        """A push whoever makes it (a pipeline through the API: ``client``; a pull), its files
        checked. Security-relevant changes (``diff``'s) are refused unless the client, or the
        pull, may make them."""
        timeout = self.options.rollout_timeout if timeout is None else timeout
        if client is not None:
            allow_security_changes = client.allow_security_changes
        record = Version(api, 0, spec, policy, by, _now(), message)
        staged = self.store.stage(api, files)
        try:
            if policy is not None:
                _check_fragment(staged / policy, api, policy, client)
            if dry_run:
                return await self._dry_run(api, self._with(api, self.store.candidate(staged, record)), staged)
            async with self._lock:
                await self._settle()
                if not allow_security_changes:
                    refused = await self._security_review(api, staged, record)
                    if refused is not None:
                        return refused
                async with self.plane.compile_lock:
                    result = await self.plane.compile_pushed(self._with(api, self.store.candidate(staged, record)))
                    record = self.store.keep(staged, record)  # kept, good or not: the audit trail
                    if not result.ok:
                        record.state, record.reason = "rejected", "the compile failed"
                        self.store.save(record)
                        return Answer(
                            422,
                            {
                                "error": "the push does not compile; nothing changed",
                                "version": record.version,
                                "errors": [self.store.readable(str(d)) for d in result.errors],
                            },
                        )
                    # the compile read the staged files; what is served reads the kept ones
                    # (same bytes: the worker's caches make this second compile cheap)
                    previous = self.store.live.get(api)
                    refused = await self._serve(api, record, previous)
                if refused is not None:
                    return refused
                return await self._rollout(api, record, previous, wait, timeout)
        finally:
            self.store.discard(staged)  # gone already when kept (renamed)

    async def _security_review(self, api: str, staged: Path, record: Version) -> Answer | None:
        """403 (the version kept as rejected) when the push changes security: that is for
        a review and the platform's policy, not for a pipeline alone."""
        outcome = await self._preview(self._with(api, self.store.candidate(staged, record)))
        if not outcome["diff"] or not outcome["diff"]["security_relevant"]:
            return None  # no change to security (or errors: the compile reports them)
        flagged = [c for c in outcome["diff"]["changes"] if c["security"]]
        record = self.store.keep(staged, record)
        record.state = "rejected"
        record.reason = "security-relevant: " + "; ".join(f"{c['subject']}: {c['change']}" for c in flagged)[:2000]
        self.store.save(record)
        return Answer(
            403,
            {
                "error": f"the push makes {len(flagged)} security-relevant change(s), which "
                f"{'this client' if record.pushed_by and not record.pushed_by.startswith('pull ') else 'this pull'} "
                "may not make (push.clients[].allowSecurityChanges, apis[].pull.allowSecurityChanges): "
                "have them reviewed, and made in the platform's policy",
                "version": record.version,
                "security": flagged,
                "diff": outcome["diff"],
            },
        )

    async def _preview(self, candidate: tuple[Pushed, ...]) -> dict[str, Any]:
        """The dry run of ``candidate`` (``preview.preview``), its file names as pipelines know them."""
        from .preview import preview

        p = self.plane
        paths = [str(x) for x in p.options.paths]
        outcome: dict[str, Any] = await p.compiler.run(
            preview, paths, p.compiler.pushed, candidate, dict(p.jwks), p.options.listener_port
        )
        readable: dict[str, Any] = json.loads(self.store.readable(json.dumps(outcome)))
        return readable

    def _with(self, api: str, replacement: Pushed | None) -> tuple[Pushed, ...]:
        others = tuple(p for p in self.plane.compiler.pushed if p.api != api)
        return tuple(sorted((*others, replacement) if replacement else others, key=lambda p: p.api))

    async def _settle(self) -> None:
        """Let the last rollout end (rolled back or not) before another push compiles."""
        if self._watching:
            await asyncio.gather(*self._watching, return_exceptions=True)

    async def _dry_run(self, api: str, candidate: tuple[Pushed, ...], staged: Path) -> Answer:
        outcome = await self._preview(candidate)
        return Answer(200 if outcome["ok"] else 422, {"dryRun": True, **outcome})

    async def _serve(self, api: str, record: Version, previous: int | None) -> Answer | None:
        """Serve ``record`` as the API's live version; an answer when it is not served.
        ``compile_lock`` held."""
        p = self.plane
        pushed = self._with(api, self.store.pushed_of(record))
        result = await p.compile_pushed(pushed)
        report = None
        if result.ok:
            # live first: a store shared by replicas refuses a map changed since this one compiled
            before = dict(self.store.live)
            try:
                self.store.set_live({**before, api: record.version})
            except PushRefused as exc:
                if record.state == "pending":  # a push's new version (a rollback's stays as it was)
                    record.state, record.reason = "rejected", str(exc)
                    self.store.save(record)
                raise
            report = await p.serve_pushed(pushed, result)
            if not report.ok:
                self.store.set_live(before, only=api)
        if report is None or not report.ok:
            errors = [self.store.readable(str(d)) for d in (report.errors if report is not None else result.errors)]
            record.state, record.reason = "rejected", "; ".join(errors)[:2000]
            self.store.save(record)
            return Answer(422, {"error": "not served; nothing changed", "version": record.version, "errors": errors})
        if previous is not None and previous != record.version:
            self._set_state(api, previous, "superseded")
        record.state = "live"
        record.history.append({"at": _now(), "event": "live", "served": report.version})
        self.store.save(record)
        self.served[api] = report.version
        log.info("api %s: version %d is live (served version %s)", api, record.version, report.version)
        return None

    async def _rollout(self, api: str, record: Version, previous: int | None, wait: bool, timeout: float) -> Answer:
        """Watch the rollout of what ``_serve`` published; without ``wait``, in the background
        (the next push waits for it). ``self._lock`` held."""
        served = self.served[api]
        watch = asyncio.ensure_future(
            self._watch(api, record, previous, timeout if wait else self.options.rollout_timeout)
        )
        if not wait:
            self._watching.add(watch)
            watch.add_done_callback(self._watching.discard)
            return Answer(
                202,
                {
                    "version": record.version,
                    "served": served,
                    "applied": True,
                    "rollout": "watched by the control plane (rolled back if an Envoy NACKs); "
                    "GET /v1/apis/<api>/versions to follow it",
                },
            )
        state = await watch
        if state.nacks:
            return Answer(
                409,
                {
                    "error": "an Envoy refused the push; rolled back",
                    "version": record.version,
                    "rolledBackTo": previous,
                    "rollout": state.as_json(),
                },
            )
        if state.pending:
            return Answer(
                504,
                {
                    "error": f"not every Envoy ACKed within {timeout:g}s (the push stays applied)",
                    "version": record.version,
                    "rollout": state.as_json(),
                },
            )
        return Answer(200, {"version": record.version, "served": served, "applied": True, "rollout": state.as_json()})

    async def _watch(self, api: str, record: Version, previous: int | None, timeout: float) -> rollout.Rollout:
        state = await rollout.wait(self.plane.ctx.registry, self.plane.cache, timeout)
        if self.options.peers and not state.nacks:  # the Envoys of the other replicas
            state = await peers.wait(self.options.peers, dict(self.store.live), state, timeout - state.seconds)
        for nack in state.nacks:
            nack["sources"] = [self.store.readable(source) for source in nack["sources"]]
        event: dict[str, Any] = {"at": _now(), "rollout": state.as_json()}
        if state.nacks:
            first = state.nacks[0]
            reason = f"NACKed by {first['node']} ({first['type']}): {first['message']}"
            if first["sources"]:
                reason += f" [from {', '.join(first['sources'])}]"
            log.error("api %s version %d: %s; rolling back to %s", api, record.version, reason, previous)
            earlier = self.store.record(api, previous) if previous is not None else None
            back = self._with(api, self.store.pushed_of(earlier) if earlier is not None else None)
            async with self.plane.compile_lock:
                result = await self.plane.compile_pushed(back)
                report = await self.plane.serve_pushed(back, result) if result.ok else None
            if report is not None and report.ok:
                live = dict(self.store.live)
                live.pop(api, None)
                if previous is not None:
                    live[api] = previous
                    self._set_state(api, previous, "live")
                self.store.set_live(live, only=api)
                event["event"] = f"rolled back to {previous if previous is not None else 'the policy spec'}"
            else:
                event["event"] = "roll back failed: the earlier version no longer compiles"
                log.error("api %s: rolling back failed; version %d stays published", api, record.version)
            record.state, record.reason = "rolled-back", reason
            self.store.audit(
                client="control plane",
                api=api,
                action="rollback",
                version=record.version,
                status=409,
                reason=reason,
                to=previous,
            )
        else:
            event["event"] = "rollout " + ("timed out" if state.pending else "complete")
        record.history.append(event)
        self.store.save(record)
        return state

    # -- rollback ---------------------------------------------------------------------------
    async def _rollback(self, api: str, body: dict[str, Any], client: ir.PushClient) -> Answer:
        check_api_name(api)
        wait, timeout = _flag(body, "wait"), _timeout(body, self.options)
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
            raise PushRefused("'to' is a version number")
        async with self._lock:
            await self._settle()
            async with self.plane.compile_lock:
                current = self.store.live.get(api)
                if to is None:
                    earlier = [
                        v
                        for v in self.store.versions(api)
                        if current is not None and v.version < current and v.state in ("superseded", "live")
                    ]
                    if not earlier:
                        raise PushRefused(f"api {api!r} has no earlier good version to roll back to", 409)
                    to = earlier[-1].version
                record = self.store.record(api, to)
                if record is None:
                    raise PushRefused(f"api {api!r} has no version {to}", 404)
                if record.state == "rejected":
                    raise PushRefused(f"version {to} of {api!r} never compiled: {record.reason}", 409)
                if to == current:
                    return Answer(200, {"version": to, "applied": False, "note": "already live"})
                record.history.append({"at": _now(), "event": "rollback", "by": client.name, "from": current})
                refused = await self._serve(api, record, current)
            if refused is not None:
                return refused
            return await self._rollout(api, record, current, wait, timeout)

    def _set_state(self, api: str, version: int, state: str) -> None:
        record = self.store.record(api, version)
        if record is not None and record.state != state:
            record.state = state
            self.store.save(record)


def certificate_name(cert: dict[str, Any]) -> str:
    """A client certificate's name: URI SAN, else DNS SAN, else subject CN."""
    sans = cert.get("subjectAltName", ())
    for kind in ("URI", "DNS"):
        for k, v in sans:
            if k == kind:
                return str(v)
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return str(v)
    return ""


def _under(prefix: str, allowed: str) -> bool:
    """``prefix`` is ``allowed`` or below it, by whole segments (/catalog/x, not /catalogue)."""
    allowed = allowed.rstrip("/")
    return prefix.rstrip("/") == allowed or prefix.startswith(allowed + "/")


def _check_fragment(path: Path, api: str, name: str, client: ir.PushClient | None) -> None:
    """A pushed policy may declare its API, nothing else: not listeners, upstreams, auth,
    limits or who may push, which the platform owns. It mounts the API under a path prefix
    and sends it to an upstream the client may use (``push.clients[].pathPrefixes`` and
    ``upstreams``): never under another team's prefix, never to an internal upstream."""
    diags = Diagnostics()
    doc = DocumentStore(diags).load(path)
    if doc is None:
        why = "; ".join(d.message for d in diags.errors)
        raise PushRefused(f"the policy fragment {name} does not parse: {why}", 422)
    data = doc.data
    if not isinstance(data, dict) or data.get("kind") != "GatewayPolicy":
        raise PushRefused(f"the policy fragment {name} is not a GatewayPolicy", 422)
    extra = sorted(set(data) - _FRAGMENT_KEYS)
    if extra:
        raise PushRefused(
            f"a pushed policy fragment may only declare its API (apis); {name} sets {', '.join(extra)}, "
            "which the platform's policy owns",
            403,
        )
    apis = data.get("apis")
    if not isinstance(apis, list) or len(apis) != 1 or not isinstance(apis[0], dict) or apis[0].get("name") != api:
        raise PushRefused(f"the policy fragment {name} must declare exactly one API, named {api!r}", 403)
    if "pull" in apis[0]:  # the control plane would fetch a URL a pipeline chose
        raise PushRefused(f"the policy fragment {name} sets apis[0].pull, which only the platform's policy may", 403)
    entry = apis[0]
    prefix, upstream = entry.get("pathPrefix"), entry.get("upstream")
    allowed_prefixes = client.path_prefixes if client is not None else ()
    allowed_upstreams = client.upstreams if client is not None else ()
    if not isinstance(prefix, str) or not any(_under(prefix, p) for p in allowed_prefixes):
        raise PushRefused(
            f"the policy fragment {name} mounts {api!r} at pathPrefix {prefix!r}; this client may declare APIs "
            f"only under {list(allowed_prefixes)} (push.clients[].pathPrefixes)",
            403,
        )
    if not isinstance(upstream, str) or not any(ir.name_matches(p, upstream) for p in allowed_upstreams):
        raise PushRefused(
            f"the policy fragment {name} sends {api!r} to upstream {upstream!r}; this client may use only "
            f"{list(allowed_upstreams)} (push.clients[].upstreams)",
            403,
        )


def _timeout(body: dict[str, Any], options: PushOptions) -> float:
    value = body.get("timeout", options.rollout_timeout)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= MAX_TIMEOUT_S:
        raise PushRefused(f"'timeout' is a number of seconds, at most {MAX_TIMEOUT_S:g}")
    return float(value)


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise PushRefused(f"'{key}' is true or false")
    return value


def _now() -> float:
    import time

    return round(time.time(), 3)
