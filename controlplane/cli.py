"""Command line: ``python -m controlplane {validate,dump,bootstrap} ...``.

Every command goes through :func:`controlplane.compile`; this module only parses
arguments and prints. Exit status: 0 success, 1 the inputs have errors (or Envoy
refused the result), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import ir
from .bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap, static_bootstrap
from .compiler import CompileResult, compile
from .envoybin import envoy_validate
from .errors import Severity, grouped
from .output import write
from .ratelimit.options import parser as ratelimit_parser
from .resources import Resources, to_dict, write_message
from .waf.options import parser as waf_parser

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _report(result: CompileResult, err: TextIO, every: bool = False) -> None:
    """Notes (what was read), then every finding; one repeated in many places is printed once
    with a count and the next few places, unless ``every``."""
    for d in result.diagnostics:
        if d.severity is Severity.NOTE:
            print(d, file=err)
    findings = [d for d in result.diagnostics if d.severity is not Severity.NOTE]
    repeats = 0
    for d, others in grouped(findings, keep=len(findings) if every else 3):
        print(d, file=err)
        if others:
            repeats += len(others)
            places = ", ".join(o.location() for o in others[:2])
            print(f"    … and the same in {len(others)} more places: {places}, … (--all lists each)", file=err)
    if result.errors or result.warnings:
        summary = f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
        if repeats:
            summary += f" ({repeats} of them repeats, grouped above)"
        print(summary, file=err)


def _compile(
    args: argparse.Namespace, paths: list[str] | None = None, served: dict[str, Any] | None = None
) -> CompileResult:
    """``served``: the pushed APIs and the rest of what a control plane compiled with
    (``_served_inputs``)."""
    served = served or {}
    return compile(
        args.paths if paths is None else paths,
        strict=getattr(args, "strict", False),
        full_validation=getattr(args, "full_validation", False),
        use_cache=not args.no_cache,
        pushed=served.get("pushed", ()),
        listener_port=served.get("listener_port"),
        fetched=served.get("fetched"),
    )


def _compiled(
    command: str,
    args: argparse.Namespace,
    paths: list[str] | None = None,
    what: str = "the inputs",
    served: dict[str, Any] | None = None,
) -> tuple[ir.Gateway, Resources] | None:
    """The gateway and resources ``paths`` (default the command's) compile to, or None once the
    errors are printed (for the commands that read a compile: they exit 2 then)."""
    result = _compile(args, paths, served)
    if result.ok and result.gateway is not None and result.resources is not None:
        return result.gateway, result.resources
    print(f"{command}: {what} do not compile:", file=sys.stderr)
    _report(result, sys.stderr, getattr(args, "all", False))
    return None


def _compiled_served(
    command: str, args: argparse.Namespace
) -> tuple[tuple[ir.Gateway, Resources], dict[str, Any]] | None:
    """What the control plane at ``args.server`` serves, compiled again here from its
    ``/inputs`` (``controlplane/inputs.py``), and those inputs; None once the reason is printed."""
    import os
    import tempfile

    from . import inputs

    try:
        data = inputs.fetch(args.server)
    except inputs.InputsError as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return None
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="controlplane-served-") as tmp:
        paths, pushed = inputs.materialize(data, Path(tmp))
        served = {"pushed": pushed, **{k: data.get(k) for k in ("listener_port", "fetched")}}
        # From the copy of this directory, files are named as they are here (specs/a.yaml), not
        # by their place in the temporary one.
        mirror = inputs.inside(Path(tmp), here)
        mirror.mkdir(parents=True, exist_ok=True)
        os.chdir(mirror)
        try:
            compiled = _compiled(command, args, paths, f"the inputs served by {args.server}", served)
        finally:
            os.chdir(here)
    return None if compiled is None else (compiled, data)


def cmd_validate(args: argparse.Namespace) -> int:
    result = compile(args.paths, strict=args.strict, full_validation=True, use_cache=not args.no_cache)
    _report(result, sys.stderr, args.all)
    if not result.ok:
        return 1
    assert result.gateway is not None and result.resources is not None
    if args.envoy:
        accepted, output = envoy_validate(
            to_dict(static_bootstrap(result.gateway, result.resources, show_secrets=True))
        )
        if not accepted:
            print(f"envoy rejected the generated configuration:\n{output}", file=sys.stderr)
            return 1
        print("envoy accepts the generated configuration", file=sys.stderr)
    ops = sum(len(p.operations) for lst in result.gateway.listeners for p in lst.paths)
    print(
        f"ok: {len(result.gateway.listeners)} listener(s), {ops} operation route(s), "
        f"{len(result.gateway.upstreams)} upstream(s)",
        file=sys.stderr,
    )
    return 0


def _admin_get(address: str, path: str) -> tuple[int, Any]:
    import http.client

    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def cmd_dump(args: argparse.Namespace) -> int:
    if args.server:
        if not args.node:
            print("dump: --server needs --node ID", file=sys.stderr)
            return 2
        from urllib.parse import quote

        try:
            code, dump = _admin_get(args.server, f"/config_dump?node={quote(args.node)}")
        except OSError as exc:
            print(f"dump: cannot reach the control plane at {args.server}: {exc}", file=sys.stderr)
            return 1
        if code != 200:
            print(f"dump: {dump.get('error', code)}", file=sys.stderr)
            return 1
        write(dump[args.type] if args.type else dump, args.output, sys.stdout)
        return 0
    if not args.paths:
        print("dump: give PATH... or --server ADDR --node ID", file=sys.stderr)
        return 2
    result = _compile(args)
    _report(result, sys.stderr, args.all)
    if not result.ok:
        return 1
    assert result.gateway is not None and result.resources is not None
    data: Any
    if args.ir:
        data = ir.to_dict(result.gateway)
    elif args.bootstrap:  # the message itself: its YAML is written without a dict of it
        bootstrap = static_bootstrap(
            result.gateway, result.resources, AdminOptions(port=args.admin_port), show_secrets=args.show_secrets
        )
        if result.gateway.mesh is not None and not args.show_secrets:
            print(
                "dump: the mesh's workload certificates come from the serving control plane; this static "
                "configuration has ones of a CA made for it, keys redacted (--show-secrets prints them)",
                file=sys.stderr,
            )
        write_message(bootstrap, args.output, sys.stdout)
        return 0
    else:
        from .translate.tls import redacted

        def shown(url: str) -> list[Any]:
            messages: list[Any] = list(result.resources.of(url).values())  # type: ignore[union-attr]
            if url == Resources.SECRET and not args.show_secrets:
                messages = [redacted(m) for m in messages]
            return [to_dict(m) for m in messages]

        if args.type:
            data = shown(Resources.TYPES[args.type])
        else:
            data = {short: shown(url) for short, url in Resources.TYPES.items()}
    write(data, args.output, sys.stdout)
    return 0


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    tls = (args.tls_cert, args.tls_key, args.tls_ca)
    if not args.insecure and not all(tls):
        print(
            "bootstrap: give --tls-cert, --tls-key and --tls-ca for an mTLS channel to the xDS server, "
            "or --insecure for plaintext (loopback development only)",
            file=sys.stderr,
        )
        return 2
    host, port = args.xds_address
    options = XdsOptions(
        node_id=args.node_id,
        host=host,
        port=port,
        cluster=f"backend.{args.sidecar}" if args.sidecar else args.cluster,
        delta=args.delta,
        insecure=args.insecure,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        ca_file=args.tls_ca,
        server_name=args.server_name,
    )
    write(to_dict(dynamic_bootstrap(options, AdminOptions(port=args.admin_port))), args.output, sys.stdout)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """What changing OLD into NEW does to the gateway; exit 1 when some of it is security-relevant."""
    from . import diff

    gateways = {}
    if args.server:  # the old side is what the control plane serves
        if _DIFF_CUT in args.paths[1:]:
            print("diff: with --server, give only the new inputs (diff --server ADMIN -- NEW...)", file=sys.stderr)
            return 2
        sides = {"new": [p for p in args.paths if p != _DIFF_CUT]}
        if not sides["new"]:
            print("diff: no new inputs (diff --server ADMIN -- NEW...)", file=sys.stderr)
            return 2
        served = _compiled_served("diff", args)
        if served is None:
            return 2
        gateways["old"] = served[0][0]
    elif _DIFF_CUT not in args.paths:
        print(
            "diff: give the old inputs, then --, then the new ones (diff OLD... -- NEW...), "
            "or --server ADMIN -- NEW... for what a control plane serves",
            file=sys.stderr,
        )
        return 2
    else:
        cut = args.paths.index(_DIFF_CUT)
        sides = {"old": args.paths[:cut], "new": args.paths[cut + 1 :]}
    for side, paths in sides.items():
        if not paths:
            print(f"diff: no {side} inputs (diff OLD... -- NEW...)", file=sys.stderr)
            return 2
        compiled = _compiled("diff", args, paths, f"the {side} inputs")
        if compiled is None:
            return 2
        gateways[side] = compiled[0]
    report = diff.diff(gateways["old"], gateways["new"])
    if args.output == "json":
        write(
            {"security_relevant": len(report.security), "changes": [c.as_json() for c in report.changes]},
            "json",
            sys.stdout,
        )
    elif args.output == "markdown":
        print(diff.markdown(report))
    else:
        print(diff.text(report))
    return 1 if report.security else 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 1 when a connected Envoy is NACKED, STALE, or serves other than PATH compiles to."""
    from urllib.parse import quote

    from . import drift

    if args.access_log is not None:
        return _unknown_endpoints(args.access_log)
    if not args.server or not args.paths:
        print("check: give --server ADDR PATH... (or --access-log FILE)", file=sys.stderr)
        return 2
    # What the control plane fetched itself (JWKS, URL reputation feeds) is part of what PATH
    # compiles to there: compiled here with the same copies, so that only PATH's own drift shows.
    try:
        code, served = _admin_get(args.server, "/inputs")
    except (OSError, ValueError):
        code, served = 0, None
    fetched = served.get("fetched") if code == 200 and isinstance(served, dict) else None
    compiled = _compiled("check", args, served={"fetched": fetched} if fetched else None)
    if compiled is None:
        return 2
    want = drift.expected(compiled[1])
    try:
        _code, status_data = _admin_get(args.server, "/status")
        dumps = {}
        for node in status_data["nodes"]:
            if node["group"] == args.group:
                code, dump = _admin_get(args.server, f"/config_dump?node={quote(node['node'])}")
                if code == 200:
                    dumps[node["node"]] = dump
    except OSError as exc:
        print(f"check: cannot reach the control plane at {args.server}: {exc}", file=sys.stderr)
        return 2
    findings = drift.check(status_data, dumps, want, args.group)
    nodes = [n for n in status_data["nodes"] if n["group"] == args.group]
    if not nodes:
        print(f"check: no Envoy of group {args.group!r} is connected", file=sys.stderr)
        return 1
    for finding in findings:
        print(finding.line())
    bad = {f.node for f in findings}
    print(
        f"{len(status_data['nodes']) - len(bad)} of {len(status_data['nodes'])} node(s) serve what "
        f"{' '.join(args.paths)} compiles to" + (f"; drift on {len(bad)}" if bad else ""),
        file=sys.stderr,
    )
    return 1 if findings else 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why METHOD URL gets its answer, decision by decision, each with its source."""
    from .explain import Caller, explain

    if bool(args.paths) == bool(args.server):
        print("explain: give PATH... or --server ADMIN (what a control plane serves)", file=sys.stderr)
        return 2
    if args.node and not args.server:
        print("explain: --node needs --server ADMIN", file=sys.stderr)
        return 2
    node: dict[str, Any] | None = None
    if args.server:
        served = _compiled_served("explain", args)
        if served is None:
            return 2
        compiled, data = served
        if args.node:
            node = _node_state(args.server, args.node, data["version"])
            if node is None:
                return 2
    else:
        plain = _compiled("explain", args)
        if plain is None:
            return 2
        compiled = plain
    headers = {}
    for given in args.header:
        name, sep, value = given.partition(":")
        if not sep or not name.strip():
            print(f"explain: --header {given!r}: expected NAME:VALUE", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    claims = None
    if args.claims is not None:
        claims = {}
        for item in args.claims.split(","):
            key, sep, value = item.partition("=")
            if not sep:
                print(f"explain: --claims {item!r}: expected NAME=VALUE", file=sys.stderr)
                return 2
            claims[key.strip()] = value.strip()
    body = b""
    if args.body_file:
        body = Path(args.body_file).read_bytes()
    caller = Caller(headers=headers, client_ip=args.client_ip, token=args.token, claims=claims, body=body)
    answer = explain(compiled[0], args.method.upper(), args.url, caller)
    if node is not None and node["state"] != "SYNCED":
        print(
            f"explain: warning: node {node['node']} is {node['state']}: this explanation is for the served "
            f"version {node['served']}, not for what the node runs",
            file=sys.stderr,
        )
    if args.output == "json":
        write({**answer.as_json(), **({"node": node} if node is not None else {})}, "json", sys.stdout)
    else:
        if node is not None:
            print(node["line"])
        print(answer.text())
    return 0


def _node_state(server: str, node_id: str, version: str) -> dict[str, Any] | None:
    """Whether the connected node ``node_id`` runs the served ``version``: its state, what it
    acknowledged of each type not in sync, and a line saying so; None once the error is printed
    (not connected: the connected ones are named)."""
    from . import inputs

    try:
        nodes = inputs.status_of(server)["nodes"]
    except inputs.InputsError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return None
    mine = [n for n in nodes if n["node"] == node_id]
    if not mine:
        connected = ", ".join(sorted({n["node"] for n in nodes})) or "none"
        print(f"explain: node {node_id!r} is not connected to {server} (connected: {connected})", file=sys.stderr)
        return None
    n = mine[-1]
    behind = {kind: t["acked"] or "none" for kind, t in n["types"].items() if t["state"] != "SYNCED"}
    if n["state"] == "SYNCED":
        line = f"node {node_id} (group {n['group']}): SYNCED: runs the served version {version}"
    else:
        held = ", ".join(f"{kind} acked {acked}" for kind, acked in behind.items())
        line = f"node {node_id} (group {n['group']}): {n['state']}, not the served version {version} ({held})"
    return {
        "node": node_id,
        "group": n["group"],
        "state": n["state"],
        "served": version,
        "behind": behind,
        "line": line,
    }


def _unknown_endpoints(path: str) -> int:
    """Exit 1 when the access log shows calls to endpoints no spec declares."""
    from . import drift

    try:
        with open(path, encoding="utf-8", errors="replace") if path != "-" else sys.stdin as lines:
            found = drift.unknown_endpoints(lines)
    except OSError as exc:
        print(f"check: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    for method, shape, count, example in found:
        print(f"{count:>8}  {method} {shape}   e.g. {example}")
    total = sum(row[2] for row in found)
    print(f"{total} request(s) to {len(found)} endpoint shape(s) no spec declares", file=sys.stderr)
    return 1 if found else 0


# argparse takes a lone ``--`` for itself: ``diff`` sees where the new inputs start through this
_DIFF_CUT = "\0new inputs"


def cmd_status(args: argparse.Namespace) -> int:
    try:
        _code, data = _admin_get(args.server, "/status")
        _, compiled = _admin_get(args.server, "/compile")
    except OSError as exc:
        print(f"status: cannot reach the control plane at {args.server}: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        write({"compile": compiled, **data}, "json", sys.stdout)
        return 0
    print(status_table(data, compiled))
    return 0 if all(n["state"] == "SYNCED" for n in data["nodes"]) else 3


def status_table(data: dict[str, Any], compiled: dict[str, Any]) -> str:
    """One line per connected Envoy, like ``istioctl proxy-status``, then NACK details."""
    short = {
        "clusters": "CDS",
        "endpoints": "EDS",
        "listeners": "LDS",
        "scopes": "SRDS",
        "routes": "RDS",
        "services": "SVC",  # what the rate-limit and WAF services are given
    }
    header = ["NODE", "GROUP", "PROTOCOL", *short.values(), "STATE"]
    rows = [header]
    notes = []
    for n in data["nodes"]:
        cells = [n["node"], n["group"], n["protocol"]]
        for kind in short:
            t = n["types"].get(kind)
            cells.append(f"{t['state']} {t['sent'][:8]}" if t else "-")
        cells.append(n["state"])
        rows.append(cells)
        for kind, t in n["types"].items():
            if "nack" in t:
                where = ", ".join(t["nack"]["sources"]) or "unknown source"
                notes.append(
                    f"{n['node']} {short.get(kind, kind)} NACKED version {t['nack']['version']}: {t['nack']['message']}"
                    f"\n    from: {where}"
                )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if not data["nodes"]:
        lines.append("(no Envoy connected)")
    state = "ok" if compiled.get("ok") else "REJECTED"
    lines.append(
        f"\nlast compile: {state}, serving version {compiled.get('served_version') or '-'}, "
        f"{compiled.get('operations', 0)} operations"
    )
    lines.extend(f"  {e}" for e in compiled.get("errors", []))
    lines.extend(notes)
    waf = compiled.get("waf")
    if waf:
        r = waf["routes"]
        on = [n["node"] for n in data["nodes"] if "services" in n["types"] and n["group"] == "waf"]
        synced = [n["node"] for n in data["nodes"] if n["node"] in on and n["types"]["services"]["state"] == "SYNCED"]
        lines.append(
            f"waf: rules {waf['rules']} ({waf['rule_count']} rules), service at {', '.join(waf['endpoints'])}; "
            f"routes: {r['prevent']} prevent, {r['detect']} detect, {r['off']} off; {r['fail_open']} fail open, "
            f"{r['masked']} masked; services with these rules: {len(synced)} of {len(on)} connected"
        )
    holders: dict[str, list[str]] = {}
    for n in data["nodes"]:
        for held in n.get("certificates", ()):
            holders.setdefault(held["secret"], []).append(n["node"])
    for cert in data.get("certificates", ()):
        days = cert["days_left"]
        when = f"EXPIRED {-days:.0f} days ago" if days < 0 else f"{days:.0f} days left"
        nodes = ", ".join(holders.get(cert["secret"], [])) or "no node yet"
        lines.append(f"certificate {cert['secret']} ({cert['file']}): expires {cert['not_after']}, {when}; on {nodes}")
    lines.extend(_source_lines(data.get("sources") or {}))
    return "\n".join(lines)


def _source_lines(sources: dict[str, Any]) -> list[str]:
    """What ``status`` says of pushed and pulled specs and of the cluster."""
    import time

    lines = []
    push = sources.get("push")
    if push is not None:
        live = ", ".join(f"{api} v{v}" for api, v in sorted(push["live"].items())) or "nothing pushed"
        lines.append(f"pushed: {live} (store {push['store']})")
    for api, pull in sorted((sources.get("pulls") or {}).items()):
        checked = pull.get("checked_at")
        ago = f"checked {time.time() - checked:.0f}s ago" if checked else "not checked yet"
        error = f"; {pull['error']}" if pull.get("error") else ""
        lines.append(f"pulled: {api} from {pull['url']}: version {pull.get('version') or '-'}, {ago}{error}")
    kube = sources.get("kubernetes")
    if kube is not None:
        role = "leader" if kube["leader"] else "follower"
        lease = f" (lease {kube['lease']} as {kube['identity']})" if kube["lease"] else ""
        waiting = [k["name"] for k in kube["kinds"] if not k["listed"]]
        listed = f"{len(kube['kinds']) - len(waiting)} of {len(kube['kinds'])} kinds listed"
        if waiting:
            listed += f" (not yet: {', '.join(waiting)})"
        objects = sum(k["objects"] for k in kube["kinds"])
        lines.append(
            f"kubernetes: {role}{lease}; {listed}, {objects} objects; "
            f"{kube['status_writes']} status writes, {kube['events']} events"
        )
    for name, feed in sorted((sources.get("reputation") or {}).items()):
        copy = f"{feed['entries']} entries fetched {feed['fetchedAt']}" if feed["fetchedAt"] else "no copy"
        failing = (
            f"FAILING ({feed['consecutiveFailures']} in a row, last {feed['failedAt']}: {feed['error']}); "
            if feed["error"]
            else ""
        )
        lines.append(f"reputation feed {name} from {feed['url']}: {failing}{copy}{' kept' if failing else ''}")
    return lines


def _tls_files(args: argparse.Namespace, what: str) -> Any:
    from .xds.grpc_server import TlsFiles

    given = (args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.insecure:
        return None
    if not all(given):
        raise SystemExit(
            f"{what}: give --tls-cert, --tls-key and --tls-client-ca to require mTLS from Envoys, "
            "or --insecure for plaintext (loopback development only)"
        )
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from .server import ServeOptions, serve_forever

    if not args.paths and not args.kubernetes:
        print(
            "serve: give the specs and policies (PATH...), or --kubernetes to read them from the cluster",
            file=sys.stderr,
        )
        return 2
    tls = _tls_files(args, "serve")
    _logging()
    options = ServeOptions(
        paths=args.paths,
        xds_address=args.xds_address,
        admin_address=args.admin_address,
        tls=tls,
        strict=args.strict,
        poll_interval=args.poll_interval,
        quiet_period=args.quiet_period,
        max_delay=args.max_delay,
        push=_push_options(args),
        kubernetes=_kube_options(args),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(options))
    return 0


def _push_options(args: argparse.Namespace) -> Any:
    from .push.api import PushOptions

    if args.push_address is None and args.push_store is None and args.push_configmaps is None:
        return None
    if args.push_configmaps is not None:
        namespace, _, name = args.push_configmaps.partition("/")
        if not args.kubernetes:
            raise SystemExit("serve: --push-configmaps keeps pushed versions in the cluster: it needs --kubernetes")
        if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(name)):
            raise SystemExit(
                f"serve: --push-configmaps {args.push_configmaps!r}: give NAMESPACE/NAME, each at most 63 lower-case "
                "letters, digits and '-' (the ConfigMaps are NAME-live and NAME-<digest of the API>-<version>)"
            )
        if args.push_store is None:
            args.push_store = tempfile.mkdtemp(prefix="controlplane-push-")
        from .push.cluster import is_copy

        if not is_copy(Path(args.push_store)):
            raise SystemExit(
                f"serve: --push-store {args.push_store} holds a store of its own (files, not a copy of the "
                "cluster's): with --push-configmaps give an empty or new directory, where the copy is kept"
            )
    elif args.push_peers:
        raise SystemExit("serve: --push-peers are replicas sharing the versions: it needs --push-configmaps")
    if args.push_store is None:
        raise SystemExit(
            "serve: --push-address needs --push-store DIR (where pushed versions are kept), or "
            "--push-configmaps NAMESPACE/NAME (in the cluster, shared by replicas)"
        )
    if args.push_address is not None and not args.push_insecure and not (args.push_cert and args.push_key):
        raise SystemExit(
            "serve: give --push-cert and --push-key to serve the push API over TLS, or --push-insecure for "
            "plain HTTP (loopback development only)"
        )
    return PushOptions(
        args.push_address,
        Path(args.push_store),
        None if args.push_insecure else args.push_cert,
        None if args.push_insecure else args.push_key,
        args.push_client_ca,
        args.rollout_timeout,
        args.push_configmaps,
        tuple(p.strip() for p in (args.push_peers or "").split(",") if p.strip()),
    )


def _kube_options(args: argparse.Namespace) -> Any:
    from .kube.source import KubeOptions

    if not args.kubernetes:
        return None
    return KubeOptions(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.kube_namespace),
        state_dir=Path(args.kube_state) if args.kube_state else None,
        configmap_selector=args.kube_configmap_selector,
        secret_selector=args.kube_secret_selector,
        lease=args.kube_lease,
        lease_seconds=args.kube_lease_seconds,
        **({"identity": args.kube_identity} if args.kube_identity else {}),
    )


def cmd_push(args: argparse.Namespace) -> int:
    from .push.client import cmd_push as push

    return push(args)


def cmd_run(args: argparse.Namespace) -> int:
    from .gateway import run_gateway

    _logging()
    return run_gateway(args)


CACHE_HELP = (
    "do not read or write the validation cache ($CONTROLPLANE_CACHE_DIR, default ~/.cache/controlplane; "
    "CONTROLPLANE_NO_CACHE=1 turns it off for every command)"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controlplane",
        description="Compile OpenAPI specs and gateway policies for Envoy, serve them over xDS, run a local gateway.",
        epilog="Environment: CONTROLPLANE_CACHE_DIR (validation cache folder), CONTROLPLANE_NO_CACHE=1 (no cache), "
        "CONTROLPLANE_VALIDATION_TIMEOUT (seconds the full OpenAPI validator may spend per document, default 60).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    paths_help = (
        "OpenAPI files, policy files or directories (walked with their sub-directories; "
        "files that are neither specs nor policies are read only when referred to)"
    )

    def inputs(sp: argparse.ArgumentParser, nargs: str = "+") -> None:
        sp.add_argument("paths", nargs=nargs, metavar="PATH", help=paths_help)
        sp.add_argument("--strict", action="store_true", help="every validator finding is an error")
        sp.add_argument("--no-cache", action="store_true", help=CACHE_HELP)
        sp.add_argument("--all", action="store_true", help="list every place of a finding repeated in many places")

    def output(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="output format (default yaml)")

    v = sub.add_parser("validate", help="check specs and policies; print every error and warning")
    inputs(v)
    v.add_argument("--envoy", action="store_true", help="also check the result with `envoy --mode validate`")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("dump", help="print the generated Envoy resources or a static bootstrap")
    inputs(d, "*")
    d.add_argument("--server", metavar="ADDR", help="the live config of a node from a control plane's admin address")
    d.add_argument("--node", metavar="ID", help="with --server: the node")
    d.add_argument("--type", choices=list(Resources.TYPES), help="only resources of this type")
    output(d)
    d.add_argument("--bootstrap", action="store_true", help="a complete static Envoy config (envoy -c)")
    d.add_argument(
        "--show-secrets",
        action="store_true",
        help="print private keys (redacted by default; a --bootstrap names the key files instead)",
    )
    d.add_argument("--ir", action="store_true", help="the intermediate representation instead of Envoy resources")
    d.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port on 127.0.0.1 (with --bootstrap)")
    d.add_argument("--full-validation", action="store_true", help="also run the full OpenAPI validator (cached)")
    d.set_defaults(func=cmd_dump)

    b = sub.add_parser("bootstrap", help="print the bootstrap of an Envoy that gets its config over xDS")
    b.add_argument("--node-id", required=True, help="the Envoy's node id (with mTLS the server trusts the certificate)")
    b.add_argument("--cluster", default="gateway", help="node cluster: the group of Envoys sharing a config")
    b.add_argument(
        "--xds-address", required=True, type=_host_port, metavar="HOST:PORT", help="the control plane's xDS address"
    )
    b.add_argument(
        "--sidecar",
        metavar="BACKEND",
        help="the sidecar of mesh backend BACKEND (node group backend.BACKEND: its xDS client certificate "
        "must carry that organizational unit)",
    )
    b.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    b.add_argument("--insecure", action="store_true", help="plaintext channel to the xDS server")
    b.add_argument("--tls-cert", help="client certificate Envoy presents to the xDS server")
    b.add_argument("--tls-key", help="its private key")
    b.add_argument("--tls-ca", help="CA that signed the xDS server's certificate")
    b.add_argument("--server-name", help="name expected in the xDS server's certificate (default: its host)")
    b.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port on 127.0.0.1 (default 9901)")
    output(b)
    b.set_defaults(func=cmd_bootstrap)

    def server_tls(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--insecure", action="store_true", help="plaintext xDS (loopback development only)")
        sp.add_argument("--tls-cert", help="the xDS server's certificate")
        sp.add_argument("--tls-key", help="its private key")
        sp.add_argument("--tls-client-ca", help="CA that signs Envoy client certificates (mTLS is required)")

    s = sub.add_parser("serve", help="serve the compiled configuration to Envoys over xDS, reloading on change")
    s.add_argument("paths", nargs="*", metavar="PATH", help=paths_help + " (none: only what --kubernetes reads)")
    s.add_argument(
        "--xds-address", default="127.0.0.1:18000", metavar="HOST:PORT", help="where Envoys connect (gRPC ADS)"
    )
    s.add_argument(
        "--admin-address",
        default="127.0.0.1:18001",
        metavar="HOST:PORT",
        help="health, readiness, metrics, status and config dumps",
    )
    server_tls(s)
    s.add_argument("--strict", action="store_true", help="publish only inputs that pass full validation")
    s.add_argument(
        "--poll-interval",
        type=float,
        default=0.05,
        metavar="SECONDS",
        help="how often the files are checked (less often when looking takes over a tenth of that)",
    )
    s.add_argument(
        "--quiet-period",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="a change after this long without changes is compiled at once; changes that follow it "
        "within this time are compiled together once the files have been quiet this long",
    )
    s.add_argument(
        "--max-delay",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="recompile at the latest this long after the first change of a burst",
    )
    s.add_argument(
        "--kubernetes",
        action="store_true",
        help="also read the cluster: ApiSpec and GatewayPolicy resources, selected ConfigMaps and TLS Secrets, "
        "and the EndpointSlices of upstreams[].service (statuses and Events written back)",
    )
    s.add_argument("--kubeconfig", metavar="FILE", help="with --kubernetes: this kubeconfig (default: in-cluster)")
    s.add_argument(
        "--kube-namespace",
        action="append",
        default=[],
        metavar="NS",
        help="with --kubernetes: watch this namespace only (repeatable; default every namespace)",
    )
    s.add_argument(
        "--kube-state", metavar="DIR", help="where the cluster's objects are mirrored as files (default: a temp dir)"
    )
    s.add_argument(
        "--kube-configmap-selector",
        default="controlplane.dev/config",
        metavar="SELECTOR",
        help="label selector of the ConfigMaps holding specs and policies (default controlplane.dev/config)",
    )
    s.add_argument(
        "--kube-secret-selector",
        default="controlplane.dev/tls",
        metavar="SELECTOR",
        help="label selector of the TLS Secrets the policies use (default controlplane.dev/tls)",
    )
    s.add_argument(
        "--kube-lease",
        metavar="NS/NAME",
        help="a Lease for leader election: only the leader writes statuses and Events (every replica serves xDS)",
    )
    s.add_argument("--kube-identity", metavar="ID", help="this replica's name in the Lease (default: the host name)")
    s.add_argument(
        "--kube-lease-seconds",
        type=int,
        default=15,
        metavar="SECONDS",
        help="how long a leader that stops renewing keeps the Lease (default 15)",
    )
    s.add_argument(
        "--push-address",
        metavar="HOST:PORT",
        help="serve the push API here (CI pushes specs; who may push what: the policy's push.clients)",
    )
    s.add_argument(
        "--push-store",
        metavar="DIR",
        help="where every pushed or pulled (apis[].pull) version is kept, with the audit log",
    )
    s.add_argument(
        "--push-configmaps",
        metavar="NAMESPACE/NAME",
        help="with --kubernetes: keep pushed versions in ConfigMaps NAME-* of NAMESPACE, shared by every "
        "replica (--push-store is then this replica's copy; default a temporary directory)",
    )
    s.add_argument(
        "--push-peers",
        metavar="HOST:PORT,...",
        help="the admin addresses of the other replicas (a headless Service's name resolves to each): a "
        "push's rollout (--wait) waits for their Envoys too",
    )
    s.add_argument("--push-cert", metavar="FILE", help="the push API's TLS certificate")
    s.add_argument("--push-key", metavar="FILE", help="its private key")
    s.add_argument(
        "--push-client-ca",
        metavar="FILE",
        help="CA whose client certificates identify push clients (push.clients[].subjectAltNames)",
    )
    s.add_argument("--push-insecure", action="store_true", help="the push API over plain HTTP (loopback only)")
    s.add_argument(
        "--rollout-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a push's rollout is watched for NACKs when the pusher does not wait (default 30)",
    )
    s.set_defaults(func=cmd_serve)

    pu = sub.add_parser(
        "push",
        help="push an API's OpenAPI spec to a control plane (CI), roll back, or list its versions",
        description="Token: $CONTROLPLANE_PUSH_TOKEN or --token-file (never on the command line). "
        "Exit 0 when applied (with --wait: every Envoy ACKed), 1 when refused, not compiled, NACKed "
        "(and rolled back) or not ACKed in time, 2 when the API cannot be reached.",
    )
    pu.add_argument("files", nargs="*", metavar="FILE", help="the spec, then the files its $refs reach")
    pu.add_argument("--server", required=True, metavar="URL", help="the push API (https://host:port)")
    pu.add_argument("--api", metavar="NAME", help="the API (apis[].name) whose spec this is")
    pu.add_argument("--policy", metavar="FILE", help="a policy fragment declaring the API (only its apis entry)")
    pu.add_argument("--dry-run", action="store_true", help="validate and show the diff; change nothing")
    pu.add_argument("--wait", action="store_true", help="return once every connected Envoy ACKed (or one NACKed)")
    pu.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="how long --wait waits (default 30)")
    pu.add_argument("--message", metavar="TEXT", help="why: kept with the version (a commit id, a PR)")
    pu.add_argument("--rollback", metavar="NAME", help="serve an earlier version of this API again")
    pu.add_argument("--to", type=int, metavar="VERSION", help="with --rollback: this version (default the one before)")
    pu.add_argument("--versions", metavar="NAME", help="list this API's versions: who pushed them, when, state")
    pu.add_argument("--token-file", metavar="FILE", help="a file holding the bearer token")
    pu.add_argument("--cert", metavar="FILE", help="a client certificate instead of a token")
    pu.add_argument("--key", metavar="FILE", help="its private key")
    pu.add_argument("--ca", metavar="FILE", help="CA that signs the push API's certificate (default: system CAs)")
    pu.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format (default text)")
    pu.set_defaults(func=cmd_push)

    df = sub.add_parser(
        "diff",
        help="what changing specs and policies does to the gateway, security-relevant changes first "
        "(exit 1 when there are some)",
    )
    df.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="the old specs, policies or directories, then --, then the new ones (with --server: only the new ones)",
    )
    df.add_argument(
        "--server",
        metavar="ADMIN",
        help="the old side is what the control plane at this admin address serves (its /inputs, compiled here): "
        "diff --server ADMIN -- NEW...",
    )
    df.add_argument(
        "-o",
        "--output",
        choices=["text", "json", "markdown"],
        default="text",
        help="text for people, json for bots, markdown for a pull-request comment (default text)",
    )
    df.add_argument("--no-cache", action="store_true", help=CACHE_HELP)
    df.set_defaults(func=cmd_diff)

    ex = sub.add_parser(
        "explain",
        help="why a request gets its answer: listener, route, each filter's decision and its source, the status",
    )
    ex.add_argument("method", metavar="METHOD", help="the request's method")
    ex.add_argument("url", metavar="URL", help="the request's URL (http://host:port/path?query)")
    inputs(ex, "*")
    ex.add_argument(
        "--server",
        metavar="ADMIN",
        help="instead of PATH: what the control plane at this admin address serves (its /inputs, compiled here)",
    )
    ex.add_argument(
        "--node",
        metavar="ID",
        help="with --server: also say whether this connected Envoy runs the served version (SYNCED) or not",
    )
    ex.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="a request header (repeatable)")
    who = ex.add_mutually_exclusive_group()
    who.add_argument("--token", metavar="JWT", help="the caller's token (verified against the provider's keys)")
    who.add_argument("--claims", metavar="K=V,...", help="the caller's claims, taken as verified (role=admin,sub=bob)")
    ex.add_argument("--client-ip", metavar="ADDR", help="the client address the gateway trusts")
    ex.add_argument("--body-file", metavar="FILE", help="the request body (for the WAF)")
    ex.add_argument("-o", "--output", choices=["text", "json"], default="text", help="output format (default text)")
    ex.set_defaults(func=cmd_explain)

    ck = sub.add_parser(
        "check",
        help="exit 1 when a connected Envoy is NACKED or STALE or serves other than PATH compiles to "
        "(names the node, the resource and the first difference)",
    )
    inputs(ck, "*")
    ck.add_argument("--server", metavar="ADDR", help="the control plane's admin address")
    ck.add_argument(
        "--access-log",
        metavar="FILE",
        help="instead: the gateway's JSON access log (- for stdin); list the 404s for endpoints no spec "
        "declares, by path shape, and exit 1 when there are some",
    )
    ck.add_argument("--group", default="gateway", help="the node group whose configuration PATH is (default gateway)")
    ck.set_defaults(func=cmd_check)

    st = sub.add_parser("status", help="one line per connected Envoy: versions per type, SYNCED/STALE/NACKED")
    st.add_argument("--server", required=True, metavar="ADDR", help="the control plane's admin address")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table", help="output format (default table)")
    st.set_defaults(func=cmd_status)

    r = sub.add_parser("run", help="a whole local gateway: control plane, Envoy and the sample backend")
    r.add_argument("paths", nargs="*", default=["specs/"], metavar="PATH", help=paths_help + " (default specs/)")
    r.add_argument(
        "--port",
        type=_port,
        help="the port the gateway listens on, instead of the one the policy sets (the inputs must define "
        "one listener)",
    )
    r.add_argument("--backend-port", type=int, default=9000, help="sample backend port (0: none; default 9000)")
    r.add_argument("--xds-port", type=int, default=18000, help="control plane xDS port (default 18000)")
    r.add_argument("--admin-port", type=int, default=18001, help="control plane admin port (default 18001)")
    r.add_argument("--envoy-admin-port", type=int, default=9901, help="Envoy admin port (default 9901)")
    r.add_argument("--delta", action="store_true", help="Envoy uses delta xDS")
    r.set_defaults(func=cmd_run)

    # (main() hands everything after `ratelimit` to the service's own parser; listed here for --help)
    sub.add_parser(
        "ratelimit",
        parents=[ratelimit_parser(add_help=False)],
        help="the rate-limit service (gRPC, counts in Redis; its limits come from the control plane over xDS)",
    )
    sub.add_parser(
        "waf",
        parents=[waf_parser(add_help=False)],
        help="the WAF service (ext_authz gRPC; its rules come from the control plane over xDS)",
    )
    sub.add_parser(
        "sync-files",
        help="keep copies of a directory's files that Envoy sees change (a geo database in a ConfigMap or "
        "Secret volume)",
    )
    return p


def cmd_ratelimit(argv: list[str]) -> int:
    from .ratelimit import main as service_main

    return service_main(argv)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}")
    return int(text)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("controlplane")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout that is not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["ratelimit"]:  # every option after it is the service's own (argparse would take --help)
        return cmd_ratelimit(given[1:])
    if given[:1] == ["diff"] and "--" in given:
        given[given.index("--")] = _DIFF_CUT
    if given[:1] == ["sync-files"]:
        from .filesync import main as sync_main

        return sync_main(given[1:])
    if given[:1] == ["waf"]:
        from .waf.app import main as waf_main

        return waf_main(given[1:])
    p = parser()
    args, extra = p.parse_known_args(given)
    if extra and args.command == "explain" and not any(e.startswith("-") for e in extra):
        # explain's PATH... may be none (--server): argparse then takes none before the first
        # option, and leaves the ones given after options over
        args.paths += extra
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `dump ... | head`
        return 0
    except KeyboardInterrupt:
        return 130
    return code
