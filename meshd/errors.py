"""meshd's error types.

Blame is split as in h11: `LocalError` means this process or its operator did
something wrong (bad config, bad arguments, impossible state); `RemoteError`
means bytes or records from elsewhere were bad. Only receive paths raise the
remote kind, and every remote error carries a short `reason` that becomes the
label of the `meshd_dropped_total` counter.
"""

from __future__ import annotations


class MeshdError(Exception):
    """Base of every error meshd raises on purpose."""


class LocalError(MeshdError):
    """The caller or operator is at fault."""


class ConfigError(LocalError):
    """A configuration file or value is invalid; the message names the key."""


class UsageError(LocalError):
    """A command or API was called with arguments that cannot work."""


class KeyFileError(LocalError):
    """A key, certificate or cluster file is missing, unreadable or of the wrong kind."""


class RemoteError(MeshdError):
    """Something received from the network (or a file from elsewhere) is unacceptable."""

    reason = "invalid"


class WireError(RemoteError):
    """Bytes that do not decode into a well-formed meshd message."""

    reason = "malformed"


class TooLargeError(WireError):
    """A message, string, list or map exceeds a decoder limit."""

    reason = "too_large"


class UnsupportedVersionError(WireError):
    """A message from a protocol version this build does not speak."""

    reason = "unsupported_version"


class VerificationError(RemoteError):
    """A signed object failed a trust check."""

    reason = "unverified"


class BadSignatureError(VerificationError):
    """A signature does not match the signer and bytes it claims."""

    reason = "bad_signature"


class UnknownCAError(VerificationError):
    """A certificate or file was issued by a CA other than this cluster's."""

    reason = "unknown_ca"


class CertificateExpiredError(VerificationError):
    """A certificate's validity window has ended."""

    reason = "expired"


class CertificateNotYetValidError(VerificationError):
    """A certificate's validity window has not started (beyond the skew allowance)."""

    reason = "not_yet_valid"


class RevokedError(VerificationError):
    """A certificate has been revoked by the cluster CA."""

    reason = "revoked"


class GrantViolationError(VerificationError):
    """A node advertised an address, subnet or VPC its certificate does not grant."""

    reason = "grant_violation"


class WrongOriginError(VerificationError):
    """A record's signer is not its origin, or a certificate names another node."""

    reason = "wrong_origin"


class StaleError(RemoteError):
    """A message or record is older than what we already hold, or replayed."""

    reason = "stale_version"


class RateLimitedError(RemoteError):
    """A sender exceeded its allowance."""

    reason = "rate_limited"


class LimitError(RemoteError):
    """Accepting this would exceed a table or queue bound."""

    reason = "limit"
