"""Fixtures shared by the test suites."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from meshd import cli


@dataclass(frozen=True)
class CliResult:
    """What one in-process `meshd ...` run returned and printed."""

    code: int
    out: str
    err: str


class Run(Protocol):
    """The `meshd` fixture's type, for the tests that take it."""

    def __call__(self, *args: str | Path) -> CliResult: ...


@pytest.fixture
def meshd(capsys: pytest.CaptureFixture[str]) -> Run:
    """Run `meshd` in-process: `meshd("ca", "init", "--dir", path)`."""

    def run(*args: str | Path) -> CliResult:
        code = cli.main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
