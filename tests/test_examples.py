"""examples/*.toml pass `lbproxy check` as shipped (tls.toml with real PEM files in place)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trustme
from support.subproc import LBPROXY

EXAMPLES = Path(__file__).parent.parent / "examples"
TLS_PATHS = {"cert": "/etc/lbproxy/tls/fullchain.pem", "key": "/etc/lbproxy/tls/privkey.pem"}


def check(path: Path) -> subprocess.CompletedProcess[str]:
    """`lbproxy check --config PATH` as a subprocess."""
    return subprocess.run([LBPROXY, "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_the_three_examples_are_there():
    assert {p.name for p in EXAMPLES.glob("*.toml")} >= {"edge.toml", "sidecar.toml",
                                                          "tls.toml"}


@pytest.mark.parametrize("name", ["edge.toml", "sidecar.toml"])
def test_example_passes_lbproxy_check(name):
    out = check(EXAMPLES / name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(": ok")


def test_tls_example_passes_lbproxy_check_with_its_pem_files_in_place(tmp_path):
    # The example names system paths; only those two strings are swapped for files
    # trustme issued, so the rest of the file is checked exactly as shipped.
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    files = {"cert": tmp_path / "fullchain.pem", "key": tmp_path / "privkey.pem"}
    files["cert"].write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files["key"]))
    text = (EXAMPLES / "tls.toml").read_text()
    for name, shipped in TLS_PATHS.items():
        assert text.count(f'"{shipped}"') == 1, shipped
        text = text.replace(f'"{shipped}"', f'"{files[name]}"')
    config = tmp_path / "tls.toml"
    config.write_text(text)
    out = check(config)
    assert out.returncode == 0, out.stderr
