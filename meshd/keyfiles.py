"""Key, certificate and cluster files on disk: the IO edge for key material.

Writes are atomic (a temp file in the same folder, fsync, rename) so a crash
never leaves a half-written key, and private files are created 0600 from
their first byte: there is no window in which a secret sits world-readable.
Reads turn every failure into a one-line `KeyFileError` naming the path, so
an operator learns which file is wrong, not a Python traceback.

The bytes of secret keys are never logged, printed or put into an error.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Any, Callable

import nacl.signing

from meshd import identity, wire
from meshd.errors import KeyFileError, MeshdError
from meshd.identity import Certificate, Cluster, Revocation

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
# The largest meshd file is a certificate with its grants: a few KiB.
MAX_FILE_BYTES = 256 * 1024
WG_KEY_BYTES = 32
# errno values of file systems that cannot hard-link (vfat, some FUSE mounts).
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV)


# --- writing -------------------------------------------------------------------


def ensure_dir(path: Path) -> Path:
    """Create a key folder (0700) if missing; an existing one is left as it is."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot create folder: {_reason(exc)}") from None
    if not path.is_dir():
        raise KeyFileError(f"{path}: not a folder")
    return path


def refuse_existing(paths: list[Path], force: bool) -> None:
    """Fail before writing anything if one of `paths` exists, unless forced.

    Checking the whole set first means a refused command leaves no mix of
    old and new files behind.
    """
    if force:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path}: already exists (use --force to overwrite)")


def write_private(path: Path, text: str, force: bool = False) -> None:
    """Write a secret: mode 0600 from creation, atomically."""
    _write_atomic(path, text.encode("ascii"), PRIVATE_MODE, force)


def write_public(path: Path, text: str, force: bool = False) -> None:
    """Write a public file (0644), atomically."""
    _write_atomic(path, text.encode("ascii"), PUBLIC_MODE, force)


def _write_atomic(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Temp file in the same folder, fsync, then rename (or link when not forced).

    Without `force` the final step is `link`, which fails if the target exists,
    so a file created between our check and our write is never clobbered.
    """
    folder = path.parent
    tmp = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)  # exact mode despite the umask, before any byte is written
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(tmp, path, force)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write: {_reason(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(folder)


def _publish(tmp: Path, path: Path, force: bool) -> None:
    """Move the finished temp file into place."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists (use --force to overwrite)") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS or path.exists():
            raise
        os.replace(tmp, path)  # a file system without hard links: check, then rename


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- armored text --------------------------------------------------------------


def armor_signed(kind: str, signed: wire.Signed) -> str:
    """The file text of a CA-signed object: armored msgpack `[payload, signature]`."""
    return identity.armor(identity.LABELS[kind], wire.pack(signed.to_wire()))


def node_key_text(key: nacl.signing.SigningKey) -> str:
    return identity.armor(identity.LABELS["node.key"], bytes(key))


def node_pub_text(node_id: bytes) -> str:
    return identity.armor(identity.LABELS["node.pub"], node_id)


def ca_key_text(key: nacl.signing.SigningKey) -> str:
    return identity.armor(identity.LABELS["ca.key"], bytes(key))


def wg_key_text(raw: bytes) -> str:
    """WireGuard's own format (one base64 line), so `wg` and wg-quick read it."""
    return identity.b64(raw) + "\n"


# --- reading -------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A small ASCII text file, or a `KeyFileError` saying why not."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: {_reason(exc)}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes, not a meshd file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a text file") from None


def _key_seed(raw: bytes) -> nacl.signing.SigningKey:
    if len(raw) != 32:
        raise KeyFileError(f"expected a 32-byte key, got {len(raw)} bytes")
    return identity.signing_key_from_seed(raw)


def _node_id(raw: bytes) -> bytes:
    if len(raw) != 32:
        raise KeyFileError(f"expected a 32-byte public key, got {len(raw)} bytes")
    return raw


def _cluster(raw: bytes) -> Cluster:
    return Cluster.from_signed(identity.signed_from_bytes(raw, "cluster"))


def _certificate(raw: bytes) -> Certificate:
    return Certificate.parse(identity.signed_from_bytes(raw, "cert"))


def _revocation(raw: bytes) -> Revocation:
    return Revocation.parse(identity.signed_from_bytes(raw, "revocation"))


# How to turn the bytes inside each kind of armored file into an object.
DECODERS: dict[str, Callable[[bytes], Any]] = {
    "node.key": _key_seed,
    "node.pub": _node_id,
    "ca.key": _key_seed,
    "cluster": _cluster,
    "cert": _certificate,
    "revocation": _revocation,
}
KIND_BY_LABEL = {label: kind for kind, label in identity.LABELS.items()}


def _decode(path: Path, kind: str, raw: bytes) -> Any:
    """Decode one kind's bytes; any failure names the file it came from."""
    try:
        return DECODERS[kind](raw)
    except MeshdError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc


def _load(path: Path, kind: str) -> Any:
    """Read an armored file that must be of one kind, and decode it."""
    try:
        raw = identity.expect_armor(read_text(path), kind)
    except KeyFileError as exc:
        raise _named(path, exc) from None
    return _decode(path, kind, raw)


def _named(path: Path, exc: KeyFileError) -> KeyFileError:
    """Prefix the path unless the message already starts with it."""
    text = str(exc)
    return exc if text.startswith(f"{path}:") else KeyFileError(f"{path}: {text}")


def load_any(path: Path) -> tuple[str, Any]:
    """Any meshd file: its kind (a key of `identity.LABELS`) and decoded object."""
    try:
        label, raw = identity.dearmor(read_text(path))
    except KeyFileError as exc:
        raise _named(path, exc) from None
    kind = KIND_BY_LABEL[label]
    return kind, _decode(path, kind, raw)


def load_node_key(path: Path) -> nacl.signing.SigningKey:
    return _load(path, "node.key")


def load_node_pub(path: Path) -> bytes:
    return _load(path, "node.pub")


def load_ca_key(path: Path) -> nacl.signing.SigningKey:
    return _load(path, "ca.key")


def load_cluster(path: Path) -> Cluster:
    """The cluster file; its CA signature is checked while decoding."""
    return _load(path, "cluster")


def load_certificate(path: Path) -> Certificate:
    """A certificate's fields; verify it with `identity.Trust` before believing it."""
    return _load(path, "cert")


def load_revocation(path: Path) -> Revocation:
    return _load(path, "revocation")


def load_wg_key(path: Path) -> bytes:
    """A WireGuard key file (one base64 line, as `wg genkey` writes)."""
    text = read_text(path)
    if "-----BEGIN" in text:
        raise KeyFileError(f"{path}: a meshd armored file, expected a WireGuard base64 key")
    return identity.from_b64(text, WG_KEY_BYTES, str(path))


def _reason(exc: OSError) -> str:
    """A short, stable reason for an OS error (no errno numbers, no paths)."""
    if exc.errno == errno.ENOENT:
        return "no such file or folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a folder, expected a file"
    return exc.strerror or type(exc).__name__
