"""The `meshd` command: argparse in, one small function per subcommand.

Subcommands live in one table (`COMMANDS`); each entry names its path
(`("ca", "sign")`), adds its arguments and runs. Adding a command means
writing two small functions and one table row; nothing else changes.

Operators see errors, not tracebacks: every `MeshdError` and every argparse
complaint becomes exactly one line `meshd: error: <message>` on stderr, with
exit status 2 for bad usage and 1 for everything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

import nacl.signing

from meshd import __version__, config, identity, keyfiles, wire
from meshd.agent import Agent
from meshd.errors import MeshdError, UsageError
from meshd.identity import Certificate, Cluster, IPNetwork, Revocation

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_DAYS = 365
MAX_DAYS = 100 * 366
DEFAULT_SKEW_S = identity.DEFAULT_SKEW_MS // 1000
MS_PER_DAY = 86_400_000
KEYGEN_FILES = ("node.key", "node.pub", "wg.key", "wg.pub")
CA_KEY_FILE = "ca.key"
CLUSTER_FILE = "cluster.pub"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- the parser ----------------------------------------------------------------


class ArgumentError(Exception):
    """argparse rejected the command line; main turns it into one line and exit 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting.

    Abbreviated options are off: scripts written against `--force` must not
    change meaning when a later command gains a `--format`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(message)


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the command table."""

    path: tuple[str, ...]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def build_parser(commands: Sequence[Command], groups: dict[tuple[str, ...], str]) -> _Parser:
    """Build the argparse tree from the command table; groups get help text from `groups`."""
    parser = _Parser(prog="meshd", description="A signed, gossiped WireGuard mesh for containers.")
    parser.add_argument("--version", action="version", version=f"meshd {__version__}")
    subparsers: dict[tuple[str, ...], Any] = {
        (): parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for command in commands:
        parent = _subparsers(subparsers, command.path[:-1], groups)
        sub = parent.add_parser(command.path[-1], help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def _subparsers(known: dict[tuple[str, ...], Any], path: tuple[str, ...],
                groups: dict[tuple[str, ...], str]) -> Any:
    """The subparser set for a command group such as `ca`, created on first use."""
    if path not in known:
        parent = _subparsers(known, path[:-1], groups)
        text = groups.get(path, "")
        group = parent.add_parser(path[-1], help=text, description=text)
        known[path] = group.add_subparsers(dest="_".join(path) + "_command", metavar="COMMAND",
                                           required=True)
    return known[path]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    parser = build_parser(COMMANDS, GROUPS)
    try:
        args = parser.parse_args(argv)
        return int(args.run(args))
    except (ArgumentError, UsageError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except MeshdError as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # our reader went away (`meshd watch | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _fail(message: str, status: int) -> int:
    """Print exactly one error line, whatever the message holds."""
    print(f"meshd: error: {' '.join(message.split())}", file=sys.stderr)
    return status


# --- shared argument helpers ----------------------------------------------------


def _dir_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--dir", required=True, type=Path, metavar="DIR", help=help)


def _force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _out_arg(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help=help)
    _force_arg(parser)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(wall_ms: int) -> str:
    """ISO-8601 UTC for a wall-clock millisecond value (as read from a file)."""
    try:
        moment = datetime.fromtimestamp(wall_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"{wall_ms} ms"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_ca_key(folder: Path) -> nacl.signing.SigningKey:
    return keyfiles.load_ca_key(folder / CA_KEY_FILE)


def _write_signed(args: argparse.Namespace, kind: str, signed: wire.Signed,
                  fields: dict[str, Any]) -> int:
    """Write a CA-signed file to --out and show what it says."""
    keyfiles.write_public(args.out, keyfiles.armor_signed(kind, signed), args.force)
    print(_render(fields))
    print(f"wrote {args.out}")
    return EXIT_OK


# --- meshd keygen --------------------------------------------------------------


def _keygen_args(parser: argparse.ArgumentParser) -> None:
    _dir_arg(parser, "folder for node.key, node.pub, wg.key, wg.pub (created 0700)")
    _force_arg(parser)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create a node's identity (Ed25519) and WireGuard (X25519) keys."""
    paths = {name: args.dir / name for name in KEYGEN_FILES}
    keyfiles.refuse_existing(list(paths.values()), args.force)
    keyfiles.ensure_dir(args.dir)
    node_key = identity.signing_key_from_seed(os.urandom(32))
    wg_key = identity.wg_private_from_random(os.urandom(32))
    node_id, wg_pub = identity.public_id(node_key), identity.wg_public(wg_key)
    keyfiles.write_private(paths["node.key"], keyfiles.node_key_text(node_key), args.force)
    keyfiles.write_public(paths["node.pub"], keyfiles.node_pub_text(node_id), args.force)
    keyfiles.write_private(paths["wg.key"], keyfiles.wg_key_text(wg_key), args.force)
    keyfiles.write_public(paths["wg.pub"], keyfiles.wg_key_text(wg_pub), args.force)
    print(f"node id:              {identity.b64(node_id)}")
    print(f"wireguard public key: {identity.b64(wg_pub)}")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return EXIT_OK


# --- meshd ca init -------------------------------------------------------------


def _ca_init_args(parser: argparse.ArgumentParser) -> None:
    _dir_arg(parser, "folder for ca.key (0600) and cluster.pub (created 0700)")
    parser.add_argument("--mesh-prefix", metavar="fdXX::/48",
                        help="the cluster's IPv6 ULA /48 (default: a random one)")
    parser.add_argument("--service-range", metavar="CIDR",
                        default=str(identity.DEFAULT_SERVICE_RANGE),
                        help="IPv4 range for service VIPs (default: %(default)s)")
    parser.add_argument("--dataplane", choices=identity.DATAPLANES, default="routed",
                        help="routed (default) or encap")
    _force_arg(parser)


def random_ula_prefix(raw: bytes) -> ipaddress.IPv6Network:
    """A ULA /48 as RFC 4193 asks: fd, then 40 random bits (`raw` is 5 bytes)."""
    if len(raw) != 5:
        raise UsageError("a ULA global ID is 40 bits")
    address = ipaddress.IPv6Address(b"\xfd" + raw + bytes(10))
    return ipaddress.IPv6Network((address, 48))


def cmd_ca_init(args: argparse.Namespace) -> int:
    """Create the offline cluster CA and the signed cluster parameters."""
    key_path, cluster_path = args.dir / CA_KEY_FILE, args.dir / CLUSTER_FILE
    mesh = (identity.parse_network(args.mesh_prefix, "--mesh-prefix") if args.mesh_prefix
            else random_ula_prefix(os.urandom(5)))
    service = identity.parse_network(args.service_range, "--service-range")
    keyfiles.refuse_existing([key_path, cluster_path], args.force)
    ca_key = identity.signing_key_from_seed(os.urandom(32))
    cluster = Cluster.issue(ca_key, mesh, service, args.dataplane, _wall_ms())  # type: ignore[arg-type]
    keyfiles.ensure_dir(args.dir)
    keyfiles.write_private(key_path, keyfiles.ca_key_text(ca_key), args.force)
    keyfiles.write_public(cluster_path, keyfiles.armor_signed("cluster", cluster.signed), args.force)
    print(_render(describe_cluster(cluster)))
    print(f"wrote {key_path}, {cluster_path}")
    return EXIT_OK


# --- meshd ca sign -------------------------------------------------------------


def _ca_sign_args(parser: argparse.ArgumentParser) -> None:
    _dir_arg(parser, "the CA folder (holds ca.key)")
    parser.add_argument("--node-pub", required=True, type=Path, metavar="FILE",
                        help="the node's node.pub from `meshd keygen`")
    parser.add_argument("--name", required=True, help="the node's name (a DNS label)")
    parser.add_argument("--vpc", action="append", default=[], metavar="NAME=CIDR",
                        help="grant a subnet of a VPC; repeat for more subnets or VPCs")
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS,
                        help="validity in days (default: %(default)s)")
    parser.add_argument("--skew-s", type=int, default=DEFAULT_SKEW_S, metavar="S",
                        help="start the validity this many seconds early, for clock skew "
                             "(default: %(default)s)")
    _out_arg(parser, "where to write the certificate")


def parse_grants(values: Sequence[str]) -> dict[str, list[IPNetwork]]:
    """`NAME=CIDR` items into VPC grants; subnets overlap only across different VPCs."""
    grants: dict[str, list[IPNetwork]] = {}
    for item in values:
        name, sep, cidr = item.partition("=")
        if not sep:
            raise UsageError(f"--vpc {item!r}: expected NAME=CIDR")
        identity.check_label(name, "VPC name")
        subnet = identity.parse_network(cidr, f"--vpc {name}")
        for other in grants.get(name, []):
            if other.version == subnet.version and other.overlaps(subnet):
                raise UsageError(f"--vpc {name}: {subnet} overlaps {other} in the same VPC")
        grants.setdefault(name, []).append(subnet)
    return grants


def _check_validity(days: int, skew_s: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise UsageError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    if not 0 <= skew_s <= 86_400:
        raise UsageError(f"--skew-s must be between 0 and 86400, got {skew_s}")


def cmd_ca_sign(args: argparse.Namespace) -> int:
    """Issue a node certificate: node ID, name, VPC grants, validity window."""
    identity.check_label(args.name, "node name")
    grants = parse_grants(args.vpc)
    _check_validity(args.days, args.skew_s)
    keyfiles.refuse_existing([args.out], args.force)
    ca_key = _load_ca_key(args.dir)
    node_id = keyfiles.load_node_pub(args.node_pub)
    now_ms = _wall_ms()
    cert = Certificate.issue(ca_key, node_id, args.name, grants,
                             not_before_ms=now_ms - args.skew_s * 1000,
                             not_after_ms=now_ms + args.days * MS_PER_DAY,
                             serial=os.urandom(identity.SERIAL_BYTES))
    return _write_signed(args, "cert", cert.signed, describe_certificate(cert))


# --- meshd ca revoke -----------------------------------------------------------


def _ca_revoke_args(parser: argparse.ArgumentParser) -> None:
    _dir_arg(parser, "the CA folder (holds ca.key)")
    parser.add_argument("--cert", required=True, type=Path, metavar="FILE",
                        help="the certificate to revoke")
    _out_arg(parser, "where to write the revocation")


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    """Sign a revocation of one certificate, to be gossiped to every node."""
    keyfiles.refuse_existing([args.out], args.force)
    ca_key = _load_ca_key(args.dir)
    cert = keyfiles.load_certificate(args.cert)
    revocation = Revocation.issue(ca_key, cert, _wall_ms())
    return _write_signed(args, "revocation", revocation.signed, describe_revocation(revocation))


# --- meshd ca show -------------------------------------------------------------


def _ca_show_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="any meshd key, cert or cluster file")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def describe_node_key(key: nacl.signing.SigningKey) -> dict[str, Any]:
    return {"type": "node key", "node_id": identity.b64(identity.public_id(key))}


def describe_node_pub(node_id: bytes) -> dict[str, Any]:
    return {"type": "node public key", "node_id": identity.b64(node_id)}


def describe_ca_key(key: nacl.signing.SigningKey) -> dict[str, Any]:
    return {"type": "ca key", "ca_id": identity.b64(identity.public_id(key))}


def describe_cluster(cluster: Cluster) -> dict[str, Any]:
    return {"type": "cluster", "ca_id": identity.b64(cluster.ca_id),
            "mesh_prefix": str(cluster.mesh_prefix), "service_range": str(cluster.service_range),
            "dataplane": cluster.dataplane, "created": _iso(cluster.created_ms)}


def describe_certificate(cert: Certificate) -> dict[str, Any]:
    return {"type": "certificate", "name": cert.name, "node_id": identity.b64(cert.node_id),
            "vpcs": {vpc: [str(n) for n in nets] for vpc, nets in cert.vpcs.items()},
            "not_before": _iso(cert.not_before_ms), "not_after": _iso(cert.not_after_ms),
            "serial": cert.serial.hex(), "issuer": identity.b64(cert.issuer)}


def describe_revocation(rev: Revocation) -> dict[str, Any]:
    return {"type": "revocation", "serial": rev.serial.hex(), "node_id": identity.b64(rev.node_id),
            "revoked_at": _iso(rev.revoked_ms), "until": _iso(rev.until_ms),
            "issuer": identity.b64(rev.issuer)}


# What `ca show` prints for each kind of file; secrets have no field here.
DESCRIBERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "node.key": describe_node_key,
    "node.pub": describe_node_pub,
    "ca.key": describe_ca_key,
    "cluster": describe_cluster,
    "cert": describe_certificate,
    "revocation": describe_revocation,
}


def _render(fields: dict[str, Any]) -> str:
    """`key: value` lines for people; nested maps and lists stay on one line."""
    width = max(len(key) for key in fields) + 1
    return "\n".join(f"{key.replace('_', ' ') + ':':<{width}} {_text(value)}"
                     for key, value in fields.items())


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}={' '.join(v)}" for k, v in value.items()) or "(none)"
    return str(value)


def cmd_ca_show(args: argparse.Namespace) -> int:
    """Print what a meshd file says, never the secret inside a key file."""
    kind, obj = keyfiles.load_any(args.file)
    fields = DESCRIBERS[kind](obj)
    print(json.dumps(fields, indent=2) if args.json else _render(fields))
    return EXIT_OK


# --- meshd agent ---------------------------------------------------------------


def _agent_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE",
                        help="the agent's TOML configuration")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="log verbosity on stderr (default: %(default)s)")


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM or SIGINT, then leave the cluster gracefully."""
    settings = config.load(args.config)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    asyncio.run(_run_agent(settings))
    return EXIT_OK


async def _run_agent(settings: config.Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(settings).run(None, stop)


# --- client commands: members, status, tags, watch, join -------------------------


def _socket_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, default=config.DEFAULT_CONTROL_SOCKET,
                        metavar="PATH", help="the agent's control socket (default: %(default)s)")


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _client(path: Path) -> Any:
    """The control client, imported here: the daemon (`meshd agent`) never needs
    the HTTP client stack, and every host runs the daemon."""
    from meshd.client import Client

    return Client(path)


def _client_args(parser: argparse.ArgumentParser) -> None:
    _socket_arg(parser)
    _json_arg(parser)


def _table(columns: Sequence[tuple[str, Callable[[Any], str]]], rows: Sequence[Any]) -> str:
    """Left-aligned columns for people; a header row first."""
    cells = [[head for head, _ in columns], *([get(row) for _, get in columns] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _pairs(mapping: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(mapping.items())) or "-"


MEMBER_COLUMNS: list[tuple[str, Callable[[Any], str]]] = [
    ("NAME", lambda m: m["name"]),
    ("STATE", lambda m: m["state"]),
    ("ADDRESS", lambda m: m["addresses"][0] if m["addresses"] else "-"),
    ("TAGS", lambda m: _pairs(m["tags"])),
    ("ID", lambda m: m["id"][:12]),
]


def cmd_members(args: argparse.Namespace) -> int:
    """List every member the agent knows, itself included."""
    members = _client(args.socket).members()
    print(json.dumps(members, indent=2) if args.json else _table(MEMBER_COLUMNS, members))
    return EXIT_OK


def _inline(value: Any) -> str:
    return _pairs(value) if isinstance(value, dict) else str(value)


def cmd_status(args: argparse.Namespace) -> int:
    """Show this node: identity, addresses, member counts, traffic, drops."""
    status = _client(args.socket).status()
    print(json.dumps(status, indent=2) if args.json
          else _render({key: _inline(value) for key, value in status.items()}))
    return EXIT_OK


def _tags_set_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", nargs="+", metavar="KEY=VALUE", help="tags to set")
    _client_args(parser)


def _tags_unset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("keys", nargs="+", metavar="KEY", help="tags to remove")
    _client_args(parser)


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    """`KEY=VALUE` arguments into a dict; the value may be empty, the key may not."""
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def _print_tags(tags: dict[str, str], as_json: bool) -> int:
    if as_json:
        print(json.dumps(tags, indent=2))
    else:
        print("\n".join(f"{key}={value}" for key, value in sorted(tags.items())) or "(no tags)")
    return EXIT_OK


def cmd_tags_set(args: argparse.Namespace) -> int:
    """Set tags on this node (a newer signed node record, gossiped at once)."""
    return _print_tags(_client(args.socket).set_tags(parse_tags(args.pairs)), args.json)


def cmd_tags_unset(args: argparse.Namespace) -> int:
    """Remove tags from this node."""
    return _print_tags(_client(args.socket).set_tags({}, args.keys), args.json)


def _event_line(event: dict[str, Any]) -> str:
    """One event for people: when, what, who."""
    if event.get("event") == "lost":
        return f"{event['count']} events lost (this watcher fell behind)"
    member = event["member"]
    return (f"{_iso(event['wall_ms'])} {event['event']:<7} {member['name']} "
            f"state={member['state']} incarnation={member['incarnation']} "
            f"tags={_pairs(member['tags'])}")


def cmd_watch(args: argparse.Namespace) -> int:
    """Print membership events as this node learns them, until the agent stops."""
    for event in _client(args.socket).watch():
        print(json.dumps(event) if args.json else _event_line(event), flush=True)
    return EXIT_OK


def _join_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("seeds", nargs="+", metavar="HOST:PORT", help="gossip addresses to join")
    _socket_arg(parser)


def cmd_join(args: argparse.Namespace) -> int:
    """Ask a running agent to join a cluster through more seeds."""
    seeds = _client(args.socket).join(args.seeds)
    print(f"hello sent to {', '.join(seeds)}")
    return EXIT_OK


# --- meshd demo ----------------------------------------------------------------


def _demo_args(parser: argparse.ArgumentParser) -> None:
    """The demo takes no options: it builds everything it needs in a temporary folder."""


def cmd_demo(args: argparse.Namespace) -> int:
    """Build a small mesh on this machine, show it working, clean up."""
    from meshd import demo   # process and temp-dir tooling the daemon never loads

    return demo.run()


# --- the command table ---------------------------------------------------------

GROUPS: dict[tuple[str, ...], str] = {
    ("ca",): "the offline cluster CA: init, sign, revoke, show",
    ("tags",): "this node's tags: set, unset",
}

COMMANDS: list[Command] = [
    Command(("keygen",), "create a node's Ed25519 and WireGuard keys", _keygen_args, cmd_keygen),
    Command(("ca", "init"), "create the cluster CA and cluster.pub", _ca_init_args, cmd_ca_init),
    Command(("ca", "sign"), "issue a node certificate", _ca_sign_args, cmd_ca_sign),
    Command(("ca", "revoke"), "revoke a node certificate", _ca_revoke_args, cmd_ca_revoke),
    Command(("ca", "show"), "print any meshd key, cert or cluster file", _ca_show_args,
            cmd_ca_show),
    Command(("agent",), "run the daemon (SIGTERM: leave the cluster and exit)", _agent_args,
            cmd_agent),
    Command(("members",), "list the members this node knows", _client_args, cmd_members),
    Command(("status",), "show this node's state and counters", _client_args, cmd_status),
    Command(("tags", "set"), "set tags on this node", _tags_set_args, cmd_tags_set),
    Command(("tags", "unset"), "remove tags from this node", _tags_unset_args, cmd_tags_unset),
    Command(("watch",), "print membership events as they happen", _client_args, cmd_watch),
    Command(("join",), "join a cluster through more seeds", _join_args, cmd_join),
    Command(("demo",), "run a small local mesh and show it working", _demo_args, cmd_demo),
]


if __name__ == "__main__":
    sys.exit(main())
