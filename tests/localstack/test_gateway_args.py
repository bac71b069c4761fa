"""The command line the local stack gives `modelyard serve` means what it says, whatever the token looks like."""

from __future__ import annotations

from pathlib import Path

from deploy.localstack.stack import GatewayProcess
from gateway.cli import build_parser


def test_a_token_that_starts_with_a_dash_reaches_the_gateway_as_a_token(tmp_path: Path) -> None:
    # secrets.token_urlsafe starts with '-' about once in 32 calls; argparse took it for a flag (a flaky demo).
    gw = GatewayProcess("redis://127.0.0.1:1/0", tmp_path, token="-Xj9_token", prefix="-p")
    args = build_parser().parse_args(gw.args[gw.args.index("serve") :])
    assert args.admin_token == "-Xj9_token" and args.redis_prefix == "-p"
    assert args.http_port == gw.http_port and args.grpc_port == gw.grpc_port
