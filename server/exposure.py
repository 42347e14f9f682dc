"""Who may call alexnet-serve, and how: the exposure policy (README, "Security").

Loopback by default.  A host beyond loopback needs a bearer token and TLS, or ``--insecure``,
which is then warned about at every start; ``--front none`` (Triton's own ports, for measuring)
only on loopback, without either.  Secrets come from files or the environment, never from the
command line; Triton's admin key is random per start unless a file names one.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from dataclasses import dataclass

from alexnet_server.contract import security
from alexnet_server.server import front
from alexnet_server.server.triton import ServeError

ADMIN_KEY_FILE_ENV = "ALEXNET_ADMIN_KEY_FILE"


@dataclass(frozen=True)
class Exposure:
    """What the front asks of callers, and Triton's admin key (README, "Security")."""

    token: str | None
    tls: front.Tls | None
    admin_key: str
    warnings: tuple[str, ...] = ()


_ADMIN_KEY = re.compile(r"^[A-Za-z0-9_-]{16,}$")  # it goes into Triton's flag syntax (',', ':' and '=' are separators)


def exposure(args: argparse.Namespace) -> Exposure:
    """Credentials from files and the environment; a host beyond loopback without them is refused
    unless ``--insecure`` says so, and then warned about."""
    try:
        token = security.token_from(args.token_file)
        admin_file = args.admin_key_file or os.environ.get(ADMIN_KEY_FILE_ENV)
        admin_key = security.read_secret(admin_file, "admin key") if admin_file else secrets.token_urlsafe(32)
    except security.CredentialError as exc:
        raise ServeError(str(exc)) from None
    if not _ADMIN_KEY.match(admin_key):
        raise ServeError(f"the admin key from {admin_file} is not usable: it needs 16 or more of A-Z a-z 0-9 _ -")
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ServeError("TLS needs both --tls-cert and --tls-key")
        for path in (args.tls_cert, args.tls_key, args.tls_client_ca):
            if path is not None and not path.is_file():
                raise ServeError(f"{path} does not exist")
        tls = front.Tls(args.tls_cert.resolve(), args.tls_key.resolve(), args.tls_client_ca.resolve() if args.tls_client_ca else None)
    elif args.tls_client_ca:
        raise ServeError("--tls-client-ca needs --tls-cert and --tls-key")
    warnings: list[str] = []
    if args.front == "none":
        if not front.is_loopback(args.host) or token or tls:
            raise ServeError("--front none serves Triton's own ports on a loopback --host, without token or TLS; "
                             "a token, TLS or another host need the nginx front")  # fmt: skip
        warnings.append("--front none: clients reach Triton 2.51's own ports on loopback (no body cap, no routing); for measuring, not for exposing")
    elif not front.is_loopback(args.host):
        missing = [what for what, present in (("a bearer token (--token-file or $ALEXNET_TOKEN_FILE)", token), ("TLS (--tls-cert and --tls-key)", tls)) if not present]  # fmt: skip
        if missing and not args.insecure:
            raise ServeError(f"--host {args.host} is reachable from other machines: it needs {' and '.join(missing)}, "
                             f"or --insecure to serve without (anyone who reaches the port may then use the model{'' if tls else ', in clear text'})")  # fmt: skip
        if missing:
            warnings.append(f"--insecure: serving on {args.host} WITHOUT {' and '.join(missing)}: anyone who can reach these ports can use the model")
    return Exposure(token, tls, admin_key, tuple(warnings))
