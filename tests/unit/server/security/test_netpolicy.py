"""The outbound address policy: which resolved addresses may be connected to, and that sessions obey it."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from server.errors import BlockedAddressError, ConfigError
from server.security import netpolicy
from server.security.netpolicy import (
    AddressPolicy,
    check_addresses,
    check_url,
    parse_networks,
    refusal_reason,
)
from server.settings import load_settings

STRICT = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("240.0.0.1", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 around 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("192.0.2.1", "address"),  # TEST-NET-1: documentation, not routable
    ],
)
def test_non_public_addresses_are_refused(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address), STRICT)
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address), STRICT) is None


def test_an_allowlisted_network_opens_only_itself() -> None:
    policy = AddressPolicy(parse_networks("127.0.0.0/8, 10.0.0.0/8"))
    assert refusal_reason(ipaddress.ip_address("127.0.0.1"), policy) is None
    assert refusal_reason(ipaddress.ip_address("10.9.9.9"), policy) is None
    assert refusal_reason(ipaddress.ip_address("192.168.0.1"), policy) is not None
    assert refusal_reason(ipaddress.ip_address("::1"), policy) is not None


def test_metadata_needs_the_exact_address_not_a_covering_range() -> None:
    metadata = ipaddress.ip_address("169.254.169.254")
    assert refusal_reason(metadata, AddressPolicy(parse_networks("169.254.0.0/16"))) is not None
    assert (
        refusal_reason(ipaddress.ip_address("169.254.1.1"), AddressPolicy(parse_networks("169.254.0.0/16")))
        is None
    )
    assert refusal_reason(metadata, AddressPolicy(parse_networks("169.254.169.254"))) is None


def test_one_refused_address_refuses_the_host() -> None:
    check_addresses("example.test", ["93.184.216.34"], STRICT)
    with pytest.raises(
        BlockedAddressError, match=r"example.test.*10\.0\.0\.1.*private.*OUTBOUND_ALLOW_CIDRS"
    ):
        check_addresses("example.test", ["93.184.216.34", "10.0.0.1"], STRICT)
    with pytest.raises(BlockedAddressError, match="did not resolve"):
        check_addresses("example.test", [], STRICT)


def test_bad_allowlist_entry_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'ten' is not an address or CIDR"):
        parse_networks("127.0.0.0/8,ten")
    settings = load_settings({}, data_dir=str(tmp_path), outbound_allow_cidrs="ten")
    with pytest.raises(ConfigError, match="DARKROOM_OUTBOUND_ALLOW_CIDRS: 'ten'"):
        AddressPolicy.from_settings(settings)


def test_refusals_name_the_policys_setting() -> None:
    with pytest.raises(BlockedAddressError, match="DARKROOM_WEBHOOK_ALLOW_CIDRS"):
        check_addresses("h", ["10.0.0.1"], AddressPolicy(setting="DARKROOM_WEBHOOK_ALLOW_CIDRS"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/a.png", "Only https://"),
        ("file:///etc/passwd", "Only https://"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
    ],
)
def test_check_url_refuses_schemes_and_literal_addresses(url: str, message: str) -> None:
    with pytest.raises(BlockedAddressError, match=message):
        check_url(URL(url), STRICT)


def test_check_url_leaves_names_to_the_resolver() -> None:
    check_url(URL("https://localhost/x"), STRICT)  # refused at resolution, not here
    check_url(URL("http://example.com/"), STRICT, schemes=("http", "https"))


async def test_resolver_refuses_a_name_that_resolves_to_loopback() -> None:
    resolver = netpolicy.PolicyResolver(STRICT)
    with pytest.raises(BlockedAddressError, match="localhost.*loopback"):
        await resolver.resolve("localhost", 443)
    allowed = netpolicy.PolicyResolver(AddressPolicy(parse_networks("127.0.0.0/8,::1")))
    results = await allowed.resolve("localhost", 443)
    assert results and all(ipaddress.ip_address(r["host"]).is_loopback for r in results)
    assert all(r["hostname"] == "localhost" and r["port"] == 443 for r in results)


def test_plain_sessions_are_rejected_as_misuse() -> None:
    async def check() -> None:
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(TypeError, match="guarded_session"):
                netpolicy.require_guarded(plain)
        async with netpolicy.guarded_session(STRICT) as guarded:
            netpolicy.require_guarded(guarded)

    asyncio.run(check())


@pytest_asyncio.fixture
async def server_on_127_0_0_2() -> AsyncIterator[TestServer]:
    """A loopback HTTP server bound to 127.0.0.2 only (so 127.0.0.1 reaches nothing)."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    async with TestServer(app, host="127.0.0.2") as server:
        yield server


async def test_guarded_session_refuses_literal_loopback(server_on_127_0_0_2: TestServer) -> None:
    async with netpolicy.guarded_session(STRICT) as session:
        with pytest.raises(BlockedAddressError, match="loopback"):
            await session.get(f"http://127.0.0.2:{server_on_127_0_0_2.port}/")


async def test_each_connection_uses_the_addresses_that_were_checked(
    server_on_127_0_0_2: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer is allowed, the second (rebound) one is refused, not connected to."""
    answers = iter(["127.0.0.2", "127.0.0.1"])
    calls: list[str] = []
    loop = asyncio.get_running_loop()

    async def fake_getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        calls.append(host)
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(loop, "getaddrinfo", fake_getaddrinfo)
    policy = AddressPolicy(parse_networks("127.0.0.2/32"))
    url = f"http://rebind.test:{server_on_127_0_0_2.port}/"
    async with netpolicy.guarded_session(policy, connector_owner=True) as session:
        async with session.get(url, headers={"Connection": "close"}) as response:
            assert await response.text() == "hello"
        with pytest.raises(BlockedAddressError, match=r"rebind.test.*127\.0\.0\.1"):
            await session.get(url)
    assert calls == ["rebind.test", "rebind.test"]
