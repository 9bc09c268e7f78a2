"""OpenID Connect sign-in for the portal: the authorisation code flow with PKCE (RFC 7636).

The provider (Microsoft Entra ID, Google Workspace) is found from its issuer's
`/.well-known/openid-configuration`. The ID token is checked here, not trusted: RS256
signature against the provider's published keys, issuer, audience, expiry and the
nonce sent with this sign-in; only then is its user claim believed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from schoolgate.identities import Identity, Source, canonical_user
from schoolgate.policy import OidcSettings

PENDING_SECONDS = 600  # a sign-in not finished within ten minutes starts again
CLOCK_SKEW = 120


class OidcError(Exception):
    """The provider's answer does not prove who signed in."""


@dataclass(frozen=True, slots=True)
class Pending:
    client_ip: str  # the device that started the sign-in (the callback must come from it)
    verifier: str
    nonce: str
    redirect_uri: str
    back_to: str
    started: float


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OidcClient:
    # Sign-ins started and not yet finished: a pupil can start them as fast as they like,
    # so past this many the oldest are forgotten (those devices just start again), and one
    # device may hold only so many, so it cannot push everyone else's out.
    MAX_PENDING = 10_000
    MAX_PENDING_PER_DEVICE = 50

    def __init__(self, settings: OidcSettings, clock=time.time) -> None:
        self.settings = settings
        self.clock = clock
        self._metadata: dict | None = None
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._pending: OrderedDict[str, Pending] = OrderedDict()  # oldest first
        self._per_device: dict[str, int] = {}  # how many of them each device started

    async def start(self, client_ip: str, redirect_uri: str, back_to: str) -> str:
        """The provider URL to send the device to."""
        meta = await self._discover()
        now = self.clock()
        while self._pending and (len(self._pending) >= self.MAX_PENDING
                                 or now - next(iter(self._pending.values())).started >= PENDING_SECONDS):
            self._uncount(self._pending.popitem(last=False)[1])
        if self._per_device.get(client_ip, 0) >= self.MAX_PENDING_PER_DEVICE:
            raise OidcError("too many sign-ins were started on this device and not finished")
        self._per_device[client_ip] = self._per_device.get(client_ip, 0) + 1
        state, verifier, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(48), secrets.token_urlsafe(24)
        self._pending[state] = Pending(client_ip, verifier, nonce, redirect_uri, back_to, now)
        query = urlencode({
            "response_type": "code", "client_id": self.settings.client_id, "redirect_uri": redirect_uri,
            "scope": self.settings.scopes, "state": state, "nonce": nonce,
            "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()), "code_challenge_method": "S256",
        })
        return f"{meta['authorization_endpoint']}?{query}"

    async def finish(self, client_ip: str, state: str, code: str) -> tuple[Identity, str]:
        """Exchange the code, check the ID token; (identity, where the pupil was going)."""
        pending = self._pending.pop(state, None)
        if pending is not None:
            self._uncount(pending)
        if pending is None or self.clock() - pending.started >= PENDING_SECONDS:
            raise OidcError("this sign-in has expired or was not started here; start again")
        if pending.client_ip != client_ip:
            raise OidcError("the sign-in was started on another device")
        meta = await self._discover()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": pending.redirect_uri,
                "client_id": self.settings.client_id, "code_verifier": pending.verifier}
        if self.settings.client_secret_file:
            form["client_secret"] = self.settings.client_secret_file.read_text().strip()
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(meta["token_endpoint"], data=form)
        if answer.status_code != 200:
            raise OidcError(f"the provider refused the code (HTTP {answer.status_code})")
        id_token = answer.json().get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the provider sent no ID token")
        claims = await self._verified_claims(id_token)
        if claims.get("nonce") != pending.nonce:
            raise OidcError("the ID token is not for this sign-in (nonce)")
        return self._identity(claims), pending.back_to

    def _uncount(self, pending: Pending) -> None:
        left = self._per_device.pop(pending.client_ip, 1) - 1
        if left:
            self._per_device[pending.client_ip] = left

    def _identity(self, claims: dict) -> Identity:
        s = self.settings
        value = claims.get(s.user_claim) or claims.get("email")
        if not isinstance(value, str) or not value:
            raise OidcError(f"the ID token has no {s.user_claim} claim")
        name, _, domain = value.partition("@")
        # No allowed_domains is refused by the policy check; here it lets nobody in (fail closed).
        if domain.lower() not in {d.lower() for d in s.allowed_domains}:
            raise OidcError("this account is not one of the school's")
        groups = claims.get(s.groups_claim) or []
        return Identity(canonical_user(name), Source.PORTAL, frozenset(str(g).lower() for g in groups if isinstance(g, str)))

    async def _discover(self) -> dict:
        if self._metadata is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(url)
            answer.raise_for_status()
            meta = answer.json()
            if meta.get("issuer") != self.settings.issuer:
                raise OidcError("the provider's metadata names another issuer")
            self._metadata = meta
        return self._metadata

    async def _key(self, kid: str | None) -> rsa.RSAPublicKey:
        if kid not in self._keys:  # unknown key id: the provider may have rotated its keys
            meta = await self._discover()
            async with httpx.AsyncClient(timeout=10) as http:
                answer = await http.get(meta["jwks_uri"])
            answer.raise_for_status()
            self._keys = {
                k.get("kid"): rsa.RSAPublicNumbers(int.from_bytes(unb64url(k["e"]), "big"),
                                                   int.from_bytes(unb64url(k["n"]), "big")).public_key()
                for k in answer.json().get("keys", []) if k.get("kty") == "RSA"
            }
        if kid not in self._keys:
            raise OidcError("the ID token is signed with a key the provider does not publish")
        return self._keys[kid]

    async def _verified_claims(self, token: str) -> dict:
        try:
            head_b64, body_b64, signature_b64 = token.split(".")
            header, claims = json.loads(unb64url(head_b64)), json.loads(unb64url(body_b64))
            signature = unb64url(signature_b64)
        except ValueError as e:
            raise OidcError("the ID token is malformed") from e
        if header.get("alg") != "RS256":
            raise OidcError(f"ID tokens signed with {header.get('alg')!r} are not accepted (RS256 only)")
        key = await self._key(header.get("kid"))
        try:
            key.verify(signature, f"{head_b64}.{body_b64}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as e:
            raise OidcError("the ID token's signature is wrong") from e
        now = self.clock()
        audience = claims.get("aud")
        if claims.get("iss") != self.settings.issuer:
            raise OidcError("the ID token is from another issuer")
        if self.settings.client_id not in (audience if isinstance(audience, list) else [audience]):
            raise OidcError("the ID token is for another application")
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < now - CLOCK_SKEW:
            raise OidcError("the ID token has expired")
        return claims
