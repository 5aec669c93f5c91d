"""Who is calling: the principal a job belongs to, from the caller's bearer token or certificate.

Each entry of `auth_tokens` (and each line of `auth_tokens_file`) is either `name:token`, which
makes `name` the principal of `token`, or a bare token, which is its own principal, named
`token-` plus the first 12 hex digits of its SHA-256 (so that logs never carry a token). A name is
1-64 characters of letters, digits and `._@-`, starting with a letter or digit; an entry whose
part before the first `:` is not such a name is a bare token.

Without tokens, a caller that presented a client certificate (mutual TLS) is the principal
`cn:<the certificate's subject common name>`; any other caller is `anonymous`. With tokens, the
token decides, and a request without a valid one never reaches a handler (the auth interceptor
refuses it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

ANONYMOUS = "anonymous"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Credential:
    """A bearer token and the principal it stands for."""

    principal: str
    token: bytes


def parse_entry(entry: str) -> Credential:
    """`name:token` or a bare token, as the settings hold them."""
    name, sep, token = entry.partition(":")
    if sep and token and _NAME.match(name):
        return Credential(name, token.encode())
    digest = hashlib.sha256(entry.encode()).hexdigest()[:12]
    return Credential(f"token-{digest}", entry.encode())


class Principals:
    """The accepted tokens and who each belongs to; tells a call's principal."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.credentials = tuple(parse_entry(entry) for entry in entries)
        names = [c.principal for c in self.credentials]
        duplicate = next((n for n in names if names.count(n) > 1 and not n.startswith("token-")), None)
        if duplicate is not None:
            raise ValueError(f"auth_tokens: the principal {duplicate!r} is given more than one token")

    @property
    def required(self) -> bool:
        """Whether calls must present a token."""
        return bool(self.credentials)

    def by_token(self, metadata: Sequence[Any] | None) -> str | None:
        """The principal of the bearer token in `metadata`; None when there is no valid one.

        Every token is compared, in constant time, so that the time taken does not tell which one
        nearly matched.
        """
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if not isinstance(header, str) or not header.startswith("Bearer "):
            return None
        presented = header.removeprefix("Bearer ").strip().encode()
        matches = [hmac.compare_digest(presented, c.token) for c in self.credentials]
        return next((c.principal for c, hit in zip(self.credentials, matches, strict=True) if hit), None)

    def of(self, context: grpc.ServicerContext) -> str:
        """The principal of a call that the auth interceptor let through."""
        if self.required:
            principal = self.by_token(context.invocation_metadata())
            if principal is None:  # the interceptor refuses these; never run as someone else
                raise PermissionError("a call without a valid token reached a handler")
            return principal
        auth: Mapping[str, Any] = context.auth_context() or {}  # values are lists of bytes
        common_names = auth.get("x509_common_name") or ()
        if common_names:
            return f"cn:{bytes(common_names[0]).decode(errors='replace')}"
        return ANONYMOUS
