"""Which model of a route answers one request: a policy of one method, `Router.choose`.

- `x-modelyard-target: <model>` picks that model when it is one of the route's splits (weight 0 included, so an
  operator can send test traffic to a model that gets no share); any other model is a 400 naming the splits.
- With a `sticky_header` and that header in the request, the model comes from weighted rendezvous hashing
  (highest random weight, logarithmic method): every model scores `-weight / ln(u)`, with `u` a hash of the header
  value and the model's name mapped into (0, 1), and the highest score wins. The same value always gets the
  same model; across many values the shares follow the weights; changing one model's weight moves only the
  users that move to or from that model (others keep their score order), the fewest any weighted scheme can.
- Otherwise a weighted draw from an injected `random.Random` (seedable in tests).

Splits whose model is not registered (the view can lag behind a deletion) are skipped.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Container

from gateway.errors import BadRequest
from placement.errors import UnknownModel
from placement.records import RouteSpec, Split

TARGET_HEADER = "x-modelyard-target"
HeaderLookup = Callable[[str], str | None]
_SCALE = float(1 << 64)


def no_headers(_name: str) -> str | None:
    return None


def rendezvous_score(key: bytes, split: Split) -> float:
    """The score of `split` for one sticky key; the highest score wins. Stable across processes and versions."""
    digest = hashlib.blake2b(split.model.encode() + b"\x00" + key, digest_size=8).digest()
    # (h + 0.5) / 2**64 is in (0, 1): never 0 (ln 0) nor 1 (ln 1 = 0).
    u = (int.from_bytes(digest, "big") + 0.5) / _SCALE
    return -split.weight / math.log(u)


class Router:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def choose(self, route: RouteSpec, header: HeaderLookup, registered: Container[str]) -> str:
        target = header(TARGET_HEADER)
        if target is not None:
            names = [s.model for s in route.splits]
            if target not in names:
                raise BadRequest(
                    f"{TARGET_HEADER}: {target!r} is not one of route {route.name!r}'s models; it can target {names}"
                )
            return target
        splits = [s for s in route.splits if s.weight > 0 and s.model in registered]
        if not splits:
            raise UnknownModel(f"route {route.name!r} has no registered model with a positive weight left")
        if len(splits) == 1:
            return splits[0].model
        if route.sticky_header is not None:
            value = header(route.sticky_header)
            if value is not None:
                key = value.encode("utf-8", "surrogateescape")
                return max(splits, key=lambda s: rendezvous_score(key, s)).model
        point = self.rng.random() * sum(s.weight for s in splits)
        for s in splits:
            point -= s.weight
            if point < 0:
                return s.model
        return splits[-1].model
