"""meshd: a controller-less, signed, gossiped WireGuard mesh for containers.

This module is the public surface; everything a user of the package needs is
re-exported here, so internal modules can move without breaking callers.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562): `import meshd.wire` must not drag in
# asyncio, the agent and the HTTP client, so a CLI call or the daemon loads
# only what it runs.
_EXPORTS: dict[str, tuple[str, str]] = {
    "ControlError": ("meshd.client", "ControlError"),
    "Config": ("meshd.config", "Config"),
    "load_config": ("meshd.config", "load"),
    "BadSignatureError": ("meshd.errors", "BadSignatureError"),
    "CertificateExpiredError": ("meshd.errors", "CertificateExpiredError"),
    "CertificateNotYetValidError": ("meshd.errors", "CertificateNotYetValidError"),
    "ConfigError": ("meshd.errors", "ConfigError"),
    "GrantViolationError": ("meshd.errors", "GrantViolationError"),
    "KeyFileError": ("meshd.errors", "KeyFileError"),
    "LimitError": ("meshd.errors", "LimitError"),
    "LocalError": ("meshd.errors", "LocalError"),
    "MeshdError": ("meshd.errors", "MeshdError"),
    "RateLimitedError": ("meshd.errors", "RateLimitedError"),
    "RemoteError": ("meshd.errors", "RemoteError"),
    "RevokedError": ("meshd.errors", "RevokedError"),
    "StaleError": ("meshd.errors", "StaleError"),
    "TooLargeError": ("meshd.errors", "TooLargeError"),
    "UnknownCAError": ("meshd.errors", "UnknownCAError"),
    "UnsupportedVersionError": ("meshd.errors", "UnsupportedVersionError"),
    "UsageError": ("meshd.errors", "UsageError"),
    "VerificationError": ("meshd.errors", "VerificationError"),
    "WireError": ("meshd.errors", "WireError"),
    "WrongOriginError": ("meshd.errors", "WrongOriginError"),
    "EventsLost": ("meshd.events", "EventsLost"),
    "Member": ("meshd.events", "Member"),
    "MemberAlive": ("meshd.events", "MemberAlive"),
    "MemberDied": ("meshd.events", "MemberDied"),
    "MemberEvent": ("meshd.events", "MemberEvent"),
    "MemberJoined": ("meshd.events", "MemberJoined"),
    "MemberLeft": ("meshd.events", "MemberLeft"),
    "MemberReaped": ("meshd.events", "MemberReaped"),
    "MemberSuspected": ("meshd.events", "MemberSuspected"),
    "MemberTagsChanged": ("meshd.events", "MemberTagsChanged"),
    "Node": ("meshd.node", "Node"),
}

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Config",
    "ControlError",
    "EventsLost",
    "Member",
    "MemberAlive",
    "MemberDied",
    "MemberEvent",
    "MemberJoined",
    "MemberLeft",
    "MemberReaped",
    "MemberSuspected",
    "MemberTagsChanged",
    "Node",
    "load_config",
    "BadSignatureError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "ConfigError",
    "GrantViolationError",
    "KeyFileError",
    "LimitError",
    "LocalError",
    "MeshdError",
    "RateLimitedError",
    "RemoteError",
    "RevokedError",
    "StaleError",
    "TooLargeError",
    "UnknownCAError",
    "UnsupportedVersionError",
    "UsageError",
    "VerificationError",
    "WireError",
    "WrongOriginError",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'meshd' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
