"""Who is on the other end of a request: the client's address, through trusted proxies, and
whether it is this machine.

The address is the TCP peer's, unless the peer is one of ``TRIALFLOW_TRUSTED_PROXIES``: then it is
the right-most address of ``X-Forwarded-For`` that is not itself a trusted proxy (the left-most
entries are whatever the client chose to send, so they are never believed).
"""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Headers a proxy adds: a request that carries one came through a proxy, so its peer being
# this machine says nothing about the person who sent it.
_FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


@lru_cache(maxsize=8)
def trusted_networks(spec: str) -> tuple[Network, ...]:
    """``TRIALFLOW_TRUSTED_PROXIES`` (CIDRs or addresses, comma- or space-separated), parsed once."""
    return tuple(ipaddress.ip_network(part, strict=False) for part in spec.replace(",", " ").split())


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:        # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:                      # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: Address | None, networks: tuple[Network, ...]) -> bool:
    return address is not None and any(address in network for network in networks)


def _header_values(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers") or [] if key == name]


def peer(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


def client_address(scope: Mapping[str, Any], proxies: str) -> str:
    """The address the request came from, as text (the peer's when it is not a trusted proxy)."""
    direct = peer(scope)
    networks = trusted_networks(proxies) if proxies else ()
    if not networks or not _trusted(_address(direct), networks):
        return direct
    hops = [hop.strip() for value in _header_values(scope, b"x-forwarded-for") for hop in value.split(",")]
    current = direct
    for hop in reversed([h for h in hops if h]):
        address = _address(hop)
        if address is None:
            break  # not an address: nothing left of it was written by a proxy we trust
        current = str(address)
        if not _trusted(address, networks):
            break
    return current


def is_local(scope: Mapping[str, Any], proxies: str) -> bool:
    """The request was sent from this machine: a loopback client, and not relayed by a proxy
    we were not told to trust (a proxy on this machine would make every visitor look local)."""
    address = _address(client_address(scope, proxies))
    if address is None or not address.is_loopback:
        return False
    direct = _address(peer(scope))
    relayed_by_trusted = bool(proxies) and _trusted(direct, trusted_networks(proxies))
    if relayed_by_trusted:
        return True
    return not any(key in _FORWARDING_HEADERS for key, _ in scope.get("headers") or [])


def is_loopback_host(host: str) -> bool:
    """``trialflow serve --host``: does it listen on this machine only?"""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    address = _address(host)
    return address is not None and address.is_loopback
