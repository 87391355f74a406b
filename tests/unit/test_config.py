"""config.load / Config.from_dict: every key parsed, every mistake named."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from meshd import config
from meshd.config import Config, Endpoint
from meshd.errors import ConfigError

FULL = """
name = "h1"
state_dir = "state"
control_socket = "/run/meshd/h1.sock"

[identity]
key = "node.key"
cert = "keys/node.cert"
cluster = "/etc/meshd/cluster.pub"

[gossip]
listen = "10.99.0.1:7946"
seeds = ["10.99.0.2:7946", "[fd00::2]:7946"]
profile = "wan"
advertise = "192.0.2.1:7946"
probe_interval_ms = 500
fanout = 4

[wireguard]
interface = "mesh-h1"
listen_port = 51821
key = "wg.key"
backend = "userspace"

[vpc.blue]
subnet = "10.20.1.0/24"

[vpc.red]
subnet = "10.20.1.0/24"

[dns]
upstream = ["10.99.0.254:53"]

[metrics]
listen = "127.0.0.1:9464"
"""

MINIMAL = {
    "name": "h1",
    "identity": {"key": "node.key", "cert": "node.cert", "cluster": "cluster.pub"},
    "gossip": {"listen": "10.99.0.1:7946"},
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "meshd.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def with_(section: str, **values: object) -> dict[str, Any]:
    """MINIMAL with keys of one section replaced (section "" is the top level)."""
    data: dict[str, Any] = {key: dict(value) if isinstance(value, dict) else value
                            for key, value in MINIMAL.items()}
    target = data if section == "" else data.setdefault(section, {})
    target.update(values)
    return data


def test_full_example_parses_every_key(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, FULL))
    etc = tmp_path / "etc"
    assert cfg.name == "h1"
    assert cfg.state_dir == etc / "state"
    assert cfg.control_socket == Path("/run/meshd/h1.sock")
    assert cfg.identity == config.IdentityConfig(etc / "node.key", etc / "keys" / "node.cert",
                                                 Path("/etc/meshd/cluster.pub"))
    gossip = cfg.gossip
    assert gossip.listen == Endpoint(ipaddress.ip_address("10.99.0.1"), 7946)
    assert [str(seed) for seed in gossip.seeds] == ["10.99.0.2:7946", "[fd00::2]:7946"]
    assert gossip.seeds[1].host == ipaddress.IPv6Address("fd00::2")
    assert (gossip.profile, str(gossip.advertise)) == ("wan", "192.0.2.1:7946")
    assert (gossip.probe_interval_ms, gossip.fanout, gossip.reap_s) == (500, 4, None)
    assert cfg.wireguard == config.WireGuardConfig(key=etc / "wg.key", interface="mesh-h1",
                                                   listen_port=51821, backend="userspace")
    assert [(v.name, str(v.subnet)) for v in cfg.vpcs] == [("blue", "10.20.1.0/24"),
                                                          ("red", "10.20.1.0/24")]
    assert cfg.dns is not None and [str(u) for u in cfg.dns.upstream] == ["10.99.0.254:53"]
    assert cfg.metrics is not None and cfg.metrics.listen.sockaddr == ("127.0.0.1", 9464)


def test_defaults_for_a_minimal_config(tmp_path: Path) -> None:
    cfg = Config.from_dict(MINIMAL, tmp_path)
    assert cfg.state_dir == Path("/var/lib/meshd/h1")
    assert cfg.control_socket == Path("/run/meshd/meshd.sock")
    assert (cfg.wireguard, cfg.vpcs, cfg.dns, cfg.metrics) == (None, (), None, None)
    assert (cfg.gossip.profile, cfg.gossip.seeds, cfg.gossip.advertise) == ("lan", (), None)
    assert cfg.gossip.probe_timeout_ms is None and cfg.gossip.push_pull_interval_s is None


def test_from_dict_resolves_relative_paths_against_base_dir(tmp_path: Path) -> None:
    cfg = Config.from_dict(with_("", state_dir="s", control_socket="run/c.sock"), tmp_path)
    assert cfg.identity.key == tmp_path / "node.key"
    assert cfg.state_dir == tmp_path / "s"
    assert cfg.control_socket == tmp_path / "run" / "c.sock"


def test_load_resolves_relative_paths_against_the_file_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, FULL)
    monkeypatch.chdir(path.parent)
    cfg = config.load("meshd.toml")
    assert cfg.identity.key == tmp_path / "etc" / "node.key"
    assert cfg.identity.key.is_absolute()


def test_wireguard_enabled_false_means_membership_only(tmp_path: Path) -> None:
    cfg = Config.from_dict(with_("wireguard", enabled=False, key="wg.key"), tmp_path)
    assert cfg.wireguard is None


def test_wireguard_defaults(tmp_path: Path) -> None:
    cfg = Config.from_dict(with_("wireguard", key="wg.key"), tmp_path)
    assert cfg.wireguard == config.WireGuardConfig(key=tmp_path / "wg.key", interface="meshd0",
                                                   listen_port=51820, backend="auto")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = Config.from_dict(MINIMAL, tmp_path)
    with pytest.raises(AttributeError):
        cfg.name = "h2"  # type: ignore[misc]


@pytest.mark.parametrize("data, message", [
    (with_("gossip", seeds=["10.0.0.2:7946", "10.0.0.3"]), "gossip.seeds[1]: expected host:port"),
    (with_("gossip", seeds=["10.0.0.2:7946", 7946]), "gossip.seeds[1]: expected a host:port string"),
    (with_("gossip", seeds="10.0.0.2:7946"), "gossip.seeds: expected an array, got a string"),
    (with_("gossip", listen="fd00::1:7946"), "gossip.listen: expected host:port with an IPv4"),
    (with_("gossip", listen="host.example:7946"), "gossip.listen: expected host:port with an IPv4"),
    (with_("gossip", listen="10.0.0.1:0"), "gossip.listen: expected host:port with a port from 1"),
    (with_("gossip", listen="10.0.0.1:65536"), "gossip.listen: expected host:port with a port"),
    (with_("gossip", listen="[fd00::1]:http"), "gossip.listen: expected host:port with a port"),
    (with_("gossip", listen=7946), "gossip.listen: expected a string, got an integer"),
    (with_("gossip", advertise="0.0.0.0:7946"), "gossip.advertise: must be an address others"),
    (with_("gossip", profile="lan2"), "gossip.profile: 'lan2' is not one of lan, wan, local"),
    (with_("gossip", fanout=0), "gossip.fanout: 0 is outside 1.."),
    (with_("gossip", reap_s=True), "gossip.reap_s: expected an integer, got a boolean"),
    (with_("gossip", probe_interval_ms=1.5), "gossip.probe_interval_ms: expected an integer"),
    (with_("gossip", seed=["10.0.0.2:7946"]), "gossip.seed: unknown key"),
    (with_("", nmae="h1"), "nmae: unknown key"),
    (with_("identity", kye="node.key"), "identity.kye: unknown key"),
    (with_("", name="H1"), "name: 'H1' is not a DNS label"),
    (with_("", state_dir=""), "state_dir: expected a path"),
    ({k: v for k, v in MINIMAL.items() if k != "name"}, "name: required"),
    ({k: v for k, v in MINIMAL.items() if k != "identity"}, "identity: required"),
    (with_("", identity="node.key"), "identity: expected a table, got a string"),
    (with_("", identity={"key": "k", "cert": "c"}), "identity.cluster: required"),
    (with_("wireguard", key="wg.key", backend="boringtun"), "wireguard.backend: 'boringtun'"),
    (with_("wireguard", key="wg.key", interface="a-very-long-name0"), "wireguard.interface"),
    (with_("wireguard", key="wg.key", listen_port=70000), "wireguard.listen_port: 70000 is outside"),
    (with_("wireguard", key="wg.key", listen_port=7946), "wireguard.listen_port: 7946 is also"),
    (with_("wireguard", interface="wg0"), "wireguard.key: required"),
    (with_("wireguard", enabled="no", key="k"), "wireguard.enabled: expected a boolean"),
    (with_("vpc", blue={"subnet": "10.20.1.1/24"}), "vpc.blue.subnet: '10.20.1.1/24' has host bits"),
    (with_("vpc", blue={"subnet": "10.20.1.0/33"}), "vpc.blue.subnet: '10.20.1.0/33' is not a CIDR"),
    (with_("vpc", blue={"subnet": "10.20.1.0/24", "subnets": []}), "vpc.blue.subnets: unknown key"),
    (with_("vpc", Blue={"subnet": "10.20.1.0/24"}), "vpc.Blue: 'Blue' is not a DNS label"),
    (with_("vpc", blue="10.20.1.0/24"), "vpc.blue: expected a table"),
    (with_("dns", upstream=["10.0.0.1"]), "dns.upstream[0]: expected host:port"),
    (with_("dns", upstrem=["10.0.0.1:53"]), "dns.upstrem: unknown key"),
    (with_("metrics"), "metrics.listen: required"),
])
def test_bad_config_names_the_key(tmp_path: Path, data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data, tmp_path)
    assert str(info.value).startswith(message)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"meshd\.toml: cannot read"):
        config.load(tmp_path / "meshd.toml")
    path = write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match=r"meshd\.toml: invalid TOML: .*line 1"):
        config.load(path)
    path = write(tmp_path, FULL.replace('fanout = 4', 'fanout = -4'))
    with pytest.raises(ConfigError, match=rf"^{path}: gossip\.fanout: -4 is outside"):
        config.load(path)


def test_endpoint_round_trips_through_text() -> None:
    for text in ("10.0.0.1:1", "[fd00::1]:65535", "[fe80::1%eth0]:7946"):
        assert str(Endpoint.parse(text)) == text


def test_render_local_writes_a_config_that_loads_back(tmp_path: Path) -> None:
    path = write(tmp_path, config.render_local(
        "n1", "127.0.0.2:7946", seeds=["127.0.0.1:7946", "[::1]:7946"], profile="local",
        vpcs={"blue": "10.20.1.0/24"}, metrics="127.0.0.2:9464"))
    cfg = config.load(path)
    folder = path.parent
    assert (cfg.name, cfg.state_dir, cfg.control_socket) == (
        "n1", folder / "state", folder / "meshd.sock")
    assert (cfg.identity.key, cfg.identity.cert) == (folder / "node.key", folder / "node.cert")
    assert cfg.identity.cluster == folder / ".." / "ca" / "cluster.pub"
    assert [str(seed) for seed in cfg.gossip.seeds] == ["127.0.0.1:7946", "[::1]:7946"]
    assert (str(cfg.gossip.listen), cfg.gossip.profile) == ("127.0.0.2:7946", "local")
    assert [(vpc.name, str(vpc.subnet)) for vpc in cfg.vpcs] == [("blue", "10.20.1.0/24")]
    assert cfg.metrics is not None and str(cfg.metrics.listen) == "127.0.0.2:9464"
    assert cfg.wireguard is None


def test_render_local_quotes_what_it_is_given(tmp_path: Path) -> None:
    """A value with a quote or backslash is escaped, so it reaches the checks intact."""
    path = write(tmp_path, config.render_local('n"1\\', "127.0.0.2:7946"))
    with pytest.raises(ConfigError, match=r"""name: 'n"1\\\\' is not a DNS label"""):
        config.load(path)
