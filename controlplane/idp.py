"""A small identity provider for the examples and the tests: real keys, real signatures.

It holds RSA (RS256) and EC P-256 (ES256) signing keys, publishes them as a JWKS, mints
tokens, and can serve the JWKS over HTTP(S) with key rotation. The bundled example's
keys live in ``specs/idp/`` so that ``python -m controlplane.idp mint`` produces tokens the
example gateway accepts::

    python -m controlplane.idp mint --sub alice --role customer
    python -m controlplane.idp mint --sub root --role admin --ttl 600
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "specs" / "idp"
EXAMPLE_ISSUER = "https://idp.example.com"
EXAMPLE_AUDIENCE = "shop-api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or (n.bit_length() + 7) // 8, "big")


@dataclass
class SigningKey:
    kid: str
    alg: str  # RS256 or ES256
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        if alg == "RS256":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"unsupported algorithm {alg}")
        return cls(kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg, private)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        data = json.loads(path.read_text())
        private = serialization.load_pem_private_key(data["pem"].encode(), password=None)
        assert isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        return cls(data["kid"], data["alg"], private)

    def save(self, path: Path) -> None:
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        path.write_text(json.dumps({"kid": self.kid, "alg": self.alg, "pem": pem}, indent=2) + "\n")

    def jwk(self) -> dict[str, str]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {
                "kty": "RSA",
                "kid": self.kid,
                "alg": self.alg,
                "use": "sig",
                "n": b64url(_int_bytes(numbers.n)),
                "e": b64url(_int_bytes(numbers.e)),
            }
        assert isinstance(public, ec.EllipticCurvePublicKey)
        point = public.public_numbers()
        return {
            "kty": "EC",
            "kid": self.kid,
            "alg": self.alg,
            "use": "sig",
            "crv": "P-256",
            "x": b64url(_int_bytes(point.x, 32)),
            "y": b64url(_int_bytes(point.y, 32)),
        }

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(message, padding.PKCS1v15(), hashes.SHA256())
        der = self.private.sign(message, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return _int_bytes(r, 32) + _int_bytes(s, 32)  # JOSE wants r||s, not DER


def encode(header: dict[str, Any], payload: dict[str, Any], key: SigningKey | None) -> str:
    """A compact JWS. ``key=None`` leaves the signature empty (for hostile tests)."""
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{head}.{body}".encode()
    signature = b64url(key.sign(signing_input)) if key is not None else ""
    return f"{head}.{body}.{signature}"


class IdentityProvider:
    def __init__(self, issuer: str, keys: list[SigningKey]):
        self.issuer = issuer
        self.keys = keys
        self.lock = threading.Lock()

    @classmethod
    def example(cls) -> IdentityProvider:
        keys = [SigningKey.load(p) for p in sorted(EXAMPLE_DIR.glob("*.key"))]
        return cls(EXAMPLE_ISSUER, keys)

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            return {"keys": [k.jwk() for k in self.keys]}

    def key(self, kid: str | None = None, alg: str | None = None) -> SigningKey:
        with self.lock:
            for k in self.keys:
                if (kid is None or k.kid == kid) and (alg is None or k.alg == alg):
                    return k
        raise KeyError(kid or alg)

    def mint(
        self,
        claims: dict[str, Any],
        *,
        audience: str | list[str] | None = None,
        ttl: int = 3600,
        key: SigningKey | None = None,
        alg: str | None = None,
        now: float | None = None,
    ) -> str:
        signer = key or self.key(alg=alg)
        issued = int(now if now is not None else time.time())
        payload: dict[str, Any] = {"iss": self.issuer, "iat": issued, "exp": issued + ttl, **claims}
        if audience is not None:
            payload.setdefault("aud", audience)
        return encode({"alg": signer.alg, "typ": "JWT", "kid": signer.kid}, payload, signer)

    def rotate(self, new: SigningKey) -> SigningKey:
        """Replace every key by ``new``; returns the old first key."""
        with self.lock:
            old = self.keys[0]
            self.keys = [new]
            return old


class JwksServer(ThreadingHTTPServer):
    """Serves ``/.well-known/jwks.json`` (and counts fetches), optionally over TLS."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, idp: IdentityProvider, port: int = 0, tls: tuple[str, str] | None = None):
        idp_ref = idp
        self.fetches = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                server = self.server
                assert isinstance(server, JwksServer)
                server.fetches += 1
                body = json.dumps(idp_ref.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)
        if tls is not None:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[0], tls[1])
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> JwksServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m controlplane.idp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mint", help="a token signed by the bundled example identity provider")
    m.add_argument("--sub", required=True)
    m.add_argument("--role", action="append", default=[], help="repeat for several roles")
    m.add_argument("--scope", default="", help="space-separated OAuth scopes")
    m.add_argument("--audience", default=EXAMPLE_AUDIENCE)
    m.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    m.add_argument("--alg", choices=["RS256", "ES256"], default="RS256")
    sub.add_parser("jwks", help="print the example JWKS")
    g = sub.add_parser("generate", help="write new example keys into a folder")
    g.add_argument("folder", type=Path)
    args = p.parse_args()
    if args.command == "mint":
        idp = IdentityProvider.example()
        claims: dict[str, Any] = {"sub": args.sub}
        if args.role:
            claims["role"] = args.role[0] if len(args.role) == 1 else args.role
        if args.scope:
            claims["scope"] = args.scope
        print(idp.mint(claims, audience=args.audience, ttl=args.ttl, alg=args.alg))
    elif args.command == "jwks":
        print(json.dumps(IdentityProvider.example().jwks(), indent=2))
    else:
        args.folder.mkdir(parents=True, exist_ok=True)
        for alg in ("RS256", "ES256"):
            key = SigningKey.generate(alg, kid=f"example-{alg.lower()}")
            key.save(args.folder / f"{key.kid}.key")


if __name__ == "__main__":
    main()
