"""`modelyard serve` introspected: the flags and MODELYARD_* variables are read from `gateway.cli`'s argparse
parser, not from a list kept here; and reading the command lines that deployment files give.
"""

from __future__ import annotations

import os
import re
from typing import Any
from unittest import mock

from gateway.cli import build_parser


def _serve_parser() -> Any:
    # The parser reads MODELYARD_* from the environment for its defaults: build it without any.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        parser = build_parser()
    for action in parser._actions:
        if action.choices and "serve" in action.choices:
            return action.choices["serve"]
    raise AssertionError("gateway.cli has no `serve` subcommand")


SERVE = _serve_parser()
SERVE_FLAGS: dict[str, str] = {}  # flag -> env var
SERVE_DEFAULTS: dict[str, Any] = {}  # env var -> default
for _action in SERVE._actions:
    if not _action.option_strings or _action.dest == "help":
        continue
    _env = re.search(r"\[(MODELYARD_[A-Z0-9_]+)\]", _action.help or "")
    assert _env, f"serve flag {_action.option_strings} names no MODELYARD_* variable in its help"
    for _flag in _action.option_strings:
        SERVE_FLAGS[_flag] = _env.group(1)
    SERVE_DEFAULTS[_env.group(1)] = _action.default
SERVE_ENV = set(SERVE_FLAGS.values())


def check_serve_args(args: list[str], where: str) -> None:
    """Every `--flag` in `args` is one `modelyard serve` accepts."""
    for arg in args:
        if arg.startswith("--"):
            flag = arg.split("=", 1)[0]
            assert flag in SERVE_FLAGS, f"{where}: `modelyard serve` has no flag {flag} (it has {sorted(SERVE_FLAGS)})"


def check_serve_env(names: list[str], where: str) -> None:
    for name in names:
        if name.startswith("MODELYARD_"):
            assert name in SERVE_ENV, f"{where}: `modelyard serve` reads no {name} (it reads {sorted(SERVE_ENV)})"


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in `args`, given as `--flag=value` or `--flag value`; None if absent."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def port_of(address: str) -> int:
    """`:9000`, `0.0.0.0:9000` or `9000` -> 9000."""
    return int(address.rsplit(":", 1)[-1])


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]
