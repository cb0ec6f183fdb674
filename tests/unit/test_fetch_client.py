"""gateway.fetch.client against local HTTP servers that record what they receive.

Every SSRF case must be refused with its outcome and message, and the refused address must
receive nothing (no connection at all). The allowed path uses a host listed by exact name
(the escape hatch for internal stores): the servers live on loopback addresses, and a
``FakeResolver`` makes test names resolve to them.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
import time
from pathlib import Path

import grpc
import httpcore
import pytest

from gateway.api.errors import status_for
from gateway.core.errors import DeadlineExceeded
from gateway.fetch.client import FetchConfig, PinnedBackend, UrlFetcher
from gateway.fetch.errors import UrlFetchFailed, UrlRefused
from gateway.fetch.policy import AllowList
from gateway.metrics import Metrics
from tests.support import http_servers as hs
from tests.support.http_servers import FakeResolver, RecordingServer

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

KiB, MiB = 1024, 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the fetcher does not decode: any bytes
FIELD = "images[2].url"


def make_fetcher(allow: str, names: dict | None = None, *, max_bytes: int = MiB,
                 max_total_bytes: int = 4 * MiB, timeout_s: float = 5.0,
                 max_redirects: int = 3, **kwargs: object) -> UrlFetcher:
    resolver = kwargs.pop("resolver", None) or FakeResolver(names or {})
    config = FetchConfig(AllowList.parse(allow), max_bytes, max_total_bytes, timeout_s,
                         max_redirects)
    return UrlFetcher(config, metrics=Metrics(), resolver=resolver, **kwargs)  # type: ignore[arg-type]


def outcomes(fetcher: UrlFetcher) -> dict[str, float]:
    registry = fetcher._metrics.registry  # type: ignore[union-attr]
    out = {}
    for metric in registry.collect():
        if metric.name == "siglip_gateway_image_url_fetches":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.value:
                    out[sample.labels["outcome"]] = sample.value
    return out


async def refused(fetcher: UrlFetcher, url: str, **kwargs: object) -> UrlRefused | UrlFetchFailed:
    try:
        with pytest.raises((UrlRefused, UrlFetchFailed)) as info:
            await fetcher.fetch(url, FIELD, **kwargs)  # type: ignore[arg-type]
    finally:
        await fetcher.aclose()
    return info.value


# --- the allowed path ----------------------------------------------------------------------

async def test_allowed_host_is_fetched_with_its_name_in_the_host_header():
    async with RecordingServer(hs.image(PNG)) as server:
        resolver = FakeResolver({"images.test": ["127.0.0.1"]})
        fetcher = make_fetcher(f"images.test:{server.port}", resolver=resolver)
        try:
            data = await fetcher.fetch(server.url("/cat.png?x=1", host="images.test"), FIELD)
            again = await fetcher.fetch(server.url("/cat.png", host="images.test"), FIELD)
        finally:
            await fetcher.aclose()
    assert data == again == PNG
    assert [r.path for r in server.requests] == ["/cat.png?x=1", "/cat.png"]
    head = server.requests[0].headers
    assert head["host"] == f"images.test:{server.port}"
    assert head["accept"] == "image/*" and head["accept-encoding"] == "identity"
    assert "authorization" not in head and "cookie" not in head
    assert server.connections == 1  # pooled: the second fetch reused the connection
    assert resolver.lookups == ["images.test", "images.test"]  # resolved (and checked) each time
    assert outcomes(fetcher) == {"ok": 2}


@pytest.mark.parametrize("content_type", [None, "image/jpeg", "IMAGE/PNG; q=1",
                                          "application/octet-stream"])
async def test_accepted_content_types(content_type):
    async with RecordingServer(hs.image(PNG, content_type)) as server:
        fetcher = make_fetcher(f"127.0.0.1:{server.port}")
        try:
            assert await fetcher.fetch(server.url(), FIELD) == PNG
        finally:
            await fetcher.aclose()


async def test_allowed_redirect_is_followed_and_rechecked():
    async with RecordingServer(hs.image(PNG)) as target, \
            RecordingServer(hs.redirect(lambda: target.url("/final.png", "cdn.test"))) as start:
        resolver = FakeResolver({"start.test": ["127.0.0.1"], "cdn.test": ["127.0.0.1"]})
        fetcher = make_fetcher(f"start.test:{start.port} cdn.test:{target.port}",
                               resolver=resolver)
        try:
            assert await fetcher.fetch(start.url("/a", "start.test"), FIELD) == PNG
        finally:
            await fetcher.aclose()
    assert [r.path for r in target.requests] == ["/final.png"]
    assert resolver.lookups == ["start.test", "cdn.test"]


# --- refused before anything is sent -------------------------------------------------------

async def test_host_not_allowed_is_never_resolved_or_contacted():
    async with RecordingServer(hs.image(PNG)) as server:
        resolver = FakeResolver({"evil.test": ["127.0.0.1"]})
        fetcher = make_fetcher(f"images.test:{server.port}", resolver=resolver)
        error = await refused(fetcher, server.url("/x", "evil.test"))
    assert isinstance(error, UrlRefused) and status_for(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert str(error) == f"{FIELD}: host not allowed: evil.test:{server.port} " \
                         "(SIGLIP_IMAGE_URL_ALLOW)"
    assert error.outcome == "not_allowed" and outcomes(fetcher) == {"not_allowed": 1}
    assert resolver.lookups == [] and server.received_nothing


async def test_name_resolving_to_loopback_is_refused_and_not_contacted():
    async with RecordingServer(hs.image(PNG)) as server:
        # A wildcard (or prefix) allows public addresses only.
        fetcher = make_fetcher(f"*.test:{server.port}",
                               {"evil.test": ["127.0.0.1"]})
        error = await refused(fetcher, server.url("/x", "evil.test"))
    assert error.outcome == "forbidden_address"
    assert str(error).startswith(f"{FIELD}: evil.test resolves to 127.0.0.1, which is a "
                                 "loopback address")
    assert server.received_nothing


async def test_one_private_answer_among_public_ones_refuses_the_name():
    async with RecordingServer(hs.image(PNG)) as server:
        fetcher = make_fetcher(f"*.test:{server.port}",
                               {"mixed.test": ["93.184.216.34", "127.0.0.1"]})
        error = await refused(fetcher, server.url("/x", "mixed.test"))
    assert error.outcome == "forbidden_address" and server.received_nothing


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_loopback_literal_under_an_allowed_prefix_is_refused(host):
    async with RecordingServer(hs.image(PNG)) as server:
        fetcher = make_fetcher(f"http://{host}:{server.port}/images/")
        error = await refused(fetcher, f"http://{host}:{server.port}/images/x.png")
    assert error.outcome == "forbidden_address" and "loopback" in str(error)
    assert server.received_nothing


@pytest.mark.parametrize("url", ["http://2130706433/x", "http://0x7f.1/x", "http://0177.0.0.1/x",
                                 "http://user:pw@images.test/x", "file:///etc/passwd"])
async def test_bad_urls_are_refused_before_resolving(url):
    resolver = FakeResolver({"images.test": ["127.0.0.1"]})
    fetcher = make_fetcher("*", resolver=resolver)
    error = await refused(fetcher, url)
    assert error.outcome == "bad_url" and str(error).startswith(f"{FIELD}: ")
    assert resolver.lookups == []


# --- redirects -----------------------------------------------------------------------------

async def test_redirect_to_a_private_address_is_refused_and_the_target_gets_nothing():
    async with RecordingServer(hs.image(b"secret")) as private:
        locations = {
            # allowed by the prefix entry, but the address is loopback
            "literal": private.url("/latest/meta-data/"),
            # allowed by the wildcard, but the name resolves to loopback
            "name": private.url("/admin", "internal.test"),
            # not in the allow-list at all
            "unlisted": private.url("/admin", "unlisted.other"),
            "scheme": "gopher://127.0.0.1:6379/_FLUSHALL",
            "userinfo": f"http://a:b@internal.test:{private.port}/",
        }
        for case, location in locations.items():
            async with RecordingServer(hs.redirect(location, 301)) as start:
                resolver = FakeResolver({"start.test": ["127.0.0.1"],
                                         "internal.test": ["127.0.0.1"],
                                         "unlisted.other": ["127.0.0.1"]})
                fetcher = make_fetcher(f"start.test:{start.port}, *.test:{private.port}, "
                                       f"http://127.0.0.1:{private.port}/", resolver=resolver)
                error = await refused(fetcher, start.url("/img", "start.test"))
            assert error.outcome == "redirect_refused", (case, error)
            assert str(error).startswith(f"{FIELD}: redirect"), str(error)
            assert isinstance(error, UrlRefused), case
            assert len(start.requests) == 1, case
            assert "unlisted.other" not in resolver.lookups, case
        assert private.received_nothing


async def test_redirect_loop_stops_after_the_limit():
    async with RecordingServer(hs.redirect("/again", 307)) as server:
        fetcher = make_fetcher(f"127.0.0.1:{server.port}", max_redirects=2)
        error = await refused(fetcher, server.url("/start"))
    assert error.outcome == "too_many_redirects" and "more than 2 redirects" in str(error)
    assert [r.path for r in server.requests] == ["/start", "/again", "/again"]


# --- DNS rebinding -------------------------------------------------------------------------

async def test_connection_goes_to_the_checked_address_not_a_second_answer():
    """The name resolves once per fetch; a rebinding DNS server's second answer is never used."""
    async with RecordingServer(hs.image(PNG), host="127.0.0.1") as first, \
            RecordingServer(hs.image(b"rebound"), host="127.0.0.2", port=first.port) as second:
        assert second.port == first.port  # the second answer is the same service elsewhere
        resolver = FakeResolver({"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
        fetcher = make_fetcher(f"rebind.test:{first.port}", resolver=resolver)
        try:
            assert await fetcher.fetch(first.url("/x", "rebind.test"), FIELD) == PNG
        finally:
            await fetcher.aclose()
    assert resolver.lookups == ["rebind.test"]
    assert len(first.requests) == 1 and second.received_nothing


class RecordingMockBackend(httpcore.AsyncMockBackend):
    """Answers every connection with ``buffer``; records where each connection went."""

    def __init__(self, buffer: list[bytes]) -> None:
        super().__init__(buffer)
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host, port, timeout=None, local_address=None,
                          socket_options=None):
        self.connects.append((host, port))
        return await super().connect_tcp(host, port, timeout, local_address, socket_options)


async def test_rebinding_to_loopback_after_a_public_answer():
    """Public first, loopback next: the first fetch connects to the public address (by IP,
    never resolving again); the next fetch sees loopback and is refused without connecting."""
    backend = RecordingMockBackend([b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n"
                                    b"Content-Length: 4\r\n\r\n", b"\x89PNG"])
    resolver = FakeResolver({"cdn.example": [["93.184.216.34"], ["127.0.0.1"]]})
    fetcher = make_fetcher("*.example", resolver=resolver, network_backend=backend)
    try:
        assert await fetcher.fetch("http://cdn.example/a.png", FIELD) == b"\x89PNG"
        with pytest.raises(UrlRefused) as info:
            await fetcher.fetch("http://cdn.example/b.png", FIELD)
    finally:
        await fetcher.aclose()
    assert info.value.outcome == "forbidden_address"
    assert backend.connects == [("93.184.216.34", 80)]
    assert resolver.lookups == ["cdn.example", "cdn.example"]


async def test_the_pool_backend_never_resolves_a_name_itself():
    with pytest.raises(httpcore.ConnectError, match="no checked address"):
        await PinnedBackend().connect_tcp("localhost", 80)


# --- caps: time, bytes, types --------------------------------------------------------------

async def test_slow_drip_body_is_cut_at_the_timeout():
    async with RecordingServer(hs.endless(b"x" * 10, declared=100_000, interval_s=0.05)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", timeout_s=0.5)
        start = time.monotonic()
        error = await refused(fetcher, s.url())
        elapsed = time.monotonic() - start
    assert isinstance(error, UrlFetchFailed) and error.outcome == "timeout"
    assert status_for(error) == grpc.StatusCode.FAILED_PRECONDITION
    assert str(error) == f"{FIELD}: no complete answer within 0.5 s"
    assert 0.45 < elapsed < 2.0, elapsed
    assert s.body_bytes_sent < 1000


async def test_callers_deadline_wins_when_nearer():
    async with RecordingServer(hs.endless(b"x", declared=1000, interval_s=0.05)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", timeout_s=30)
        try:
            with pytest.raises(DeadlineExceeded):
                await fetcher.fetch(s.url(), FIELD, deadline=time.monotonic() + 0.3)
        finally:
            await fetcher.aclose()
    assert outcomes(fetcher) == {"cancelled": 1}


async def test_declared_length_over_the_cap_is_refused_before_reading():
    async with RecordingServer(hs.endless(b"\0" * 64 * KiB, declared=64 * MiB)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", max_bytes=MiB)
        error = await refused(fetcher, s.url())
    assert isinstance(error, UrlRefused) and error.outcome == "too_large"
    assert f"is {64 * MiB} bytes, more than the limit of {MiB}" in str(error)
    assert s.body_bytes_sent < 32 * MiB  # what the socket buffers took before we closed


async def test_undeclared_endless_body_is_cut_at_the_cap():
    async with RecordingServer(hs.endless(b"\0" * 64 * KiB, limit=256 * MiB)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", max_bytes=MiB)
        error = await refused(fetcher, s.url())
        await asyncio.sleep(0.1)
    assert error.outcome == "too_large"
    assert s.body_bytes_sent < 32 * MiB and s.client_went_away


async def test_lying_content_length_reads_only_what_was_declared():
    # Declares 100 bytes, sends 256 MiB: h11 frames the body by the declaration.
    async with RecordingServer(hs.endless(b"\1" * 64 * KiB, declared=100, limit=256 * MiB)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", max_bytes=MiB)
        try:
            data = await fetcher.fetch(s.url(), FIELD)
        finally:
            await fetcher.aclose()
        await asyncio.sleep(0.1)
    assert data == b"\1" * 100
    assert s.body_bytes_sent < 32 * MiB and s.client_went_away


async def test_body_shorter_than_declared_is_a_network_error():
    async def short(request, reply):
        await reply.head(200, {"Content-Length": "1000", "Content-Type": "image/png"})
        await reply.body(b"x" * 10)
        reply.writer.close()
    async with RecordingServer(short) as s:
        error = await refused(make_fetcher(f"127.0.0.1:{s.port}"), s.url())
    assert isinstance(error, UrlFetchFailed) and error.outcome == "network_error"


@pytest.mark.parametrize("content_type, encoding", [
    ("text/html", None), ("application/json", None), ("image/png", "gzip"),
    ("image/png", "br")])
async def test_wrong_content_type_or_encoding_is_refused(content_type, encoding):
    extra = {"Content-Encoding": encoding} if encoding else None
    async with RecordingServer(hs.image(PNG, content_type, extra)) as s:
        error = await refused(make_fetcher(f"127.0.0.1:{s.port}"), s.url())
    assert isinstance(error, UrlRefused) and error.outcome == "bad_content_type"
    assert (encoding or content_type) in str(error)


@pytest.mark.parametrize("code", [404, 403, 500, 503, 204, 206])
async def test_error_status_is_the_remotes_failure(code):
    async with RecordingServer(hs.status(code)) as s:
        error = await refused(make_fetcher(f"127.0.0.1:{s.port}"), s.url())
    assert isinstance(error, UrlFetchFailed) and error.outcome == "bad_status"
    assert str(error) == f"{FIELD}: the remote answered HTTP {code}"


async def test_unresolvable_and_unreachable_hosts_are_the_remotes_failure():
    error = await refused(make_fetcher("nowhere.test"), "http://nowhere.test/x")
    assert isinstance(error, UrlFetchFailed) and error.outcome == "resolve_failed"
    async with RecordingServer(hs.status(200)) as s:
        port = s.port
    error = await refused(make_fetcher(f"127.0.0.1:{port}"), f"http://127.0.0.1:{port}/")
    assert isinstance(error, UrlFetchFailed) and error.outcome == "network_error"
    assert str(error) == f"{FIELD}: could not connect to 127.0.0.1:{port}"


# --- several URLs of one request -----------------------------------------------------------

async def test_urls_of_one_request_share_one_byte_budget():
    async with RecordingServer(hs.image(b"\0" * 600 * KiB)) as s:
        fetcher = make_fetcher(f"127.0.0.1:{s.port}", max_bytes=MiB, max_total_bytes=MiB)
        try:
            with pytest.raises(UrlRefused) as info:
                await fetcher.fetch_all([s.url("/a"), s.url("/b"), s.url("/c")],
                                        ["images[0].url", "images[1].url", "images[2].url"],
                                        None)
        finally:
            await fetcher.aclose()
    assert info.value.outcome == "too_large" and "together" in str(info.value)


async def test_first_failure_cancels_the_other_fetches():
    async with RecordingServer(hs.endless(b"x", declared=10_000, interval_s=0.05)) as slow:
        fetcher = make_fetcher(f"127.0.0.1:{slow.port}", timeout_s=30)
        start = time.monotonic()
        try:
            with pytest.raises(UrlRefused) as info:
                await fetcher.fetch_all([slow.url(), "http://evil.test/x"],
                                        ["images[0].url", "images[1].url"], None)
        finally:
            await fetcher.aclose()
    assert time.monotonic() - start < 2
    assert info.value.field == "images[1].url"
    assert outcomes(fetcher) == {"not_allowed": 1, "cancelled": 1}


# --- TLS: connect to the checked address, verify the certificate for the name --------------

def _tls_files(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA (its PEM) and a server certificate and key for ``names``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, key, issuer, issuer_key, ca, san=None):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fetch-test-ca")])
    ca = cert("fetch-test-ca", ca_key, ca_name, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = cert(names[0], key, ca_name, ca_key, False, [x509.DNSName(n) for n in names])
    pem = serialization.Encoding.PEM
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class TLSServer(RecordingServer):
    ssl_context: ssl.SSLContext | None = None

    async def __aenter__(self) -> TLSServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0,
                                                  ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self


async def _tls_fetch(tmp_path: Path, cert_names: list[str], handler=None,
                     allow_extra: str = "") -> tuple[bytes | Exception, TLSServer]:
    ca, cert, key = _tls_files(tmp_path, cert_names)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server = TLSServer(handler or hs.image(PNG))
    server.ssl_context = server_ctx
    async with server:
        fetcher = make_fetcher(f"images.test:{server.port} {allow_extra}",
                               {"images.test": ["127.0.0.1"]},
                               ssl_context=ssl.create_default_context(cafile=str(ca)))
        try:
            result: bytes | Exception = await fetcher.fetch(
                f"https://images.test:{server.port}/cat.png", FIELD)
        except (UrlRefused, UrlFetchFailed) as exc:
            result = exc
        finally:
            await fetcher.aclose()
    return result, server


async def test_tls_certificate_is_checked_for_the_name_while_connecting_to_the_address(
        tmp_path):
    result, server = await _tls_fetch(tmp_path, ["images.test"])
    assert result == PNG
    assert server.requests[0].headers["host"] == f"images.test:{server.port}"


async def test_tls_certificate_for_another_name_is_refused(tmp_path):
    # Valid for 127.0.0.1's other names, not for the name in the URL.
    result, server = await _tls_fetch(tmp_path, ["other.test", "localhost"])
    assert isinstance(result, UrlFetchFailed) and result.outcome == "network_error"
    assert "TLS certificate" in str(result)
    assert not server.requests  # nothing was sent over it


async def test_redirect_from_https_to_http_is_refused(tmp_path):
    async with RecordingServer(hs.image(b"plain")) as plain:
        location = plain.url("/x", "images.test")
        result, _ = await _tls_fetch(tmp_path, ["images.test"], hs.redirect(location),
                                     allow_extra=f"images.test:{plain.port}")
    assert isinstance(result, UrlRefused) and result.outcome == "redirect_refused"
    assert "https to http" in str(result)
    assert plain.received_nothing

