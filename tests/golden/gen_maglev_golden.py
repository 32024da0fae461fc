"""Generate tests/golden/maglev_golden.json: frozen key -> backend assignments.

Run once (``.venv/bin/python tests/golden/gen_maglev_golden.py``) and commit the output;
never regenerate to make a failing test pass: a changed assignment means every proxy
would send those videos to another cache (Pingora's pingora-ketama backwards_compat test
freezes its ring the same way).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from lbproxy.balance import _selectors_py as twin

OUT = Path(__file__).with_name("maglev_golden.json")
KEY_FORMAT = "/v/{:06x}/"  # the key is the video id, as hash_on = "path_regex:^/v/([^/]+)/"
N_KEYS = 10_000
N_CANDIDATES = 200  # keys whose 3-deep fallback order is pinned too
DIGITS = string.digits + string.ascii_letters  # one character per backend index

CASES = {
    "uniform": ([f"10.1.0.{i}:8080" for i in range(1, 13)], [1] * 12),
    "weighted": ([f"cache-{i}.edge.example:443" for i in range(8)], [1, 2, 3, 4, 1, 2, 3, 4]),
}


def assignments(addresses: list[str], weights: list[int]) -> dict[str, object]:
    """Pick every golden key with the twin; encode backend indexes one character each."""
    n = len(addresses)
    load = twin.BackendLoad(n)
    sel = twin.MaglevSelector(list(range(n)), addresses, weights, load, table_size=65537)
    keys = [KEY_FORMAT.format(i).encode() for i in range(N_KEYS)]
    picks = "".join(DIGITS[sel.pick(k)] for k in keys)
    fallback = "".join(
        "".join(DIGITS[s] for s in sel.candidates(k, 3)) for k in keys[:N_CANDIDATES]
    )
    return {
        "addresses": addresses,
        "weights": weights,
        "table_size": 65537,
        "picks": picks,
        "candidates3": fallback,
    }


def main() -> None:
    """Write the golden file."""
    doc = {
        "about": "Frozen Maglev assignments; see gen_maglev_golden.py. Do not regenerate.",
        "key_format": KEY_FORMAT,
        "digits": DIGITS,
        "cases": {name: assignments(a, w) for name, (a, w) in CASES.items()},
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
