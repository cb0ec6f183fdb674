"""Which IP addresses an image fetch may connect to: the address rules of gateway.fetch.

Pure: tables from the IANA special-purpose registries and the functions that judge one
address. ``explicit`` means the host was listed by its exact name in SIGLIP_IMAGE_URL_ALLOW,
which allows addresses that are not public (an internal image store), never the ones that
are always refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gateway.fetch.policy import IPAddress, Refused

_net = ipaddress.ip_network

# Never connected to, whoever lists them: they are not destinations (unspecified, multicast,
# broadcast) or are the cloud metadata services, the classic SSRF prize.
_ALWAYS_REFUSED: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("169.254.169.254/32"), "cloud metadata"),
    (_net("169.254.170.2/32"), "cloud metadata"),
    (_net("100.100.100.200/32"), "cloud metadata"),
    (_net("192.0.0.192/32"), "cloud metadata"),
    (_net("::/128"), "unspecified"),
    (_net("ff00::/8"), "multicast"),
    (_net("fd00:ec2::254/128"), "cloud metadata"),
)

# Not globally reachable (IANA special-purpose registries): refused unless the host is listed
# by name. IPv6 outside 2000::/3 is refused as reserved, below.
_ALWAYS_REASONS = frozenset(reason for _, reason in _ALWAYS_REFUSED)

_NOT_GLOBAL: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_net("10.0.0.0/8"), "private"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.168.0.0/16"), "private"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local"),
    (_net("100.64.0.0/10"), "shared address space"),
    (_net("192.0.0.0/24"), "reserved"),
    (_net("192.0.2.0/24"), "reserved"),
    (_net("198.51.100.0/24"), "reserved"),
    (_net("203.0.113.0/24"), "reserved"),
    (_net("198.18.0.0/15"), "reserved"),
    (_net("192.88.99.0/24"), "reserved"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("::1/128"), "loopback"),
    (_net("fe80::/10"), "link-local"),
    (_net("fc00::/7"), "private"),
    (_net("2001::/23"), "reserved"),
    (_net("2001:db8::/32"), "reserved"),
    (_net("3fff::/20"), "reserved"),
    (_net("5f00::/16"), "reserved"),
)
_GLOBAL_UNICAST_V6 = _net("2000::/3")
_NAT64 = _net("64:ff9b::/96")
_SIX_TO_FOUR = _net("2002::/16")


def unmapped(ip: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``); the
    connection goes there, so that is the address to judge and to connect to."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_refusal(ip: IPAddress, *, explicit: bool) -> str | None:
    """Why a connection to ``ip`` is refused (e.g. "loopback"), or None when it is allowed.

    ``explicit``: the host was listed by its exact name, which allows addresses that are not
    public (an internal image store); never the always-refused ones.
    """
    ip = unmapped(ip)
    embedded = _embedded_ipv4(ip)
    if embedded is not None:  # NAT64 and 6to4 reach the IPv4 address inside
        reason = address_refusal(embedded, explicit=explicit)
        return None if reason is None else f"{reason}, embedded in {ip}"
    for network, reason in _ALWAYS_REFUSED:
        if ip.version == network.version and ip in network:
            return reason
    if explicit:
        return None
    for network, reason in _NOT_GLOBAL:
        if ip.version == network.version and ip in network:
            return reason
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST_V6:
        return "reserved"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ip.sixtofour
    return None


def check_addresses(host: str, addresses: Iterable[IPAddress], *, explicit: bool,
                    outcome: str = "forbidden_address") -> list[IPAddress]:
    """All of ``addresses`` must be allowed (a name with any forbidden address is refused, so
    a resolver cannot mix one in); returns them as they are to be connected to."""
    checked = []
    for ip in addresses:
        reason = address_refusal(ip, explicit=explicit)
        if reason is not None:
            shown = host if host == str(ip) else f"{host} resolves to {ip}, which"
            article = "an" if reason[0] in "aeiou" else "a"
            why = ("never fetched" if reason.split(",")[0] in _ALWAYS_REASONS else
                   "only hosts listed by exact name in SIGLIP_IMAGE_URL_ALLOW may reach it")
            raise Refused(outcome, f"{shown} is {article} {reason} address; {why}")
        checked.append(unmapped(ip))
    if not checked:
        raise Refused("resolve_failed", f"{host} has no address")
    return checked
