"""Where outbound delivery may connect: never to this machine or its private networks, unless allowed.

A destination's address is checked when it is added and again on every attempt, after DNS (a name
that answered a public address yesterday may answer 127.0.0.1 today: rebinding). The attempt then
connects to the very address that was checked, so a second DNS answer cannot slip in between.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from ledger.errors import InvalidRequest

__all__ = ["AddressRefused", "Target", "check_url", "resolve"]


class AddressRefused(InvalidRequest):
    """The destination's address is not one delivery may connect to."""

    code = "address_refused"


class Target:
    """A checked address to connect to, and the URL's own host (for ``Host`` and TLS's SNI)."""

    def __init__(self, url: str, host: str, port: int, address: str) -> None:
        self.url = url
        self.host = host
        self.port = port
        self.address = address


def check_url(url: str) -> tuple[str, str, int]:
    """The URL's scheme, host and port; ``InvalidRequest`` unless it is an absolute http(s) URL."""
    if len(url) > 2048 or not url.isprintable() or " " in url:
        raise InvalidRequest("a destination URL is at most 2048 characters, without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(f"{url!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise InvalidRequest("a destination URL carries no credentials (the messages are signed)")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def resolve(url: str, *, allow_private: bool) -> Target:
    """Resolves the URL's host and checks every address it answers; ``AddressRefused`` if any is
    loopback, link-local, private, multicast or otherwise not global (unless ``allow_private``)."""
    _, host, port = check_url(url)
    try:
        addresses = [str(ipaddress.ip_address(host))]  # an address already: nothing to resolve
    except ValueError:
        try:
            answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise AddressRefused(f"{host} does not resolve: {exc}") from None
        addresses = list(dict.fromkeys(str(a[4][0]) for a in answers))
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    refused = [a for a in addresses if _private(a)]
    if refused and not allow_private:
        raise AddressRefused(
            f"{host} resolves to {refused[0]}, a loopback, link-local or private address "
            "(LEDGER_DELIVERY_ALLOW_PRIVATE=true allows it)"
        )
    return Target(url, host, port, addresses[0])
