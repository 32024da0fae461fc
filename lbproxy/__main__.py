"""`python -m lbproxy` is the `lbproxy` command."""

from lbproxy.cli import main

raise SystemExit(main())
