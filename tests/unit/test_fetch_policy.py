"""The rules of gateway.fetch.policy and .addresses, case by case: URL grammar, allow-list,
address rules."""

from __future__ import annotations

import ipaddress

import pytest

from gateway.fetch.addresses import address_refusal, check_addresses
from gateway.fetch.policy import AllowList, Refused, parse_url

ip = ipaddress.ip_address


# --- URL grammar ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, scheme, host, port, path", [
    ("https://cdn.example.com/a/b.jpg", "https", "cdn.example.com", 443, "/a/b.jpg"),
    ("HTTP://CDN.Example.COM./x.png?s=1&t=2#frag", "http", "cdn.example.com", 80, "/x.png?s=1&t=2"),
    ("http://example.com", "http", "example.com", 80, "/"),
    ("http://example.com:8080/x", "http", "example.com", 8080, "/x"),
    ("http://example.com:/x", "http", "example.com", 80, "/x"),
    ("http://1.2.3.4/x", "http", "1.2.3.4", 80, "/x"),
    ("http://[2001:DB8::1]:81/x", "http", "2001:db8::1", 81, "/x"),
    ("https://img_1.xn--bcher-kva.example/%20a.jpg", "https", "img_1.xn--bcher-kva.example", 443,
     "/%20a.jpg"),
    ("http://127.0.0.1.nip.io/x", "http", "127.0.0.1.nip.io", 80, "/x"),  # a name; resolved later
])
def test_urls_parse_to_normalized_targets(url, scheme, host, port, path):
    t = parse_url(url)
    assert (t.scheme, t.host, t.port, t.path) == (scheme, host, port, path)
    assert parse_url(t.url) == t  # the normalized form parses to itself


def test_ip_literal_targets_carry_the_address():
    assert parse_url("http://[::1]/").ip == ip("::1")
    assert parse_url("http://[::1]:8080/").authority == "[::1]:8080"
    assert parse_url("http://10.0.0.1/").ip == ip("10.0.0.1")
    assert parse_url("http://example.com/").ip is None


@pytest.mark.parametrize("url, words", [
    ("", "empty"),
    ("ftp://example.com/x.jpg", "only http and https"),
    ("file:///etc/passwd", "only http and https"),
    ("gopher://127.0.0.1:6379/_INFO", "only http and https"),
    ("data:image/png;base64,AAAA", "only http and https"),
    ("javascript:alert(1)", "only http and https"),
    ("http:/example.com/x", "no host"),
    ("http:example.com", "no host"),
    ("http:///x", "no host"),
    ("http://user:pw@example.com/x", "user information"),
    ("http://example.com@127.0.0.1/x", "user information"),
    ("http://@example.com/x", "user information"),
    ("http://example.com\\@127.0.0.1/", "backslash"),
    ("http://exa mple.com/", "without spaces"),
    ("http://example.com/ a", "without spaces"),
    ("http://example.com/\x00", "printable ASCII"),
    ("http://example.com/\n", "printable ASCII"),
    ("http://bücher.example/", "printable ASCII"),
    ("http://exa%6dple.com/", "percent-encoded"),
    ("http://2130706433/", "non-standard form"),  # 127.0.0.1 in decimal
    ("http://0x7f000001/", "non-standard form"),
    ("http://0x7f.1/", "non-standard form"),
    ("http://0177.0.0.1/", "non-standard form"),  # octal
    ("http://127.1/", "non-standard form"),
    ("http://127.0.0.01/", "non-standard form"),
    ("http://1.2.3.4.5/", "non-standard form"),
    ("http://[::1/", "IPv6"),
    ("http://[fe80::1%25eth0]/", "zone"),
    ("http://[not-v6]/", "IPv6"),
    ("http://[::1]x/", "bad host"),
    ("http://example..com/", "bad host name"),
    ("http://.example.com/", "bad host name"),
    ("http://exa$mple.com/", "bad host name"),
    ("http://" + "a" * 64 + ".com/", "bad host name"),
    ("http://example.com:0/", "bad port"),
    ("http://example.com:65536/", "bad port"),
    ("http://example.com:80:80/", "bad port"),
    ("http://example.com:+80/", "bad port"),
    ("http://example.com/images/../admin", "'..' segments"),
    ("http://example.com/images/%2e%2e/admin", "'..' segments"),
    ("http://example.com/images/%2E%2E%2Fadmin", "'..' segments"),
    ("http://example.com/images/./x", "'..' segments"),
    ("http://example.com/images/..;/admin", "'..' segments"),
    ("http://example.com/images/%2e%2e%5cadmin", "'..' segments"),
    ("http://example.com/" + "a" * 5000, "longer than"),
])
def test_bad_urls_are_refused_with_a_reason(url, words):
    with pytest.raises(Refused) as info:
        parse_url(url)
    assert info.value.outcome == "bad_url"
    assert words in info.value.message, info.value.message


# --- allow-list ----------------------------------------------------------------------------

def _match(spec: str, url: str):
    return AllowList.parse(spec).match(parse_url(url))


@pytest.mark.parametrize("spec, url, explicit", [
    ("cdn.example.com", "https://cdn.example.com/x.jpg", True),
    ("cdn.example.com", "http://CDN.example.com./x.jpg", True),
    ("cdn.example.com:8443", "https://cdn.example.com:8443/x", True),
    ("10.0.0.5", "http://10.0.0.5/x", True),
    ("[fd00::5]:8080", "http://[fd00::5]:8080/x", True),
    ("*.example.com", "https://a.b.example.com/x", False),
    ("*.example.com:8080", "http://a.example.com:8080/x", False),
    ("https://cdn.example.com/images/", "https://cdn.example.com/images/cat.jpg", False),
    ("https://cdn.example.com:443/images/", "https://cdn.example.com/images/cat.jpg", False),
    ("*", "https://anything.example/x", False),
    ("*", "http://8.8.8.8/x", False),
    # Several entries, commas or whitespace; an explicit one wins over a wildcard.
    ("*.example.com, cdn.example.com", "https://cdn.example.com/x", True),
    ("*.example.com\n  cdn.example.com", "https://cdn.example.com/x", True),
])
def test_allowed(spec, url, explicit):
    rule = _match(spec, url)
    assert rule is not None
    assert rule.explicit is explicit


@pytest.mark.parametrize("spec, url", [
    ("cdn.example.com", "https://evil.example.com/x"),
    ("cdn.example.com", "https://cdn.example.com.evil.test/x"),
    ("cdn.example.com", "https://cdn.example.com:8443/x"),  # other ports must be listed
    ("cdn.example.com:8443", "https://cdn.example.com/x"),
    ("*.example.com", "https://example.com/x"),  # the apex is not a subdomain
    ("*.example.com", "https://evilexample.com/x"),
    ("*.example.com", "http://a.example.com:8080/x"),
    ("https://cdn.example.com/images/", "https://cdn.example.com/imagesX/cat.jpg"),
    ("https://cdn.example.com/images/", "http://cdn.example.com/images/cat.jpg"),  # scheme
    ("https://cdn.example.com/images/", "https://cdn.example.com:8443/images/cat.jpg"),
    ("https://cdn.example.com/images/", "https://other.example.com/images/cat.jpg"),
    ("*", "http://example.com:8080/x"),
    ("10.0.0.5", "http://10.0.0.6/x"),
    ("", "https://cdn.example.com/x"),
])
def test_not_allowed(spec, url):
    assert _match(spec, url) is None


def test_refusal_messages_name_the_host_or_the_prefix():
    allow = AllowList.parse("https://cdn.example.com/images/")
    assert allow.refusal(parse_url("https://evil.example/x")).startswith(
        "host not allowed: evil.example")
    assert "not under an allowed prefix" in allow.refusal(
        parse_url("https://cdn.example.com/private/x?sig=1"))


@pytest.mark.parametrize("spec", [
    "ftp://cdn.example.com/", "*.10.0.0.1", "user@cdn.example.com", "cdn.example.com:99999",
    "http://cdn.example.com/../x", "2130706433", "fd00::1", "*.", "exa mple.com/x",
])
def test_bad_entries_fail_at_start_naming_the_entry(spec):
    with pytest.raises(ValueError, match="SIGLIP_IMAGE_URL_ALLOW: bad entry"):
        AllowList.parse(spec)


def test_empty_allow_list_is_off():
    assert not AllowList.parse("")
    assert not AllowList.parse(" , ")
    assert AllowList.parse("cdn.example.com")


# --- addresses -----------------------------------------------------------------------------

PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]

# Refused unless the host is listed by exact name.
NOT_PUBLIC = {
    "127.0.0.1": "loopback", "127.255.255.254": "loopback", "10.1.2.3": "private",
    "172.16.0.1": "private", "172.31.255.255": "private", "192.168.1.1": "private",
    "169.254.1.1": "link-local", "100.64.0.1": "shared address space",
    "192.0.0.8": "reserved", "192.0.2.1": "reserved", "198.51.100.1": "reserved",
    "203.0.113.1": "reserved", "198.18.0.1": "reserved", "240.0.0.1": "reserved",
    "192.88.99.1": "reserved",
    "::1": "loopback", "fe80::1": "link-local", "fc00::1": "private", "fd12:3456::1": "private",
    "2001:db8::1": "reserved", "2001::1": "reserved",  # Teredo
    "100::1": "reserved", "::127.0.0.1": "reserved",  # IPv4-compatible (deprecated)
    "fec0::1": "reserved", "3fff::1": "reserved", "5f00::1": "reserved",
    "64:ff9b:1::1": "reserved",
    # Forms with an IPv4 address inside are judged by it.
    "::ffff:127.0.0.1": "loopback", "::ffff:10.0.0.1": "private",
    "::ffff:169.254.1.1": "link-local", "64:ff9b::7f00:1": "loopback",
    "64:ff9b::a00:1": "private", "2002:7f00:1::1": "loopback", "2002:c0a8:101::1": "private",
}

# Refused even for hosts listed by name.
NEVER = {
    "0.0.0.0": "unspecified", "0.1.2.3": "unspecified", "::": "unspecified",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "ff05::1:3": "multicast", "255.255.255.255": "broadcast",
    "169.254.169.254": "cloud metadata", "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata", "::ffff:169.254.169.254": "cloud metadata",
    "::ffff:0.0.0.0": "unspecified", "64:ff9b::a9fe:a9fe": "cloud metadata",
}


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert address_refusal(ip(address), explicit=False) is None
    assert address_refusal(ip(address), explicit=True) is None


@pytest.mark.parametrize("address", list(NOT_PUBLIC))
def test_non_public_addresses_need_an_explicit_host(address):
    reason = address_refusal(ip(address), explicit=False)
    assert reason is not None and reason.startswith(NOT_PUBLIC[address]), reason
    assert address_refusal(ip(address), explicit=True) is None


@pytest.mark.parametrize("address", list(NEVER))
def test_some_addresses_are_never_allowed(address):
    for explicit in (False, True):
        reason = address_refusal(ip(address), explicit=explicit)
        assert reason is not None and reason.startswith(NEVER[address]), reason


def test_one_forbidden_address_refuses_the_name():
    with pytest.raises(Refused) as info:
        check_addresses("mixed.example", [ip("8.8.8.8"), ip("10.0.0.1")], explicit=False)
    assert info.value.outcome == "forbidden_address"
    assert info.value.message.startswith("mixed.example resolves to 10.0.0.1, which is a private")
    with pytest.raises(Refused) as info:
        check_addresses("127.0.0.1", [ip("127.0.0.1")], explicit=False)
    assert info.value.message.startswith("127.0.0.1 is a loopback address")
    with pytest.raises(Refused) as info:
        check_addresses("meta.example", [ip("169.254.169.254")], explicit=True)
    assert "never fetched" in info.value.message
    with pytest.raises(Refused) as info:
        check_addresses("none.example", [], explicit=False)
    assert info.value.outcome == "resolve_failed"


def test_checked_addresses_are_what_is_connected_to():
    # A mapped address is connected to as the IPv4 address it maps (that is where it goes).
    assert check_addresses("h", [ip("::ffff:8.8.8.8"), ip("2a00:1450::1")], explicit=False) == [
        ip("8.8.8.8"), ip("2a00:1450::1")]
