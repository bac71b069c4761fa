"""`--forward-headers`: which request headers the HTTP data plane passes on to the backend."""

from __future__ import annotations

from gateway.cli import build_parser, settings_from_args
from gateway.forward_headers import HeaderForwarding
from gateway.http_dataplane import forward_headers


def _scope(*headers: tuple[str, str]) -> dict[str, object]:
    return {"headers": [(k.encode(), v.encode()) for k, v in headers]}


def test_matching_headers_go_on_but_credentials_and_hop_by_hop_only_when_named() -> None:
    scope = _scope(
        ("content-type", "application/json"),
        ("x-user-id", "7"),
        ("x-tenant", "a"),
        ("authorization", "Bearer secret"),
        ("connection", "close"),
        ("cookie", "s=1"),
        ("x-modelyard-target", "m"),
    )
    assert forward_headers(scope) == [("content-type", "application/json")]  # type: ignore[arg-type]
    broad = forward_headers(scope, HeaderForwarding(".*"))  # type: ignore[arg-type]
    assert broad == [("content-type", "application/json"), ("x-user-id", "7"), ("x-tenant", "a")]
    named = forward_headers(scope, HeaderForwarding("^(x-user-.*|Authorization)$"))  # type: ignore[arg-type]
    assert named == [("content-type", "application/json"), ("x-user-id", "7"), ("authorization", "Bearer secret")]
    assert not HeaderForwarding("").passes("x-user-id")


def test_the_flag_and_its_environment_variable() -> None:
    args = build_parser().parse_args(["serve", "--admin-token", "t", "--forward-headers", "^x-user-"])
    assert settings_from_args(args).forward_headers == "^x-user-"
