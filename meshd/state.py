"""The agent's state directory: what must survive a restart.

Versions never go backwards, across restarts too: a node's records are
ordered by version alone, so a restarted node that reissued an old version
would be ignored until its wall clock caught up. The last version issued is
kept here, with the node's tags (set at run time with `meshd tags`, so they
belong to the node, not to its config file).

The file is small JSON, written atomically (temp file, fsync, rename) by the
key-file writer, so a crash leaves either the old or the new state. Callers
in the agent run `save` off the event loop (`asyncio.to_thread`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from meshd import keyfiles
from meshd.errors import ConfigError, KeyFileError

STATE_FILE = "state.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class State:
    """The last version this node issued, and its tags."""

    version: int = 0
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_text(self) -> str:
        body = {"format": FORMAT, "version": self.version, "tags": dict(self.tags)}
        return json.dumps(body, sort_keys=True) + "\n"  # ASCII: json escapes the rest

    @classmethod
    def from_text(cls, text: str) -> State:
        """Parse the file's text; raises ValueError saying what is wrong."""
        data: Any = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"expected a JSON object with format {FORMAT}")
        version, tags = data.get("version"), data.get("tags", {})
        if type(version) is not int or version < 0:
            raise ValueError("version must be a non-negative integer")
        if not isinstance(tags, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ValueError("tags must map strings to strings")
        return cls(version, MappingProxyType(dict(tags)))


def prepare(folder: Path) -> Path:
    """Create the state folder (0700) if missing; raise `ConfigError` naming the key if not usable."""
    try:
        return keyfiles.ensure_dir(folder)
    except KeyFileError as exc:
        raise ConfigError(f"state_dir: {exc}") from None


def load(folder: Path) -> State:
    """The saved state, or a fresh one when there is none yet."""
    path = folder / STATE_FILE
    if not path.exists():
        return State()
    try:
        return State.from_text(keyfiles.read_text(path))
    except (KeyFileError, ValueError) as exc:
        raise ConfigError(f"state_dir: {path}: unreadable state ({exc}); "
                          "move it away to start afresh") from None


def save(folder: Path, state: State) -> None:
    """Replace the state file atomically (blocking: call it through `asyncio.to_thread`)."""
    keyfiles.write_private(folder / STATE_FILE, state.to_text(), force=True)
