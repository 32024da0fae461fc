"""README.md and the docs: set-up first, the minimal config and demo commands as they work."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support.subproc import LBPROXY
from test_conformance_cli import CONTRACT_TOML

from lbproxy import demo

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def test_readme_starts_with_the_two_set_up_commands():
    first = README.split("\n\n")[1].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]


def test_readme_minimal_config_is_the_one_that_works_as_written(tmp_path):
    # test_conformance_cli runs CONTRACT_TOML through `lbproxy check` and `lbproxy run`
    # end to end; here the README must show exactly that file, and check it once more.
    block = re.findall(r"^## A minimal config\n.*?^```toml\n(.*?)^```", README, re.S | re.M)
    assert block == [CONTRACT_TOML]
    path = tmp_path / "lbproxy.toml"
    path.write_text(block[0])
    out = subprocess.run([LBPROXY, "check", "--config", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_readme_shows_the_commands_the_demo_prints():
    shown = {line.strip() for line in README.splitlines() if line.startswith("    ")}
    missing = [c for c in demo.curl_examples() if c not in shown]
    assert not missing


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a markdown text's headings."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_relative_links_resolve():
    checked = 0
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue  # an absolute URL: not checked offline
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.name}: {link} -> {path} does not exist"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path.read_text()), f"{page.name}: no #{anchor} in {path}"
            checked += 1
    assert checked >= 20  # README, configuration.md and admin-api.md link a lot
