"""The `meshd` console script: a thin door that keeps the daemon lean."""

from __future__ import annotations

import sys

# Modules the daemon never needs but asyncio and hashlib would load anyway.
OPENSSL_MODULES = ("ssl", "_ssl", "_hashlib")


def main() -> int:
    if sys.argv[1:2] == ["agent"]:
        without_openssl()
    from meshd.cli import main as cli_main

    return cli_main()


def without_openssl() -> None:
    """Run the daemon without OpenSSL's libraries mapped (~8 MB RSS on every host).

    The agent speaks no TLS and hashes only with BLAKE2. Marking these modules
    absent makes asyncio run without TLS support and hashlib use its built-in
    code, exactly as on a Python built without OpenSSL. Only the `agent`
    command does this; an embedding program keeps whatever it imported.
    """
    for name in OPENSSL_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
