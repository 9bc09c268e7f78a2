"""A small OpenID Connect provider on loopback, signing real RS256 JWTs: discovery,
authorize (signs in `next_user` at once), token (checks the PKCE verifier) and JWKS.
`forge` makes it misbehave the ways a test needs (wrong key, audience, nonce, expiry)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_ID = "schoolgate-portal"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Provider:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.next_user = {"preferred_username": "amy.b@school.test", "groups": ["Year7"]}
        self.forge: str | None = None  # "key", "audience", "nonce", "expired", "issuer"
        self.codes: dict[str, dict] = {}
        self.token_requests: list[dict] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                provider._get(self)

            def do_POST(self) -> None:
                provider._post(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, handler, status: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        handler.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _get(self, handler) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == "/.well-known/openid-configuration":
            self._send(handler, 200, {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                                      "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks"})
        elif parts.path == "/jwks":
            numbers = self.key.public_key().public_numbers()
            self._send(handler, 200, {"keys": [{"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256",
                                                "n": _b64(numbers.n.to_bytes(256, "big")), "e": _b64(numbers.e.to_bytes(3, "big"))}]})
        elif parts.path == "/authorize":
            if query.get("client_id") != CLIENT_ID or query.get("code_challenge_method") != "S256":
                self._send(handler, 400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(16)
            self.codes[code] = {**query, "user": dict(self.next_user)}
            location = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
            self._send(handler, 302, None, {"Location": location})
        else:
            self._send(handler, 404, {"error": "not found"})

    def _post(self, handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(handler.rfile.read(length).decode()).items()}
        self.token_requests.append(form)
        grant = self.codes.pop(form.get("code", ""), None)
        challenge = _b64(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
        if (urlsplit(handler.path).path != "/token" or grant is None or form.get("grant_type") != "authorization_code"
                or form.get("redirect_uri") != grant["redirect_uri"] or challenge != grant["code_challenge"]):
            self._send(handler, 400, {"error": "invalid_grant"})
            return
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": CLIENT_ID, "sub": "123", "iat": now, "exp": now + 300,
                  "nonce": grant["nonce"], **grant["user"]}
        if self.forge == "audience":
            claims["aud"] = "someone-else"
        elif self.forge == "nonce":
            claims["nonce"] = "replayed"
        elif self.forge == "expired":
            claims["exp"] = now - 3600
        elif self.forge == "issuer":
            claims["iss"] = "https://evil.test"
        self._send(handler, 200, {"id_token": self.sign(claims), "access_token": "opaque", "token_type": "Bearer"})

    def sign(self, claims: dict) -> str:
        head = _b64(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode())
        body = _b64(json.dumps(claims).encode())
        key = self.other_key if self.forge == "key" else self.key
        return f"{head}.{body}.{_b64(key.sign(f'{head}.{body}'.encode(), padding.PKCS1v15(), hashes.SHA256()))}"
