"""The introspection of `modelyard serve` the deployment checks rely on."""

from __future__ import annotations

from tests.deploy.serve_cli import SERVE_DEFAULTS, SERVE_FLAGS


def test_the_serve_parser_was_introspected() -> None:
    # Guards the introspection itself: if gateway.cli changed shape, the checks below would pass vacuously.
    assert {"--host", "--http-port", "--grpc-port", "--redis-url", "--admin-token"} <= set(SERVE_FLAGS)
    assert SERVE_FLAGS["--http-port"] == "MODELYARD_HTTP_PORT"
    assert str(SERVE_DEFAULTS["MODELYARD_HTTP_PORT"]) == "8080"
