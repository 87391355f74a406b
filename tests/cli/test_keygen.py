"""`meshd keygen` and the key-file IO edge: modes, atomic writes, no overwrite, interop."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import nacl.bindings
import pytest

from meshd import identity, keyfiles
from meshd.errors import KeyFileError
from tests.conftest import Run

FILES = {"node.key": 0o600, "node.pub": 0o644, "wg.key": 0o600, "wg.pub": 0o644}
MESHD = Path(sys.executable).parent / "meshd"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_private_files_0600_and_folder_0700(meshd: Run, tmp_path: Path) -> None:
    folder = tmp_path / "a" / "h1"
    result = meshd("keygen", "--dir", folder)
    assert result.code == 0, result.err
    assert {name: mode(folder / name) for name in FILES} == FILES
    assert mode(folder) == 0o700


def test_keygen_modes_hold_under_a_permissive_umask(meshd: Run, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert meshd("keygen", "--dir", tmp_path / "h1").code == 0
    finally:
        os.umask(old)
    assert {name: mode(tmp_path / "h1" / name) for name in FILES} == FILES


def test_keygen_leaves_only_its_four_files(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)


def test_keygen_refuses_to_overwrite_without_force(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    result = meshd("keygen", "--dir", tmp_path)
    assert result.code == 1
    assert result.err.count("\n") == 1 and "already exists" in result.err
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before


def test_keygen_refusal_writes_nothing_when_any_file_exists(meshd: Run, tmp_path: Path) -> None:
    (tmp_path / "wg.pub").write_text("old\n")
    result = meshd("keygen", "--dir", tmp_path)
    assert result.code == 1 and "wg.pub" in result.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wg.pub"]


def test_keygen_force_replaces_keys_keeping_modes(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    old_key = (tmp_path / "node.key").read_bytes()
    assert meshd("keygen", "--dir", tmp_path, "--force").code == 0
    assert (tmp_path / "node.key").read_bytes() != old_key
    assert {name: mode(tmp_path / name) for name in FILES} == FILES


def test_node_pub_is_the_public_half_of_node_key(meshd: Run, tmp_path: Path) -> None:
    result = meshd("keygen", "--dir", tmp_path)
    key = keyfiles.load_node_key(tmp_path / "node.key")
    node_id = keyfiles.load_node_pub(tmp_path / "node.pub")
    assert identity.public_id(key) == node_id
    assert identity.b64(node_id) in result.out


def test_keygen_prints_no_secret(meshd: Run, tmp_path: Path) -> None:
    result = meshd("keygen", "--dir", tmp_path)
    seed = bytes(keyfiles.load_node_key(tmp_path / "node.key"))
    wg_private = (tmp_path / "wg.key").read_text().strip()
    assert identity.b64(seed) not in result.out + result.err
    assert seed.hex() not in result.out + result.err
    assert wg_private not in result.out + result.err


def test_wg_pub_is_x25519_of_a_clamped_wg_key(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    private = keyfiles.load_wg_key(tmp_path / "wg.key")
    public = keyfiles.load_wg_key(tmp_path / "wg.pub")
    assert private[0] & 7 == 0 and private[31] & 0xC0 == 0x40
    assert nacl.bindings.crypto_scalarmult_base(private) == public
    assert (tmp_path / "wg.pub").read_text() == identity.b64(public) + "\n"


def test_wg_pub_matches_wg_pubkey(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    with open(tmp_path / "wg.key", "rb") as private:
        derived = subprocess.run(["wg", "pubkey"], stdin=private, capture_output=True,
                                 check=True).stdout
    assert derived == (tmp_path / "wg.pub").read_bytes()


def test_load_rejects_wrong_kind_naming_the_path(meshd: Run, tmp_path: Path) -> None:
    meshd("keygen", "--dir", tmp_path)
    with pytest.raises(KeyFileError, match=r"node\.key: expected a meshd node public key"):
        keyfiles.load_node_pub(tmp_path / "node.key")
    with pytest.raises(KeyFileError, match=r"wg\.key: not a meshd file"):
        keyfiles.load_node_key(tmp_path / "wg.key")
    with pytest.raises(KeyFileError, match=r"node\.pub: a meshd armored file"):
        keyfiles.load_wg_key(tmp_path / "node.pub")


def test_load_missing_or_unreadable_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=rf"^{tmp_path}/nope\.key: no such file"):
        keyfiles.load_node_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="is a folder"):
        keyfiles.load_node_key(tmp_path)
    (tmp_path / "bin.key").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(KeyFileError, match=r"bin\.key: not a text file"):
        keyfiles.load_node_key(tmp_path / "bin.key")


def test_write_private_without_force_never_clobbers(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    keyfiles.write_private(target, "first\n")
    with pytest.raises(KeyFileError, match="already exists"):
        keyfiles.write_private(target, "second\n")
    assert target.read_text() == "first\n"
    keyfiles.write_private(target, "second\n", force=True)
    assert target.read_text() == "second\n" and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["x.key"]


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The installed `meshd` script: 0 on success, 1 on refusal, 2 on usage; one line, no traceback."""
    ok = subprocess.run([MESHD, "keygen", "--dir", tmp_path], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    again = subprocess.run([MESHD, "keygen", "--dir", tmp_path], capture_output=True, text=True)
    assert again.returncode == 1
    assert again.stderr.startswith("meshd: error: ") and again.stderr.count("\n") == 1
    usage = subprocess.run([MESHD, "keygen"], capture_output=True, text=True)
    assert usage.returncode == 2
    assert usage.stderr == "meshd: error: the following arguments are required: --dir\n"
