"""Subprocess driver: the real ``slidewatch`` CLI with a test signer (not a test module).

    python tests/reliability/clirun.py TOKEN slidewatch-args...

Registers a signer for the ``--stac-url`` given in the arguments that appends
``?token=TOKEN`` to every asset href (a Planetary-Computer-like SAS token planted for the
leak checks), then runs ``flows.cli.main()`` exactly as the console script does: what
reaches stdout/stderr and the exit code are what a user sees.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE)]


class StaticTokenSigner:
    """Appends ``?token=<token>`` to every href; ``refresh`` counts (the token stays)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.refreshes = 0

    def sign(self, item):  # type: ignore[no-untyped-def]
        out = item.clone()
        for asset in out.assets.values():
            asset.href = f"{asset.href.split('?', 1)[0]}?token={self.token}"
        return out

    def refresh(self) -> None:
        self.refreshes += 1


def main() -> None:
    token, args = sys.argv[1], sys.argv[2:]
    from pipeline.acquire.items import register_signer

    if "--stac-url" in args:
        register_signer(args[args.index("--stac-url") + 1], StaticTokenSigner(token))
    from flows.cli import main as cli_main

    sys.argv = ["slidewatch", *args]
    cli_main()


if __name__ == "__main__":
    main()
