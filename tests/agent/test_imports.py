"""An idle membership-only agent pays for no kernel or DNS library (DESIGN, "Cost")."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pyroute2", "dns", "aiodns")


def test_agent_node_and_cli_import_no_kernel_or_dns_library() -> None:
    code = ("import sys\nimport meshd, meshd.agent, meshd.node, meshd.cli\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]"
