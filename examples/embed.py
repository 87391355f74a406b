#!/usr/bin/env python3
"""Embed a meshd node in an asyncio program and print membership events.

    python examples/embed.py --config node.toml [--tag role=worker]

The config is an ordinary `meshd agent` TOML file (membership-only: no
`[wireguard]` section, no root needed). The node runs on a thread of its own,
so this program may block its loop without being declared dead. Ctrl-C (or
SIGTERM) leaves the cluster gracefully: the node publishes a signed `left`
record before the program exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import meshd


async def print_events(node: meshd.Node, events: meshd.events.Subscription) -> None:
    """One line per event; a gap in the stream is resynced from `members()`."""
    async for event in events:
        match event:
            case meshd.EventsLost(count=count):
                print(f"lost {count} events; members now: "
                      f"{', '.join(f'{m.name}={m.state}' for m in node.members())}", flush=True)
            case meshd.MemberTagsChanged(member=member):
                print(f"tags    {member.name} {dict(member.tags)}", flush=True)
            case meshd.MemberEvent(member=member):
                print(f"{event.kind:<7} {member.name} ({member.state}, "
                      f"incarnation {member.incarnation})", flush=True)


async def main(config: meshd.Config, tags: dict[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # the program's choice: a Node never does this
    node = meshd.Node(config)
    events = node.events()  # subscribed before the start, so not even the first join is missed
    async with node:
        if tags:
            await node.set_tags(tags)
        print(f"node {node.name} is up; members: "
              f"{', '.join(m.name for m in node.members())}", flush=True)
        async with asyncio.TaskGroup() as group:
            printer = group.create_task(print_events(node, events))
            await stop.wait()
            printer.cancel()
    print("left the cluster", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a meshd agent TOML file")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="a tag to publish (repeatable)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    try:
        settings = meshd.load_config(args.config)
        asyncio.run(main(settings, dict(t.partition("=")[::2] for t in args.tag)))
    except meshd.MeshdError as exc:
        print(f"embed: error: {exc}", file=sys.stderr)
        sys.exit(1)
