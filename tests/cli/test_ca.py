"""`meshd ca init|sign|revoke|show`: round trips through identity.Trust, and one-line errors."""

from __future__ import annotations

import ipaddress
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshd import cli, identity, keyfiles
from meshd.errors import RevokedError, UsageError
from tests.conftest import Run

MESHD = Path(sys.executable).parent / "meshd"
DAY_MS = 86_400_000


@pytest.fixture
def ca_dir(meshd: Run, tmp_path: Path) -> Path:
    folder = tmp_path / "ca"
    result = meshd("ca", "init", "--dir", folder, "--mesh-prefix", "fd12:3456:789a::/48",
                   "--service-range", "10.97.0.0/16", "--dataplane", "encap")
    assert result.code == 0, result.err
    return folder


@pytest.fixture
def node_dir(meshd: Run, tmp_path: Path) -> Path:
    folder = tmp_path / "h1"
    assert meshd("keygen", "--dir", folder).code == 0
    return folder


@pytest.fixture
def cert_path(meshd: Run, ca_dir: Path, node_dir: Path) -> Path:
    out = node_dir / "node.cert"
    result = meshd("ca", "sign", "--dir", ca_dir, "--node-pub", node_dir / "node.pub",
                   "--name", "h1", "--vpc", "blue=10.20.0.0/16", "--vpc", "blue=10.21.0.0/16",
                   "--vpc", "red=10.20.0.0/16", "--out", out)
    assert result.code == 0, result.err
    return out


def trust(ca_dir: Path) -> identity.Trust:
    return identity.Trust(keyfiles.load_cluster(ca_dir / "cluster.pub"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_ca_init_writes_key_0600_and_signed_cluster(ca_dir: Path) -> None:
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca_dir / "cluster.pub").stat().st_mode) == 0o644
    cluster = keyfiles.load_cluster(ca_dir / "cluster.pub")
    assert cluster.ca_id == identity.public_id(keyfiles.load_ca_key(ca_dir / "ca.key"))
    assert cluster.mesh_prefix == ipaddress.IPv6Network("fd12:3456:789a::/48")
    assert cluster.service_range == ipaddress.IPv4Network("10.97.0.0/16")
    assert cluster.dataplane == "encap"


def test_ca_init_default_mesh_prefix_is_a_random_ula_48(meshd: Run, tmp_path: Path) -> None:
    prefixes = []
    for name in ("a", "b"):
        assert meshd("ca", "init", "--dir", tmp_path / name).code == 0
        cluster = keyfiles.load_cluster(tmp_path / name / "cluster.pub")
        assert cluster.mesh_prefix.prefixlen == 48
        assert cluster.mesh_prefix.subnet_of(ipaddress.IPv6Network("fd00::/8"))
        assert cluster.service_range == identity.DEFAULT_SERVICE_RANGE
        assert cluster.dataplane == "routed"
        prefixes.append(cluster.mesh_prefix)
    assert prefixes[0] != prefixes[1]


def test_random_ula_prefix_is_fd_then_the_40_given_bits() -> None:
    assert cli.random_ula_prefix(bytes([1, 2, 3, 4, 5])) == ipaddress.IPv6Network("fd01:203:405::/48")


def test_ca_init_refuses_to_overwrite_without_force(meshd: Run, ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    result = meshd("ca", "init", "--dir", ca_dir)
    assert result.code == 1 and "already exists" in result.err
    assert (ca_dir / "ca.key").read_bytes() == before
    assert meshd("ca", "init", "--dir", ca_dir, "--force").code == 0
    assert (ca_dir / "ca.key").read_bytes() != before


def test_signed_cert_verifies_with_trust(ca_dir: Path, node_dir: Path, cert_path: Path) -> None:
    cert = trust(ca_dir).verify_certificate(keyfiles.load_certificate(cert_path).signed, now_ms())
    assert cert.name == "h1"
    assert cert.node_id == keyfiles.load_node_pub(node_dir / "node.pub")
    assert {vpc: [str(n) for n in nets] for vpc, nets in cert.vpcs.items()} == {
        "blue": ["10.20.0.0/16", "10.21.0.0/16"], "red": ["10.20.0.0/16"]}
    assert len(cert.serial) == identity.SERIAL_BYTES
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644


def test_sign_validity_starts_skew_early_and_lasts_days(meshd: Run, ca_dir: Path,
                                                        node_dir: Path) -> None:
    out = node_dir / "short.cert"
    start = now_ms()
    result = meshd("ca", "sign", "--dir", ca_dir, "--node-pub", node_dir / "node.pub",
                   "--name", "h1", "--days", "2", "--skew-s", "60", "--out", out)
    end = now_ms()
    assert result.code == 0, result.err
    cert = keyfiles.load_certificate(out)
    assert start - 60_000 <= cert.not_before_ms <= end - 60_000
    assert start + 2 * DAY_MS <= cert.not_after_ms <= end + 2 * DAY_MS


def test_sign_default_validity_is_365_days_from_5_minutes_ago(cert_path: Path) -> None:
    cert = keyfiles.load_certificate(cert_path)
    assert cert.not_after_ms - cert.not_before_ms == 365 * DAY_MS + 300_000


def test_sign_rejects_overlapping_subnets_within_one_vpc() -> None:
    with pytest.raises(UsageError, match="overlaps 10.20.0.0/16 in the same VPC"):
        cli.parse_grants(["blue=10.20.0.0/16", "blue=10.20.5.0/24"])
    grants = cli.parse_grants(["blue=10.20.0.0/16", "red=10.20.5.0/24", "blue=fd00::/64"])
    assert [str(n) for n in grants["blue"]] == ["10.20.0.0/16", "fd00::/64"]


def test_revocation_names_the_cert_serial_and_revokes_it(meshd: Run, ca_dir: Path,
                                                         cert_path: Path) -> None:
    out = ca_dir / "h1.revocation"
    assert meshd("ca", "revoke", "--dir", ca_dir, "--cert", cert_path, "--out", out).code == 0
    checker = trust(ca_dir)
    cert = keyfiles.load_certificate(cert_path)
    revocation = checker.verify_revocation(keyfiles.load_revocation(out).signed)
    assert revocation.serial == cert.serial and revocation.node_id == cert.node_id
    assert revocation.until_ms == cert.not_after_ms
    checker.add_revocation(revocation)
    with pytest.raises(RevokedError):
        checker.verify_certificate(cert.signed, now_ms())


def test_revoke_refuses_a_cert_of_another_ca(meshd: Run, tmp_path: Path, cert_path: Path) -> None:
    meshd("ca", "init", "--dir", tmp_path / "other")
    result = meshd("ca", "revoke", "--dir", tmp_path / "other", "--cert", cert_path,
                   "--out", tmp_path / "r")
    assert result.code != 0 and "not issued by this CA" in result.err
    assert not (tmp_path / "r").exists()


def show_json(meshd: Run, path: Path) -> dict:
    result = meshd("ca", "show", path, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_show_certificate(meshd: Run, ca_dir: Path, node_dir: Path, cert_path: Path) -> None:
    cert = keyfiles.load_certificate(cert_path)
    shown = show_json(meshd, cert_path)
    assert shown == {
        "type": "certificate", "name": "h1",
        "node_id": identity.b64(keyfiles.load_node_pub(node_dir / "node.pub")),
        "vpcs": {"blue": ["10.20.0.0/16", "10.21.0.0/16"], "red": ["10.20.0.0/16"]},
        "not_before": cli._iso(cert.not_before_ms), "not_after": cli._iso(cert.not_after_ms),
        "serial": cert.serial.hex(),
        "issuer": identity.b64(keyfiles.load_cluster(ca_dir / "cluster.pub").ca_id)}
    assert shown["not_after"].endswith("Z") and "T" in shown["not_after"]
    human = meshd("ca", "show", cert_path).out
    assert "name:" in human and cert.serial.hex() in human and "blue=10.20.0.0/16" in human


def test_show_every_kind_of_file(meshd: Run, ca_dir: Path, node_dir: Path, cert_path: Path) -> None:
    revocation = ca_dir / "r"
    meshd("ca", "revoke", "--dir", ca_dir, "--cert", cert_path, "--out", revocation)
    node_id = identity.b64(keyfiles.load_node_pub(node_dir / "node.pub"))
    ca_id = identity.b64(keyfiles.load_cluster(ca_dir / "cluster.pub").ca_id)
    assert show_json(meshd, node_dir / "node.key") == {"type": "node key", "node_id": node_id}
    assert show_json(meshd, node_dir / "node.pub") == {"type": "node public key",
                                                       "node_id": node_id}
    assert show_json(meshd, ca_dir / "ca.key") == {"type": "ca key", "ca_id": ca_id}
    cluster = show_json(meshd, ca_dir / "cluster.pub")
    assert (cluster["mesh_prefix"], cluster["dataplane"]) == ("fd12:3456:789a::/48", "encap")
    shown = show_json(meshd, revocation)
    assert (shown["type"], shown["serial"]) == ("revocation",
                                                keyfiles.load_certificate(cert_path).serial.hex())


def test_show_never_prints_a_secret(meshd: Run, ca_dir: Path, node_dir: Path) -> None:
    for path in (node_dir / "node.key", ca_dir / "ca.key"):
        secret = bytes(keyfiles.load_node_key(path) if path.name == "node.key"
                       else keyfiles.load_ca_key(path))
        for args in ((path,), (path, "--json")):
            result = meshd("ca", "show", *args)
            assert identity.b64(secret) not in result.out and secret.hex() not in result.out
            assert path.read_text() not in result.out


BAD_INPUTS = [
    # (arguments after `meshd ca sign --dir CA --out OUT`, exit code, message fragment)
    (["--node-pub", "{h1}/missing.pub", "--name", "h1"], 1, "missing.pub: no such file"),
    (["--node-pub", "{h1}/wg.pub", "--name", "h1"], 1, "wg.pub: not a meshd file"),
    (["--node-pub", "{h1}/node.cert", "--name", "h1"], 1,
     "expected a meshd node public key, found a meshd certificate"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--vpc", "blue=10.20.0/33"], 2,
     "is not a CIDR prefix"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--vpc", "blue=10.20.0.1/16"], 2,
     "10.20.0.1/16 has host bits set"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--vpc", "Blue_1=10.20.0.0/16"], 2,
     "VPC name 'Blue_1' is not a DNS label"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--vpc", "blue"], 2, "expected NAME=CIDR"),
    (["--node-pub", "{h1}/node.pub", "--name", "H1.example"], 2,
     "node name 'H1.example' is not a DNS label"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--days", "0"], 2, "--days must be between"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--days", "-3"], 2, "--days must be between"),
    (["--node-pub", "{h1}/node.pub", "--name", "h1", "--days", "ten"], 2, "invalid int value"),
    (["--node-pub", "{h1}/node.pub"], 2, "required: --name"),
]


@pytest.mark.parametrize("extra, code, fragment", BAD_INPUTS)
def test_sign_bad_input_is_one_line_error(meshd: Run, ca_dir: Path, node_dir: Path, cert_path: Path,
                                          extra: list[str], code: int, fragment: str) -> None:
    out = node_dir / "new.cert"
    args = [arg.format(h1=node_dir) for arg in extra]
    result = meshd("ca", "sign", "--dir", ca_dir, "--out", out, *args)
    assert result.code == code
    assert result.err.startswith("meshd: error: ") and result.err.count("\n") == 1
    assert fragment in result.err
    assert result.out == "" and not out.exists()


@pytest.mark.parametrize("args, code, fragment", [
    (["--mesh-prefix", "fd00::/64"], 2, "must be a /48 inside fd00::/8"),
    (["--mesh-prefix", "2001:db8::/48"], 2, "must be a /48 inside fd00::/8"),
    (["--mesh-prefix", "10.0.0.0/8"], 2, "must be a /48 inside fd00::/8"),
    (["--mesh-prefix", "fd00::1/48"], 2, "has host bits set"),
    (["--service-range", "10.96.0.0/33"], 2, "is not a CIDR prefix"),
    (["--service-range", "fd00::/16"], 2, "must be IPv4"),
    (["--dataplane", "vxlan"], 2, "invalid choice: 'vxlan'"),
])
def test_ca_init_bad_input_is_one_line_error_and_writes_nothing(meshd: Run, tmp_path: Path,
                                                                args: list[str], code: int,
                                                                fragment: str) -> None:
    result = meshd("ca", "init", "--dir", tmp_path / "ca", *args)
    assert result.code == code
    assert result.err.startswith("meshd: error: ") and result.err.count("\n") == 1
    assert fragment in result.err
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("name, fragment", [
    ("missing", "no such file"),
    ("wg.pub", "not a meshd file"),
])
def test_show_bad_file_is_one_line_error(meshd: Run, node_dir: Path, name: str,
                                         fragment: str) -> None:
    result = meshd("ca", "show", node_dir / name)
    assert result.code == 1 and fragment in result.err and result.err.count("\n") == 1


def test_show_corrupt_signature_is_rejected(meshd: Run, ca_dir: Path) -> None:
    label, raw = identity.dearmor((ca_dir / "cluster.pub").read_text())
    (ca_dir / "bad.pub").write_text(identity.armor(label, raw[:-1] + bytes([raw[-1] ^ 1])))
    result = meshd("ca", "show", ca_dir / "bad.pub")
    assert result.code == 1 and "bad meshd/v1/cluster signature" in result.err


def test_console_script_bad_cidr_gives_one_line_and_exit_2(ca_dir: Path, node_dir: Path) -> None:
    proc = subprocess.run(
        [MESHD, "ca", "sign", "--dir", ca_dir, "--node-pub", node_dir / "node.pub", "--name", "h1",
         "--vpc", "blue=10.20.0.1/16", "--out", node_dir / "x.cert"],
        capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == "meshd: error: --vpc blue: 10.20.0.1/16 has host bits set\n"
