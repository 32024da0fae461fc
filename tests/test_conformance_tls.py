"""Black-box conformance: a TLS listener (`listener.tls`) with curl and raw TLS sockets."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

import pytest
import trustme
from support.backends import Backends
from support.configs import config_doc
from support.subproc import LbproxyProcess, curl, lbproxy_running

pytestmark = pytest.mark.timeout(60)

H = b"Host: example.test\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def proxy(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LbproxyProcess]:
    tmp = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    backends = Backends(["main"])
    pem = str(tmp / "server.pem")
    doc = config_doc({"main": [backends["main"].address]},
                     listener={"tls": {"cert": pem, "key": pem}})
    try:
        with lbproxy_running(doc, tmp / "lbproxy.toml") as run:
            yield run
    finally:
        backends.close()


def tls_exchange(proxy: LbproxyProcess, ca: trustme.CA, data: bytes) -> bytes:
    """Send `data` over TLS and read until the proxy closes."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    got = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(data)
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ssl.SSLError, ConnectionResetError):
            pass
    return got


def test_https_request_through_curl_is_forwarded_with_proto_https(proxy, ca, tmp_path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out = curl("--cacert", str(ca_file), f"https://127.0.0.1:{proxy.port}/echo/tls")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["target"] == "/echo/tls"
    assert ["x-forwarded-proto", "https"] in doc["headers"]


def test_malformed_request_over_tls_gets_its_400(proxy, ca) -> None:
    got = tls_exchange(proxy, ca, b"GET /echo HTTP/1.1\r\n" + H
                       + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    assert got.startswith(b"HTTP/1.1 400 "), got
    assert b"x-lbproxy-error: bad_request" in got.lower()


def test_keep_alive_over_tls(proxy, ca) -> None:
    got = tls_exchange(proxy, ca, b"GET /echo/1 HTTP/1.1\r\n" + H + b"\r\n"
                       b"GET /echo/2 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
    assert got.count(b"HTTP/1.1 200 ") == 2, got
