"""Bearer-token authentication and the rule about which addresses need a token."""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path
from typing import Optional

from ..errors import InputError
from .errors import AuthenticationError

BEARER_PREFIX = "bearer "
# A token shorter than this is too easy to guess for a server on a network.
MIN_TOKEN_CHARS = 16


def read_token_file(path: str | Path) -> str:
    """Read the bearer token from the first line of a file.

    Raises:
        InputError: the file is missing, unreadable, empty or contains a short token.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"token file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read token file {path}: {error}") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(
            f"the token in {path} has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, "
            "for example: python -c \"import secrets; print(secrets.token_urlsafe(32))\" > TOKEN_FILE"
        )
    return token


def is_loopback_host(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def check_bearer_token(authorization: Optional[str], token: Optional[str]) -> None:
    """Check an ``Authorization`` header against the server's token (no check when ``token`` is None).

    Raises:
        AuthenticationError: the header is missing, not a bearer token, or the wrong token.
    """
    if token is None:
        return
    if not authorization:
        raise AuthenticationError("missing Authorization header: send 'Authorization: Bearer <token>'")
    if not authorization.lower().startswith(BEARER_PREFIX):
        raise AuthenticationError("the Authorization header must use the Bearer scheme: 'Bearer <token>'")
    offered = authorization[len(BEARER_PREFIX):].strip()
    if not hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8")):
        raise AuthenticationError("invalid token: check the token file shared by the server's administrator")
