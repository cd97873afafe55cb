"""The ``push`` command: a pipeline's side of the push API."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOKEN_ENV = "CONTROLPLANE_PUSH_TOKEN"


class PushError(Exception):
    pass


def cmd_push(args: argparse.Namespace) -> int:
    try:
        if args.rollback:
            status, data = request(args, "POST", f"/v1/apis/{args.rollback}/rollback", _rollback_body(args))
        elif args.versions:
            status, data = request(args, "GET", f"/v1/apis/{args.versions}/versions")
        else:
            if not args.api or not args.files:
                print("push: give --api NAME and the spec file (--api NAME spec.yaml [more])", file=sys.stderr)
                return 2
            status, data = request(args, "POST", f"/v1/apis/{args.api}/versions", _push_body(args))
    except PushError as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps({"status": status, **data}, indent=2))
    else:
        print(describe(status, data))
    return 0 if status in (200, 202) else 1


def _push_body(args: argparse.Namespace) -> dict[str, Any]:
    paths = [Path(f) for f in args.files] + ([Path(args.policy)] if args.policy else [])
    for path in paths:
        if not path.is_file():
            raise PushError(f"{path}: no such file")
    # names relative to the directory holding them all, so that references between them still resolve
    base = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
    files = {}
    for path in paths:
        name = path.resolve().relative_to(base).as_posix()
        try:
            files[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PushError(f"{path}: not UTF-8 text ({exc.reason})") from None
    body: dict[str, Any] = {
        "files": files,
        "spec": Path(args.files[0]).resolve().relative_to(base).as_posix(),
        "dryRun": args.dry_run,
        "wait": args.wait,
        "timeout": args.timeout,
    }
    if args.policy:
        body["policy"] = Path(args.policy).resolve().relative_to(base).as_posix()
    if args.message:
        body["message"] = args.message
    return body


def _rollback_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"wait": args.wait, "timeout": args.timeout}
    if args.to is not None:
        body["to"] = args.to
    return body


def request(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    token = _token(args)
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.server.rstrip("/") + path, data=data, method=method, headers=headers)
    context = None
    if args.server.startswith("https:"):
        context = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout + 30, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"error": raw.decode("utf-8", "replace")[:500]}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PushError(f"cannot reach the push API at {args.server}: {reason}") from None


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            return Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise PushError(f"--token-file: {exc.strerror}") from None
    return os.environ.get(TOKEN_ENV, "").strip()


def describe(status: int, data: dict[str, Any]) -> str:
    """The answer for people."""
    lines: list[str] = []
    if "versions" in data:
        lines.append(f"api {data['api']}: live version {data['live']}")
        for v in data["versions"]:
            message = f"  {v['message']}" if v.get("message") else ""
            lines.append(f"  {v['version']:>4}  {v['state']:<12} {v['pushed_by']:<20} {_when(v['at'])}{message}")
            if v.get("reason"):
                lines.append(f"        {v['reason']}")
        return "\n".join(lines)
    if data.get("dryRun"):
        lines.append("dry run: " + ("the push compiles" if data["ok"] else "the push does NOT compile"))
    elif status in (200, 202) and data.get("applied"):
        rollout = data.get("rollout")
        lines.append(f"version {data['version']} is live (served version {data['served']})")
        if isinstance(rollout, dict):
            lines.append(f"every connected Envoy ACKed it ({rollout['envoys']}, {rollout['seconds']}s)")
        elif rollout:
            lines.append(str(rollout))
    elif data.get("note"):
        lines.append(data["note"])
    if data.get("error"):
        lines.append(f"error ({status}): {data['error']}")
    for key in ("errors", "warnings"):
        for text in data.get(key, []):
            lines.append(f"  {key[:-1]}: {text}")
    for change in data.get("security", []):
        where = f"  ({change['source']})" if change.get("source") else ""
        lines.append(f"  security-relevant: {change['subject']}: {change['change']}{where}")
    rollout = data.get("rollout")
    if isinstance(rollout, dict) and status not in (200, 202):
        for nack in rollout.get("nacks", []):
            where = f" (from {', '.join(nack['sources'])})" if nack["sources"] else ""
            lines.append(f"  NACK by {nack['node']} ({nack['type']}): {nack['message']}{where}")
        if rollout.get("pending"):
            lines.append(f"  no ACK yet from: {', '.join(rollout['pending'])}")
    if data.get("diff"):
        lines.append(data["diff"]["text"])
    return "\n".join(lines)


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + "Z"
