"""`meshd demo`, what `make demo` runs: the tour completes, and the times it prints are the
agents' own stamps, so they are never negative and never the polling client's start-up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO_TIMEOUT_S = 120


def test_the_demo_tours_join_tags_kill_and_leave_and_cleans_up() -> None:
    result = subprocess.run([sys.executable, "-m", "meshd", "demo"], capture_output=True,
                            text=True, timeout=DEMO_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    times = dict(re.findall(r"^(every agent lists|h3 learned h2's tag|h1 and h2 learned h3"
                            r"|h1 learned h2) .*? (-?\d+\.\d+) s after", result.stdout, re.M))
    assert set(times) == {"every agent lists", "h3 learned h2's tag", "h1 and h2 learned h3",
                          "h1 learned h2"}, result.stdout
    assert all(float(value) >= 0 for value in times.values()), times
    assert "h2 exited with status 0" in result.stdout
    assert re.search(r"^h3 +dead ", result.stdout, re.M) and re.search(r"^h2 +left ",
                                                                      result.stdout, re.M)
    roots = set(re.findall(r"--socket (\S+?)/h\d/meshd\.sock", result.stdout))
    assert len(roots) == 1 and not Path(roots.pop()).exists()
