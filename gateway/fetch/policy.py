"""What the gateway may fetch for an image given by URL: the pure rules, no I/O.

Owns the URL grammar we accept and the allow-list (``SIGLIP_IMAGE_URL_ALLOW``); the address
rules are in ``gateway.fetch.addresses``. ``gateway.fetch.client`` applies both to every hop
of a fetch. A refusal is a ``Refused`` carrying an outcome from ``OUTCOMES`` (the
metric label) and a message safe to show the caller.

The URL grammar is deliberately narrower than RFC 3986, so that no other parser (the remote
server's, a proxy's) can read a URL differently from us: printable ASCII only, no backslash,
no userinfo, no percent-encoded or non-canonical numeric hosts (``2130706433``, ``0x7f.1``,
``0177.0.0.1``), no ``.``/``..`` path segments (encoded or not).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The values of siglip_gateway_image_url_fetches_total{outcome}; the README lists them.
OUTCOMES = (
    "ok", "bad_url", "not_allowed", "forbidden_address", "redirect_refused",
    "too_many_redirects", "resolve_failed", "network_error", "timeout", "bad_status",
    "bad_content_type", "too_large", "cancelled",
)

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 4096
_URL_CHARS = re.compile(r"[!-\[\]-~]*")  # printable ASCII except space and backslash
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class Refused(Exception):
    """A URL or address the rules refuse; ``outcome`` is one of OUTCOMES."""

    def __init__(self, outcome: str, message: str) -> None:
        assert outcome in OUTCOMES, outcome
        super().__init__(message)
        self.outcome = outcome
        self.message = message


@dataclass(frozen=True)
class Target:
    """One parsed, normalized URL: what is requested and where it may connect."""

    scheme: str
    host: str  # a lowercase name without a trailing dot, or an IP in canonical form
    port: int
    path: str  # path and ?query as sent; never empty
    ip: IPAddress | None = None  # when the host is an IP literal

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, ipaddress.IPv6Address) else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.path}"


def parse_url(url: str) -> Target:
    """The URL as a Target, or Refused("bad_url") saying what is wrong with it."""
    if not url:
        raise Refused("bad_url", "empty URL")
    if len(url) > MAX_URL_CHARS:
        raise Refused("bad_url", f"URL longer than {MAX_URL_CHARS} characters")
    if not _URL_CHARS.fullmatch(url):
        raise Refused("bad_url", "URL must be printable ASCII without spaces or backslashes "
                                 "(percent-encode the rest)")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # e.g. an unbalanced [ ]
        raise Refused("bad_url", f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise Refused("bad_url", "only http and https URLs are fetched")
    if not url[len(parts.scheme) + 1:].startswith("//"):
        raise Refused("bad_url", "URL has no host")
    if "@" in parts.netloc:
        raise Refused("bad_url", "URL must not carry user information (user:password@)")
    host, ip, port = _split_authority(parts.netloc)
    path = parts.path or "/"
    _check_path(path)
    if parts.query or url.split("#", 1)[0].endswith("?"):
        path += "?" + parts.query
    return Target(scheme, host, DEFAULT_PORTS[scheme] if port is None else port, path, ip)


def _split_authority(netloc: str) -> tuple[str, IPAddress | None, int | None]:
    """host (canonical), its IP when it is a literal, and the port when one is given."""
    if netloc.startswith("["):
        end = netloc.find("]")
        literal, rest = netloc[1:end], netloc[end + 1:]
        if end < 0 or "%" in literal:
            raise Refused("bad_url", "bad IPv6 address in URL (zone ids are not accepted)")
        try:
            ip: IPAddress | None = ipaddress.IPv6Address(literal)
        except ValueError:
            raise Refused("bad_url", "bad IPv6 address in URL") from None
        if rest and not rest.startswith(":"):
            raise Refused("bad_url", "bad host in URL")
        host = str(ip)
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = netloc.partition(":")
        port_text = port_text_ if colon else None
        host = host.lower()
        host = host[:-1] if host.endswith(".") else host
        if not host:
            raise Refused("bad_url", "URL has no host")
        if "%" in host:
            raise Refused("bad_url", "percent-encoded host names are not accepted")
        if len(host) > 253 or not _NAME.fullmatch(host) or any(
                len(label) > 63 for label in host.split(".")):
            raise Refused("bad_url", "bad host name in URL (ASCII letters, digits, '-', '_' and "
                                     "dots; IDNs in their xn-- form)")
        ip = None
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            # A name ending in a number is an IPv4 address to every resolver (inet_aton takes
            # 2130706433, 0x7f.1, 0177.0.0.1): only the canonical dotted quad is accepted.
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                raise Refused("bad_url", "host looks like an IPv4 address in a non-standard "
                                         "form; write it as a dotted quad") from None
            host = str(ip)
    port = None
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise Refused("bad_url", "bad port in URL")
        port = int(port_text)
    return host, ip, port


def _check_path(path: str) -> None:
    # Servers resolve dot segments (some decode %2e and %2f first, some drop ";params" as in
    # "..;"), which would walk out of an allow-listed path prefix: refuse them in every form.
    decoded = urllib.parse.unquote(path.split("?", 1)[0])
    if any(segment.split(";", 1)[0] in (".", "..")
           for segment in re.split(r"[/\\]", decoded)):
        raise Refused("bad_url", "URL path must not contain '.' or '..' segments")


@dataclass(frozen=True)
class Rule:
    """One allow-list entry. ``kind``: any (``*``), wildcard (``*.example.com``), host
    (``images.internal``, ``10.0.0.5:8080``), prefix (``https://cdn.example.com/img/``)."""

    kind: str
    host: str = ""
    port: int | None = None  # None: the scheme's default port only
    scheme: str = ""
    path: str = ""

    @property
    def explicit(self) -> bool:
        """Listed by its exact name: may reach addresses that are not public."""
        return self.kind == "host"

    def matches(self, t: Target) -> bool:
        port_ok = t.port == (DEFAULT_PORTS[t.scheme] if self.port is None else self.port)
        if self.kind == "any":
            return port_ok
        if self.kind == "wildcard":
            return port_ok and t.ip is None and t.host.endswith("." + self.host)
        if self.kind == "host":
            return port_ok and t.host == self.host
        return (t.scheme, t.host, t.port) == (self.scheme, self.host, self.port) and \
            t.path.startswith(self.path)


@dataclass(frozen=True)
class AllowList:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> AllowList:
        """Entries separated by commas or whitespace; ValueError names a bad one."""
        rules = []
        for entry in re.split(r"[,\s]+", spec.strip()):
            if entry:
                try:
                    rules.append(_parse_rule(entry))
                except Refused as exc:
                    raise ValueError(
                        f"SIGLIP_IMAGE_URL_ALLOW: bad entry {entry!r}: {exc.message}") from None
        return cls(tuple(rules))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, target: Target) -> Rule | None:
        """The rule that allows ``target`` (an explicit one first), or None."""
        matching = [r for r in self.rules if r.matches(target)]
        return next((r for r in matching if r.explicit), matching[0] if matching else None)


    def refusal(self, target: Target) -> str:
        """Why no rule matches ``target``, for the caller."""
        if any(r.kind == "prefix" and r.host == target.host for r in self.rules):
            return (f"URL not allowed: {target.authority}{target.path.split('?', 1)[0]} is "
                    "not under an allowed prefix (SIGLIP_IMAGE_URL_ALLOW)")
        return f"host not allowed: {target.authority} (SIGLIP_IMAGE_URL_ALLOW)"


def _parse_rule(entry: str) -> Rule:
    if entry == "*":
        return Rule("any")
    if "://" in entry:
        t = parse_url(entry)
        return Rule("prefix", t.host, t.port, t.scheme, t.path)
    wildcard = entry.startswith("*.")
    host, ip, port = _split_authority(entry[2:] if wildcard else entry)
    if wildcard and ip is not None:
        raise Refused("bad_url", "a wildcard needs a domain name, not an IP address")
    return Rule("wildcard" if wildcard else "host", host, port)
