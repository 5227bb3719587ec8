"""Where a webhook may send: public addresses only, unless the operator allows more (WEBHOOK_ALLOWED_HOSTS).

A user names the URL, and the worker sends from inside our network: without these checks a webhook
could reach the service's own PostgreSQL, Redis, admin ports or a cloud's metadata endpoint (SSRF).
The host is resolved and every address it resolves to checked, at registration and again at each
delivery; the delivery then connects to an address that was checked (service.core.webhooks pins it),
so a DNS answer that changes between the check and the connection (DNS rebinding) changes nothing.
Each redirect is checked the same way.
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import SplitResult, urlsplit

from service.core.errors import DomainError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

RESOLVE_TIMEOUT = 2.0  # seconds for a host name to resolve
SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Cloud metadata endpoints (AWS, GCP, Azure, OpenStack: 169.254.169.254; AWS over IPv6; Alibaba; Oracle).
METADATA = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class UnsafeTarget(DomainError):
    """A URL a webhook may not be sent to: its scheme, its credentials, or where its host leads."""

    message = "This URL may not receive webhooks"


class Unresolvable(UnsafeTarget):
    """The host does not resolve (now): at delivery, a failure worth another try."""


class Target(NamedTuple):
    """A checked URL's parts: where to connect (a checked address) and what to call the host."""

    url: SplitResult
    host: str  # as in the URL, lower-case, without brackets
    port: int
    addresses: tuple[Address, ...]  # every address the host resolved to, each allowed


def _embedded_ipv4(address: Address) -> Address:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def refusal(address: Address) -> str | None:
    """Why a webhook may not reach this address (None: it is public)."""
    address = _embedded_ipv4(address)
    checks = (
        (address in METADATA, "a cloud metadata address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


@dataclass(frozen=True)
class Policy:
    """What the operator allows beyond public addresses: host names (whatever they resolve to) and networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """From WEBHOOK_ALLOWED_HOSTS: "127.0.0.1, 10.0.0.0/8, ::1, hooks.intranet"."""
        hosts, networks = set(), []
        for entry in (part.strip().lower() for part in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, address: Address) -> bool:
        return any(address in network for network in self.networks) or (
            _embedded_ipv4(address) != address and self.allows(_embedded_ipv4(address))
        )


def parse_url(url: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, its host and port; refused unless it is http(s), with a host and no credentials."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").rstrip(".")
    except ValueError as error:
        raise UnsafeTarget(f"Not a valid URL: {error}") from None
    if parts.scheme not in SCHEMES:
        raise UnsafeTarget("Only http and https URLs may receive webhooks")
    if parts.username is not None or parts.password is not None:
        raise UnsafeTarget("A webhook URL may not contain credentials (user:password@); use the signature instead")
    if not host:
        raise UnsafeTarget("The URL has no host")
    return parts, host, port or DEFAULT_PORTS[parts.scheme]


async def _resolve(host: str, port: int) -> tuple[Address, ...]:
    try:
        return (ipaddress.ip_address(host),)
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise Unresolvable(f"The host {host} does not resolve") from None
    addresses = dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in found)  # in order, once each
    if not addresses:
        raise Unresolvable(f"The host {host} does not resolve")
    return tuple(addresses)


async def check(url: str, policy: Policy) -> Target:
    """The URL, resolved, if a webhook may go there; UnsafeTarget (with the reason) if not."""
    parts, host, port = parse_url(url)
    addresses = await _resolve(host, port)
    if host not in policy.hosts:
        for address in addresses:
            reason = refusal(address)
            if reason is not None and not policy.allows(address):
                shown = host if str(address) == host else f"{host} resolves to {address}, which"
                raise UnsafeTarget(
                    f"{shown} is {reason}: webhooks may only be sent to public addresses"
                    " (an operator may allow others with WEBHOOK_ALLOWED_HOSTS)"
                )
    return Target(parts, host, port, addresses)
