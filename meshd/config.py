"""The agent's TOML configuration, parsed once into frozen dataclasses.

Every check happens here, at the edge: types, ranges, addresses, names, and
relative paths resolved against the config file's folder. Nothing below this
module reads files or the environment for settings. Each error is one
`ConfigError` naming the key (`gossip.seeds[1]: expected host:port ...`),
and unknown keys are errors too, so a typo never passes silently as a
default. docs/config.md describes every key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from meshd.errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROFILES = ("lan", "wan", "local")
WG_BACKENDS = ("auto", "kernel", "userspace")
DEFAULT_CONTROL_SOCKET = Path("/run/meshd/meshd.sock")
DEFAULT_STATE_ROOT = Path("/var/lib/meshd")
DEFAULT_WG_INTERFACE = "meshd0"
DEFAULT_WG_PORT = 51820
MAX_CONFIG_BYTES = 1024 * 1024
MAX_ADDRESS_LIST = 64
MAX_TUNING_VALUE = 2**31 - 1
# Same rule as identity.DNS_LABEL: names end up in certificates and DNS.
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
# Linux interface names: at most 15 bytes, no '/', ':' or whitespace.
INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}\Z")

TOP_KEYS = ("name", "state_dir", "control_socket", "identity", "gossip", "wireguard", "vpc",
            "dns", "metrics")
IDENTITY_KEYS = ("key", "cert", "cluster")
TUNING_KEYS = ("probe_interval_ms", "probe_timeout_ms", "suspicion_mult", "retransmit_mult",
               "fanout", "push_pull_interval_s", "reap_s")
GOSSIP_KEYS = ("listen", "seeds", "profile", "advertise", *TUNING_KEYS)
WIREGUARD_KEYS = ("enabled", "interface", "listen_port", "key", "backend")
VPC_KEYS = ("subnet",)
DNS_KEYS = ("upstream",)
METRICS_KEYS = ("listen",)

_REQUIRED: Any = object()
_TOML_TYPES = {str: "a string", int: "an integer", bool: "a boolean", float: "a float",
               list: "an array", dict: "a table"}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port (`10.0.0.1:7946`, `[fd00::1]:7946`)."""

    host: Address
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse `host:port`; IPv6 must be bracketed. Raises `ValueError(reason)`."""
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected host:port")
        if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise ValueError("expected host:port with a port from 1 to 65535")
        try:
            if host.startswith("[") and host.endswith("]"):
                return cls(ipaddress.IPv6Address(host[1:-1]), int(port))
            return cls(ipaddress.IPv4Address(host), int(port))
        except ValueError:
            raise ValueError("expected host:port with an IPv4 or a bracketed IPv6 address") from None

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def sockaddr(self) -> tuple[str, int]:
        """The `(host, port)` pair socket and asyncio APIs take."""
        return str(self.host), self.port


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """Where this node's key, certificate and the cluster file live."""

    key: Path
    cert: Path
    cluster: Path


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Underlay addresses, the timing profile and optional per-key overrides.

    Tuning fields are None when absent; the gossip module applies the ones
    that are set over the profile's defaults.
    """

    listen: Endpoint
    seeds: tuple[Endpoint, ...] = ()
    profile: str = "lan"
    advertise: Endpoint | None = None
    probe_interval_ms: int | None = None
    probe_timeout_ms: int | None = None
    suspicion_mult: int | None = None
    retransmit_mult: int | None = None
    fanout: int | None = None
    push_pull_interval_s: int | None = None
    reap_s: int | None = None


@dataclass(frozen=True, slots=True)
class WireGuardConfig:
    """The one WireGuard interface; absent or disabled means membership-only mode."""

    key: Path
    interface: str = DEFAULT_WG_INTERFACE
    listen_port: int = DEFAULT_WG_PORT
    backend: str = "auto"


@dataclass(frozen=True, slots=True)
class VpcConfig:
    """This host's share of one VPC."""

    name: str
    subnet: IPNetwork


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The per-VPC DNS server; names it does not own go upstream."""

    upstream: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Where to serve Prometheus text metrics."""

    listen: Endpoint


@dataclass(frozen=True, slots=True)
class Config:
    """A whole agent configuration; a reload builds a new one, nothing is mutated."""

    name: str
    identity: IdentityConfig
    gossip: GossipConfig
    state_dir: Path
    control_socket: Path = DEFAULT_CONTROL_SOCKET
    wireguard: WireGuardConfig | None = None
    vpcs: tuple[VpcConfig, ...] = ()
    dns: DnsConfig | None = None
    metrics: MetricsConfig | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str]) -> Config:
        """Build a Config from already-parsed TOML data (for embedding without a file).

        Relative paths resolve against `base_dir`, as they would against the
        folder of a config file.
        """
        base = Path(base_dir).absolute()
        top = _Section(data, "", TOP_KEYS)
        name = _label(top.text("name"), "name")
        wireguard = _wireguard(top.optional_table("wireguard", WIREGUARD_KEYS), base)
        gossip = _gossip(top.table("gossip", GOSSIP_KEYS))
        _check_ports(gossip, wireguard)
        return cls(
            name=name,
            identity=_identity(top.table("identity", IDENTITY_KEYS), base),
            gossip=gossip,
            state_dir=top.path("state_dir", base, default=DEFAULT_STATE_ROOT / name),
            control_socket=top.path("control_socket", base, default=DEFAULT_CONTROL_SOCKET),
            wireguard=wireguard,
            vpcs=_vpcs(top.optional_table("vpc", None)),
            dns=_dns(top.optional_table("dns", DNS_KEYS)),
            metrics=_metrics(top.optional_table("metrics", METRICS_KEYS)),
        )


def load(path: str | os.PathLike[str]) -> Config:
    """Read and check a TOML config file; errors name the file and the key."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return Config.from_dict(data, path.absolute().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render_local(name: str, listen: str, *, seeds: Sequence[str] = (), profile: str = "lan",
                 vpcs: Mapping[str, str] | None = None, metrics: str | None = None) -> str:
    """The config of a node whose files sit in one folder, as `meshd keygen --dir .` and
    `meshd ca sign` leave them, beside the CA's folder `../ca`: the layout `meshd demo`,
    the agent tests and the benchmarks all run, written in one place so it stays loadable."""
    lines = [f"name = {_toml_string(name)}",
             'state_dir = "state"',
             'control_socket = "meshd.sock"',
             "", "[identity]",
             'key = "node.key"',
             'cert = "node.cert"',
             'cluster = "../ca/cluster.pub"',
             "", "[gossip]",
             f"listen = {_toml_string(listen)}",
             f"seeds = [{', '.join(_toml_string(seed) for seed in seeds)}]",
             f"profile = {_toml_string(profile)}"]
    for vpc, subnet in (vpcs or {}).items():
        lines += ["", f"[vpc.{vpc}]", f"subnet = {_toml_string(subnet)}"]
    if metrics is not None:
        lines += ["", "[metrics]", f"listen = {_toml_string(metrics)}"]
    return "\n".join(lines) + "\n"


def _toml_string(text: str) -> str:
    return json.dumps(text)   # a JSON string, escapes and all, is a TOML basic string


# --- sections ------------------------------------------------------------------


def _identity(section: _Section, base: Path) -> IdentityConfig:
    return IdentityConfig(key=section.path("key", base), cert=section.path("cert", base),
                          cluster=section.path("cluster", base))


def _gossip(section: _Section) -> GossipConfig:
    advertise = section.endpoint("advertise", default=None)
    if advertise is not None and advertise.host.is_unspecified:
        raise ConfigError(f"{section.key('advertise')}: must be an address others can reach, "
                          f"not {advertise.host}")
    tuning = {key: section.integer(key, lo=1, hi=MAX_TUNING_VALUE, default=None)
              for key in TUNING_KEYS}
    return GossipConfig(listen=section.endpoint("listen"), seeds=section.endpoints("seeds"),
                        profile=section.text("profile", default="lan", choices=PROFILES),
                        advertise=advertise, **tuning)


def _wireguard(section: _Section | None, base: Path) -> WireGuardConfig | None:
    """Parse [wireguard]; every key is checked even when `enabled = false`."""
    if section is None:
        return None
    enabled = section.boolean("enabled", default=True)
    interface = section.text("interface", default=DEFAULT_WG_INTERFACE)
    if not INTERFACE_NAME.match(interface) or interface in (".", ".."):
        raise ConfigError(f"{section.key('interface')}: {interface!r} is not a valid interface "
                          "name (1-15 of letters, digits, '_', '.', '-')")
    config = WireGuardConfig(
        key=section.path("key", base), interface=interface,
        listen_port=section.integer("listen_port", lo=1, hi=65535, default=DEFAULT_WG_PORT),
        backend=section.text("backend", default="auto", choices=WG_BACKENDS))
    return config if enabled else None


def _vpcs(section: _Section | None) -> tuple[VpcConfig, ...]:
    if section is None:
        return ()
    return tuple(_vpc(name, section) for name in section.names())


def _vpc(name: str, parent: _Section) -> VpcConfig:
    label = _label(name, parent.key(name))
    section = parent.table(name, VPC_KEYS)
    return VpcConfig(name=label, subnet=section.network("subnet"))


def _dns(section: _Section | None) -> DnsConfig | None:
    return None if section is None else DnsConfig(upstream=section.endpoints("upstream"))


def _metrics(section: _Section | None) -> MetricsConfig | None:
    return None if section is None else MetricsConfig(listen=section.endpoint("listen"))


def _check_ports(gossip: GossipConfig, wireguard: WireGuardConfig | None) -> None:
    """WireGuard binds its UDP port on every address, so gossip cannot share it."""
    if wireguard is not None and wireguard.listen_port == gossip.listen.port:
        raise ConfigError(f"wireguard.listen_port: {wireguard.listen_port} is also the UDP port "
                          "of gossip.listen")


def _label(value: str, key: str) -> str:
    if not DNS_LABEL.match(value):
        raise ConfigError(f"{key}: {value!r} is not a DNS label "
                          "(lowercase letters, digits, '-', 1-63 chars)")
    return value


# --- typed access to one TOML table --------------------------------------------


class _Section:
    """One TOML table: rejects unknown keys up front, then typed getters name the key.

    Unknown keys are checked before anything is read, so a misspelt required
    key is reported as the typo it is, not as a missing key.
    """

    __slots__ = ("_data", "_prefix", "_allowed")

    def __init__(self, data: Any, prefix: str, allowed: tuple[str, ...] | None) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, "
                              f"got {_kind(data)}")
        self._data, self._prefix, self._allowed = data, prefix, allowed
        for key in data:
            if allowed is not None and key not in allowed:
                raise ConfigError(f"{self.key(key)}: unknown key")

    def key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def names(self) -> list[str]:
        return list(self._data)

    def _get(self, name: str, kind: type, default: Any) -> Any:
        assert self._allowed is None or name in self._allowed, name
        if name not in self._data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.key(name)}: required")
            return default
        value = self._data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: expected {_TOML_TYPES[kind]}, got {_kind(value)}")
        return value

    def text(self, name: str, *, default: Any = _REQUIRED,
             choices: tuple[str, ...] | None = None) -> Any:
        value = self._get(name, str, default)
        if choices is not None and value not in choices:
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, name: str, *, lo: int, hi: int, default: Any = _REQUIRED) -> Any:
        value = self._get(name, int, default)
        if value is not None and not lo <= value <= hi:
            raise ConfigError(f"{self.key(name)}: {value} is outside {lo}..{hi}")
        return value

    def boolean(self, name: str, *, default: Any = _REQUIRED) -> Any:
        return self._get(name, bool, default)

    def path(self, name: str, base: Path, *, default: Any = _REQUIRED) -> Any:
        """A path; relative ones resolve against the config file's folder."""
        value = self._get(name, str, default)
        if not isinstance(value, str):
            return value
        if not value or "\x00" in value:
            raise ConfigError(f"{self.key(name)}: expected a path, got {value!r}")
        return base / Path(value)

    def endpoint(self, name: str, *, default: Any = _REQUIRED) -> Any:
        value = self._get(name, str, default)
        return _endpoint(value, self.key(name)) if isinstance(value, str) else value

    def endpoints(self, name: str) -> tuple[Endpoint, ...]:
        values = self._get(name, list, [])
        if len(values) > MAX_ADDRESS_LIST:
            raise ConfigError(f"{self.key(name)}: at most {MAX_ADDRESS_LIST} addresses")
        return tuple(_endpoint(value, f"{self.key(name)}[{i}]") for i, value in enumerate(values))

    def network(self, name: str) -> IPNetwork:
        value = self._get(name, str, _REQUIRED)
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            reason = "has host bits set" if "host bits set" in str(exc) else "is not a CIDR prefix"
            raise ConfigError(f"{self.key(name)}: {value!r} {reason}") from None

    def table(self, name: str, allowed: tuple[str, ...] | None) -> _Section:
        """A required sub-table holding only `allowed` keys (None: any key)."""
        return _Section(self._get(name, dict, _REQUIRED), f"{self.key(name)}.", allowed)

    def optional_table(self, name: str, allowed: tuple[str, ...] | None) -> _Section | None:
        """A sub-table whose absence means the feature is off."""
        return self.table(name, allowed) if name in self._data else None


def _endpoint(value: Any, key: str) -> Endpoint:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a host:port string, got {_kind(value)}")
    try:
        return Endpoint.parse(value)
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}, got {value!r}") from None


def _kind(value: Any) -> str:
    for kind, text in _TOML_TYPES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return text
    return type(value).__name__
