"""Single sign-on for domain-joined computers: `Proxy-Authenticate: Negotiate` (SPNEGO/Kerberos).

A browser on a domain-joined Windows machine (or a Mac or Linux machine with a ticket)
answers the gateway's 407 with a Kerberos ticket for the gateway's service principal,
`HTTP/<the proxy host name devices use>@REALM`, without asking the pupil anything.
The gateway checks it with the key in its keytab (exported from Active Directory with
`ktpass`, or from an MIT KDC with `kadmin ktadd`). Basic sign-in stays for everyone else.

Checking a ticket reads the keytab and its replay cache: blocking, so it runs in
ProxyLogin's threads. NTLM (what a browser falls back to off the domain) is refused:
only a complete, one-leg Kerberos exchange signs anyone in.
"""

from __future__ import annotations

import base64
import binascii

import gssapi
from gssapi.raw.misc import GSSError  # the base of every GSSAPI failure (gssapi.exceptions derive from it)

from schoolgate.identities import Identity, Source, canonical_user
from schoolgate.policy import KerberosSettings


class BadTicket(Exception):
    """A Negotiate token that does not prove who the client is."""


class Negotiate:
    def __init__(self, settings: KerberosSettings) -> None:
        self.settings = settings

    def accept(self, header: str) -> Identity:
        """The identity a `Negotiate <token>` header proves; raises BadTicket."""
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "negotiate" or not token:
            raise BadTicket("not a Negotiate header")
        try:
            raw = base64.b64decode(token.strip(), validate=True)
        except binascii.Error as e:
            raise BadTicket("malformed Negotiate token") from e
        if raw.startswith(b"NTLMSSP\0"):
            raise BadTicket("NTLM is not accepted; only Kerberos")
        s = self.settings
        try:
            name = gssapi.Name(s.service, gssapi.NameType.kerberos_principal) if s.service else None
            creds = gssapi.Credentials(name=name, usage="accept", store={"keytab": str(s.keytab)} if s.keytab else None)
            context = gssapi.SecurityContext(creds=creds, usage="accept")
            context.step(raw)
            if not context.complete:  # (python-gssapi raises a failed step's error here)
                raise BadTicket("the exchange needs more than one step (not Kerberos)")
            principal = str(context.initiator_name)
        except GSSError as e:
            raise BadTicket(f"the ticket was refused: {e.gen_message()}") from e
        user = principal.rsplit("@", 1)[0] if s.strip_realm else principal
        return Identity(canonical_user(user), Source.KERBEROS)
