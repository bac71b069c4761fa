"""`modelyard apply|diff|get|rollout`: argument parsing and output. Exit status: 0 success, 1 a change the
gateway refused (or an unreachable gateway, or a wrong token), 2 a bad fleet file or bad usage; `diff` exits 1
when there are differences."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx
import yaml

from gateway.ctl import show
from gateway.ctl.client import AdminClient
from gateway.ctl.errors import USAGE, CtlError
from gateway.ctl.fleet import SINGULAR, load_fleet
from gateway.ctl.plan import execute, hold_rollouts, make_plan
from gateway.ctl.rollout import add_rollout, run_rollout

DEFAULT_URL = "http://127.0.0.1:8080"
RAW = argparse.RawDescriptionHelpFormatter


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("MODELYARD_URL") or DEFAULT_URL,
        help=f"the gateway's HTTP address [MODELYARD_URL, default {DEFAULT_URL}]",
    )
    p.add_argument(
        "--token", default=os.environ.get("MODELYARD_ADMIN_TOKEN") or None, help="admin token [MODELYARD_ADMIN_TOKEN]"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelyard", description="The admin API's client.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "apply": (
            "make the gateway match a fleet file",
            "Create what is missing, update what differs, leave what is equal alone; with --prune, delete\n"
            "what the file does not name. The whole file is checked before anything is written.\n\n"
            "example:\n  modelyard apply -f fleet.yaml --prune --url http://gw:8080 --token $TOKEN",
        ),
        "diff": (
            "what apply would do, without doing it",
            "Exit status 1 when the gateway differs from the file.\n\nexample:\n  modelyard diff -f fleet.yaml --prune",
        ),
    }
    for command, (summary, description) in commands.items():
        p = sub.add_parser(command, help=summary, formatter_class=RAW, description=description)
        p.add_argument("-f", "--file", required=True, help="fleet file, YAML or JSON (- for stdin)")
        p.add_argument("--prune", action="store_true", help="delete backends, models and routes the file leaves out")
        if command == "apply":
            p.add_argument("--dry-run", action="store_true", help="print what would happen, write nothing")
        _common(p)
    p = sub.add_parser(
        "get",
        help="show backends, models, routes, placement, or all as a fleet file",
        formatter_class=RAW,
        description="Tables for people by default. `get all -o yaml` prints a fleet file of the whole registry\n"
        "that `apply` takes back into an empty gateway (a backup).\n\n"
        "examples:\n  modelyard get models\n  modelyard get backends triton-a -o json\n"
        "  modelyard get all -o yaml > backup.yaml && modelyard apply -f backup.yaml",
    )
    p.add_argument("what", choices=["backends", "models", "routes", "placement", "all"])
    p.add_argument("name", nargs="?", help="one backend, model or route")
    p.add_argument("-o", "--output", choices=["table", "yaml", "json"], default="table")
    _common(p)
    add_rollout(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        print(f"modelyard {args.command}: --url must look like http://host:port, got {args.url!r}", file=sys.stderr)
        return USAGE
    client = AdminClient(args.url, args.token)
    try:
        return _run(args, client)
    except CtlError as exc:
        print(f"modelyard {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except httpx.InvalidURL as exc:
        print(f"modelyard {args.command}: --url {args.url!r} is not a valid URL: {exc}", file=sys.stderr)
        return USAGE
    except BrokenPipeError:  # `modelyard get models | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        client.close()


def _run(args: argparse.Namespace, client: AdminClient) -> int:
    if args.command in ("apply", "diff"):
        desired = load_fleet(args.file)  # a bad file stops here, before the gateway is asked anything
        plan = hold_rollouts(client, make_plan(desired, client.fleet(), args.prune, args.file))
        if args.command == "diff":
            differences = [a for a in plan if a.verb != "unchanged"]
            for a in differences:
                print(a.line() if a.verb == "held" else f"{SINGULAR[a.kind]}/{a.name} would be {a.verb}")
                for line in a.field_changes():
                    print(line)
            if not differences:
                print("no differences")
            return 1 if differences else 0
        if args.dry_run:
            for a in plan:
                print(f"{a.line()} (dry run)")
            return 0
        execute(client, plan)
        return 0
    if args.command == "get":
        return _get(args, client)
    return run_rollout(args, client)


def _dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)
    return text.rstrip()


def _get(args: argparse.Namespace, client: AdminClient) -> int:
    what, name, fmt = args.what, args.name, args.output
    if what == "all":
        if name:
            raise CtlError("get all takes no NAME", USAGE)
        if fmt == "table":
            for title, kind in (("BACKENDS", "backends"), ("MODELS", "models"), ("ROUTES", "routes")):
                print(f"{title}\n{_table(kind, _records(client, kind, None))}\n")
            return 0
        print(_dump(client.fleet().to_file(), fmt))
        return 0
    if what == "placement":
        data = client.call("GET", "/admin/placement")
        if name:
            if name not in data["backends"]:
                raise CtlError(f"backend {name!r} is not registered")
            data = {"backends": {name: data["backends"][name]}}
        print(show.placement_table(data) if fmt == "table" else _dump(data, fmt))
        return 0
    records = _records(client, what, name)
    if fmt != "table":
        print(_dump(records[0] if name else {what: records}, fmt))
        return 0
    print(_table(what, records))
    return 0


def _records(client: AdminClient, kind: str, name: str | None) -> list[dict[str, Any]]:
    if name:
        return [client.call("GET", f"/admin/{kind}/{name}")]
    return client.backends() if kind == "backends" else client.models() if kind == "models" else client.routes()


def _table(kind: str, records: list[dict[str, Any]]) -> str:
    if kind == "backends":
        return show.backends_table(records)
    if kind == "models":
        return show.models_table(records)
    return show.routes_table(records)
