"""Sequence affinity: every request of a sequence (`sequence_id`) goes to the copy that took its start.

Stateful models (Triton's sequence batcher) keep a sequence's state in one copy; a step sent to another copy
fails ("must specify the START flag") or, worse, lands on a stale state and answers wrongly. So:

- The copy is chosen by rendezvous hashing of (model, sequence id) over the model's ready copies. Every gateway
  that sees the same ready copies picks the same one with no Redis round trip: a sequence start costs nothing
  more than any warm request. (Recording the choice in Redis at the start would be a write on the request path
  of every start, and a read on every gateway's first sight of a sequence; hashing needs neither.)
- Each gateway pins a sequence to the copy it chose at first sight, until the sequence ends or stays idle for
  `idle_timeout` seconds. A pin does not move when copies come or go: when its copy is no longer ready, the
  sequence gets `SequenceLost` (a clear error: start the sequence again), never a silent switch to another copy
  that holds none of its state.

Known limit, said plainly: a gateway that first sees a sequence in its middle, after the model's set of ready
copies changed since the start, hashes over the new set and may pick another copy than the start's (rendezvous
hashing moves only the sequences of a copy that went away, plus about 1/n of them when a copy is added). The
copy that holds the state then answers with its own error ("must specify the START flag"), passed through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from placement.clock import Clock
from placement.errors import InvalidSpec


class SequenceLost(InvalidSpec):
    """The copy that holds a sequence's state is gone: the client must start the sequence again.

    An invalid request from here on (400, INVALID_ARGUMENT), as Triton answers a step of a sequence it has not
    seen start."""


@dataclass(frozen=True, slots=True)
class SequenceFlags:
    """The sequence parameters of one request, as Triton reads them."""

    id: str  # Triton takes an unsigned integer or a string; both are kept as text (0 and "" mean none)
    start: bool = False
    end: bool = False


@dataclass(slots=True)
class _Pin:
    backend: str
    last_seen: float


def _score(model: str, seq: str, backend: str) -> bytes:
    return hashlib.blake2b(f"{model}\0{seq}\0{backend}".encode(), digest_size=8).digest()


def rendezvous(model: str, seq: str, backends: Sequence[str]) -> str:
    """The copy of `backends` (non-empty) that a sequence hashes to; the same on every gateway."""
    return max(backends, key=lambda b: _score(model, seq, b))


class SequenceAffinity:
    """Where each live sequence runs, as this gateway knows it (pins expire after `idle_timeout` seconds)."""

    def __init__(self, clock: Clock, idle_timeout: float = 600.0, max_pins: int = 100_000) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_pins = max_pins
        self._pins: dict[tuple[str, str], _Pin] = {}
        self._next_sweep = 0.0

    def choose(self, model: str, seq: SequenceFlags, ready: Sequence[str]) -> str | None:
        """The backend for this request of sequence `seq` of `model`, given the model's ready copies.

        None when there is no ready copy and no pin: the caller loads the model and calls `choose` again.
        Raises `SequenceLost` when the sequence (not at its start) is pinned to a copy that is no longer ready.
        """
        now = self.clock.now()
        self._sweep(now)
        key = (model, seq.id)
        pin = self._pins.get(key)
        if pin is not None and not seq.start:
            if pin.backend not in ready:
                del self._pins[key]
                raise SequenceLost(
                    f"sequence {seq.id} of model {model!r} ran on backend {pin.backend}, whose copy is gone "
                    "(evicted, unloaded or unreachable) with the sequence's state; start the sequence again "
                    "(sequence_start=true)"
                )
            pin.last_seen = now
            return pin.backend
        if not ready:
            return None
        backend = rendezvous(model, seq.id, ready)
        if len(self._pins) < self.max_pins or key in self._pins:
            self._pins[key] = _Pin(backend, now)
        return backend

    def finished(self, model: str, seq: SequenceFlags) -> None:
        """The request that ended the sequence was answered: forget its pin."""
        self._pins.pop((model, seq.id), None)

    def live_on(self, backend: str, model: str | None = None) -> int:
        """How many live sequences this gateway has pinned to `backend` (of `model`, if given)."""
        now = self.clock.now()
        return sum(
            1
            for (m, _), pin in self._pins.items()
            if pin.backend == backend and (model is None or m == model) and now - pin.last_seen < self.idle_timeout
        )

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.idle_timeout / 4
        for key in [k for k, p in self._pins.items() if now - p.last_seen >= self.idle_timeout]:
            del self._pins[key]
