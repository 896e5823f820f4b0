"""Outbound address policy: which addresses the server may connect to when it fetches a URL a client gave.

Refused unless allowed by ``outbound_allow_cidrs``: loopback, private, link-local, CGNAT (100.64/10),
multicast, unspecified, reserved and every other non-global range, and cloud metadata addresses (these
only when the allowlist names the exact address, not just a range that contains it). A host is resolved
once by ``PolicyResolver``; aiohttp connects to exactly the addresses it returns, so a second DNS answer
(rebinding) never reaches a socket. If any resolved address is refused, the whole host is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from server.errors import BlockedAddressError, ConfigError
from server.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS task metadata, Alibaba).
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Some addresses Python's ipaddress calls global are not reachable unicast destinations.
_ALSO_BLOCKED: tuple[IPNetwork, ...] = (_CGNAT, ipaddress.ip_network("64:ff9b:1::/48"))

_guarded_sessions: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()


@dataclass(frozen=True)
class AddressPolicy:
    """Networks that may be reached despite being non-global (e.g. 127.0.0.0/8 in tests), and the
    setting that lists them (named in refusals)."""

    allowed: tuple[IPNetwork, ...] = ()
    setting: str = "DARKROOM_OUTBOUND_ALLOW_CIDRS"

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        """The policy that ``outbound_allow_cidrs`` describes (input fetches)."""
        try:
            return cls(parse_networks(settings.outbound_allow_cidrs))
        except ConfigError as e:
            raise ConfigError(f"DARKROOM_OUTBOUND_ALLOW_CIDRS: {e}") from e


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Comma-separated CIDRs (or bare addresses) into networks; a bad entry is a ConfigError naming it."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as e:
            raise ConfigError(f"{item!r} is not an address or CIDR (e.g. 10.0.0.0/8)") from e
    return tuple(networks)


def refusal_reason(address: IPAddress, policy: AddressPolicy) -> str | None:
    """Why ``address`` may not be connected to, or None when it may."""
    if address in METADATA_ADDRESSES:
        named = any(net.num_addresses == 1 and address in net for net in policy.allowed)
        return None if named else "a cloud metadata address"
    if any(address.version == net.version and address in net for net in policy.allowed):
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refusal_reason(embedded, policy)
        return f"{reason} (embedded in {address})" if reason else None
    return _category(address)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _category(address: IPAddress) -> str | None:
    checks = (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        (
            "a shared (CGNAT) address",
            any(address in n for n in _ALSO_BLOCKED if n.version == address.version),
        ),
        ("a reserved address", address.is_reserved),
        ("a private address", address.is_private),
        ("not a globally routable address", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def check_addresses(host: str, addresses: Iterable[str], policy: AddressPolicy) -> None:
    """Raise BlockedAddressError if ``host`` resolved to no address or to any refused one."""
    found = list(addresses)
    if not found:
        raise BlockedAddressError(f"{host} did not resolve to any address")
    for text in found:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        reason = refusal_reason(address, policy)
        if reason:
            raise BlockedAddressError(
                f"Refusing to connect to {host}: it resolves to {address}, {reason}. "
                f"Use a public URL, or allow the network with {policy.setting}."
            )


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally ("[::1]" and "127.0.0.1" forms), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def check_url(url: URL, policy: AddressPolicy, *, schemes: Sequence[str] = ("https",)) -> None:
    """Refuse a URL whose scheme is not allowed or whose host is a refused literal address.

    Host names are checked when they are resolved (``PolicyResolver``), not here.
    """
    if url.scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise BlockedAddressError(f"Only {allowed} URLs are accepted, got {url.scheme or 'no'} scheme: {url}")
    host = url.raw_host
    if not host:
        raise BlockedAddressError(f"URL has no host: {url}")
    if literal_address(host) is not None:
        check_addresses(host, [host.strip("[]")], policy)


class PolicyResolver(AbstractResolver):
    """Resolves once with the system resolver and hands aiohttp only addresses the policy allows."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        check_addresses(host, [str(info[4][0]) for info in infos], self.policy)
        results: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(sockaddr[0]),
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return results

    async def close(self) -> None:
        return None


def guarded_session(policy: AddressPolicy, **kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession whose every connection (redirect hops included) obeys ``policy``.

    Host names go through PolicyResolver; literal IP hosts, which aiohttp never resolves, are checked
    as each request starts. No proxies from the environment (they would connect on our behalf).
    """
    trace = aiohttp.TraceConfig()

    async def on_request_start(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        check_url(params.url, policy, schemes=("http", "https"))

    trace.on_request_start.append(on_request_start)
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy), use_dns_cache=False)
    session = aiohttp.ClientSession(connector=connector, trace_configs=[trace], trust_env=False, **kwargs)
    _guarded_sessions.add(session)
    return session


def require_guarded(session: aiohttp.ClientSession) -> None:
    """Misuse check: outbound fetches of client-supplied URLs must use a ``guarded_session``."""
    if session not in _guarded_sessions:
        raise TypeError(
            "expected a session from netpolicy.guarded_session(); got a plain aiohttp.ClientSession, "
            "which would connect to any address"
        )
