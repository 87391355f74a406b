"""meshd: a controller-less, signed, gossiped WireGuard mesh for containers.

This module is the public surface; everything a user of the package needs is
re-exported here, so internal modules can move without breaking callers.
"""

from __future__ import annotations

from meshd.client import ControlError
from meshd.config import Config, load as load_config
from meshd.errors import (
    BadSignatureError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    ConfigError,
    GrantViolationError,
    KeyFileError,
    LimitError,
    LocalError,
    MeshdError,
    RateLimitedError,
    RemoteError,
    RevokedError,
    StaleError,
    TooLargeError,
    UnknownCAError,
    UnsupportedVersionError,
    UsageError,
    VerificationError,
    WireError,
    WrongOriginError,
)
from meshd.events import (
    EventsLost,
    Member,
    MemberAlive,
    MemberDied,
    MemberEvent,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberSuspected,
    MemberTagsChanged,
)
from meshd.node import Node

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
