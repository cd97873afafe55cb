"""The inputs of the configuration a control plane serves (admin ``/inputs``), so that a
client can compile them again and get what the control plane compiled: ``diff --server``
and ``explain --server`` compare with or explain what is live, not a checkout that may
have moved on.

The answer (JSON):

- ``version``: the served compile's content hash, ``/compile``'s ``served_version`` (with a
  mesh, the control plane adds the workload certificates it issues, and the versions differ);
- ``paths``: the files and directories ``serve`` was given, absolute and resolved;
- ``pushed``: the APIs pipelines pushed (``{api, root, spec, policy}``, absolute);
- ``files``: every file the served compile read, path → content. Content is text: UTF-8
  when it decodes as such, else latin-1 (every byte a character) and the path is listed in
  ``latin1``, so that any byte content survives the JSON round trip;
- ``withheld``: private keys, which never leave the control plane: any file holding a PEM
  ``PRIVATE KEY`` block, path → the file of the certificate the key belongs to (or null).
  ``materialize`` writes a throwaway key in its place and a stand-in for that certificate
  (same subject, names, validity and usages; the new key's; self-issued, so no chain): the
  compile then goes through with the same TLS settings and findings (expiry, hostnames), and
  only the secrets differ from the served ones. Leaving the key out instead would make the
  compile fail ("cannot read keyFile"), and a diff or explanation impossible.

Each file is read again when asked for and checked against the digest of the served compile:
a file changed on disk since then (an edit the control plane rejected, or one not compiled
yet) makes the served version impossible to reproduce, and the answer is 409 naming it.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from .sources import Pushed
from .xds.admin import json_answer

_PRIVATE_KEY = b"PRIVATE KEY-----"


class Served(Protocol):
    """What ``answer`` reads of a ``worker.CompiledConfig``."""

    @property
    def files(self) -> list[str]: ...
    @property
    def digests(self) -> dict[str, str]: ...
    @property
    def serialized(self) -> dict[str, dict[str, bytes]]: ...


def served_version(serialized: dict[str, dict[str, bytes]]) -> str:
    """The version ``xds.snapshot.build_snapshot`` gives these resources."""
    from .xds.snapshot import short_hash

    return short_hash(
        *(f"{t}/{n}={short_hash(serialized[t][n])}" for t in sorted(serialized) for n in sorted(serialized[t]))
    )


def _absolute(path: str | Path) -> str:
    return str(Path(path).resolve())


def answer(
    paths: Sequence[str | Path],
    pushed: Sequence[Pushed],
    result: Served | None,
    *,
    listener_port: int | None = None,
    fetched: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """The admin ``/inputs`` answer (module docstring). ``listener_port`` and
    ``fetched``: what the control plane passed to its compile besides the files."""
    if result is None:
        return json_answer(503, {"error": "no configuration is served yet"})
    files: dict[str, str] = {}
    latin1: list[str] = []
    withheld: dict[str, bytes] = {}  # key file → its content, read here only to pair it with a certificate
    changed: list[str] = []
    for name in result.files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            changed.append(f"{name} ({exc.strerror or exc})")
            continue
        if hashlib.sha256(raw).hexdigest() != result.digests.get(name):
            changed.append(name)
        elif _PRIVATE_KEY in raw:
            withheld[name] = raw
        else:
            try:
                files[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                files[name] = raw.decode("latin-1")
                latin1.append(name)
    if changed:
        return json_answer(
            409,
            {
                "error": "the served version cannot be reproduced: these files changed on disk since it was "
                "compiled (an edit the control plane rejected or has not compiled yet): " + ", ".join(changed),
                "changed": changed,
            },
        )
    data: dict[str, Any] = {
        "version": served_version(result.serialized),
        "paths": [_absolute(p) for p in paths],
        "pushed": [
            {
                "api": p.api,
                "root": _absolute(p.root),
                "spec": _absolute(p.spec),
                "policy": None if p.policy is None else _absolute(p.policy),
            }
            for p in pushed
        ],
        "files": files,
        "latin1": latin1,
        "withheld": {key: _certificate_of(raw, files) for key, raw in withheld.items()},
    }
    if listener_port is not None:
        data["listener_port"] = listener_port
    if fetched:
        data["fetched"] = fetched
    return json_answer(200, data)


def _certificate_of(key_pem: bytes, files: dict[str, str]) -> str | None:
    """The served file whose first certificate has this key's public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):  # encrypted, or not a key the compiler accepts either
        return None
    mine = key.public_key().public_bytes(serialization.Encoding.DER, spki)
    for name, text in sorted(files.items()):
        if "-----BEGIN CERTIFICATE-----" not in text:
            continue
        try:
            cert = x509.load_pem_x509_certificate(text.encode("latin-1", "replace"))
        except ValueError:
            continue
        if cert.public_key().public_bytes(serialization.Encoding.DER, spki) == mine:
            return name
    return None


def inside(into: Path, path: str) -> Path:
    """``/a/b/c.yaml`` → ``into/a/b/c.yaml`` (a Windows drive's letter becomes a directory)."""
    p = Path(path)
    return into.joinpath(*[part.replace(":", "").strip("\\/") or "_" for part in p.parts])


def materialize(data: dict[str, Any], into: Path) -> tuple[list[str], tuple[Pushed, ...]]:
    """Write ``/inputs``' files under ``into`` at their absolute paths (so that relative
    references between them still hold), stand-ins for withheld keys and their certificates;
    the paths and the pushed APIs to compile, mapped the same way."""
    latin1 = set(data.get("latin1", ()))
    for name, text in data["files"].items():
        target = inside(into, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("latin-1" if name in latin1 else "utf-8"))
    for key_file, cert_file in data.get("withheld", {}).items():
        _stand_in(inside(into, key_file), None if cert_file is None else inside(into, cert_file))
    paths = []
    for given in data["paths"]:
        target = inside(into, given)
        if given not in data["files"] and given not in data.get("withheld", {}):
            target.mkdir(parents=True, exist_ok=True)  # a directory (perhaps with nothing read in it)
        paths.append(str(target))
    pushed = tuple(
        Pushed(
            p["api"],
            inside(into, p["root"]),
            inside(into, p["spec"]),
            None if p.get("policy") is None else inside(into, p["policy"]),
        )
        for p in data.get("pushed", ())
    )
    return paths, pushed


def _stand_in(key_path: Path, cert_path: Path | None) -> None:
    """A throwaway key at ``key_path`` and, in ``cert_path``, a certificate like the one there
    but for that key and issued by itself (the chain behind it dropped: nothing can sign for
    its issuer without the issuer's key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    original = None
    if cert_path is not None and cert_path.exists():
        original = x509.load_pem_x509_certificate(cert_path.read_bytes())
    public = original.public_key() if original is not None else None
    key: Any
    algorithm: Any = hashes.SHA256()
    if isinstance(public, rsa.RSAPublicKey):
        key = rsa.generate_private_key(65537, public.key_size)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        key, algorithm = ed25519.Ed25519PrivateKey.generate(), None
    elif isinstance(public, ed448.Ed448PublicKey):
        key, algorithm = ed448.Ed448PrivateKey.generate(), None
    else:
        key = ec.generate_private_key(public.curve if isinstance(public, ec.EllipticCurvePublicKey) else ec.SECP256R1())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    if original is None or cert_path is None:
        return
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(original.not_valid_before_utc, now))
        .not_valid_after(original.not_valid_after_utc)
    )
    for ext in original.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier | x509.SubjectKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    cert_path.write_bytes(builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM))


def fetch(admin_url: str, timeout: float = 10) -> dict[str, Any]:
    """``/inputs`` of the control plane at ``admin_url`` (``http://host:port`` or ``host:port``).
    Raises ``InputsError`` with a message fit for a user: unreachable, nothing served yet (503),
    not reproducible (409)."""
    return _get(admin_url, "/inputs", timeout)


def status_of(admin_url: str, timeout: float = 10) -> dict[str, Any]:
    """``/status`` of the control plane at ``admin_url`` (errors as ``fetch``)."""
    return _get(admin_url, "/status", timeout)


class InputsError(Exception):
    """The served inputs cannot be had: unreachable, nothing served, or not reproducible."""


def _get(admin_url: str, path: str, timeout: float) -> dict[str, Any]:
    base = admin_url if "://" in admin_url else f"http://{admin_url}"
    url = base.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            reason = ""
        raise InputsError(f"{url} answered {exc.code}" + (f": {reason}" if reason else "")) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise InputsError(f"cannot reach the control plane at {url}: {getattr(exc, 'reason', exc)}") from exc
    except ValueError as exc:
        raise InputsError(f"{url} did not answer JSON: {exc}") from exc
