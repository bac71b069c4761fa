"""`--forward-headers REGEX`: which other request headers reach the backend over HTTP (Triton's
`--http-header-forward-pattern`).

A header whose lower-case name the pattern matches (`re.search`, case-insensitive, as a partial match) is passed
on, on top of the protocol's own (`gateway.http_dataplane.FORWARD_HEADERS`). Hop-by-hop headers, credentials
and modelyard's own controls are passed on only when the pattern names them literally (`authorization` in
`^(x-user|authorization)$`): a broad pattern such as `.*` never leaks a token or breaks the connection.
"""

from __future__ import annotations

import re

from adapters.http_forward import HOP_BY_HOP

SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"}) | HOP_BY_HOP


class HeaderForwarding:
    """`passes(name)`: whether the request header `name` (lower-case) goes on under the configured pattern."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._re = re.compile(pattern, re.IGNORECASE) if pattern else None
        self._named = pattern.lower()
        self._cache: dict[str, bool] = {}

    def passes(self, name: str) -> bool:
        if self._re is None:
            return False
        known = self._cache.get(name)
        if known is None:
            known = self._re.search(name) is not None
            if known and (name in SENSITIVE or name.startswith("x-modelyard-")):
                known = name in self._named
            if len(self._cache) < 4096:
                self._cache[name] = known
        return known
