"""A disk cache of model files, bounded in bytes, least recently used out first.

Layout under the cache's root:

    entries/<key>/meta.json    {"bytes": N, "label": "<source>"}; its mtime is the entry's last use
    entries/<key>/files/...    the model directory
    tmp/<key>.<pid>.<rand>/    a download in progress (renamed to entries/<key> when complete)
    locks/<key>.lock           the entry's lock: shared while a load reads it, exclusive while it is filled
                               or evicted
    cache.lock                 exclusive while the cache's size is counted and entries are evicted

- **One download per entry.** In one process, every caller that wants a missing entry awaits the same fill task;
  across processes sharing the directory, the fill holds the entry's exclusive lock, and whoever gets it next
  finds the entry there.
- **Never a half-written entry.** A fill writes into `tmp/` and renames the finished directory into `entries/`;
  a failed fill leaves nothing behind. An entry that exists is complete.
- **Bounded.** Before a fill downloads, it reserves the bytes it will write (`reserve(n)`), which evicts least
  recently used entries until the entries plus this process's reservations fit the bound; after the rename the
  bound is checked again with the real size. An entry in use (its shared lock held) is never evicted: a reserve
  that can only be met by evicting entries in use waits for them, then fails saying so. An entry larger than the
  whole bound fails at once.
- The key is the caller's (`adapters.sources` uses the source's identity: a changed source is a new entry, and
  the old one ages out).

Every file-system call that can take time runs in a worker thread; lock attempts are non-blocking and polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("modelyard.cache")

Reserve = Callable[[int], Awaitable[None]]
Fill = Callable[[Path, Reserve], Awaitable[None]]

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_POLL = 0.05


class CacheError(Exception):
    """The cache could not hold an entry (too large for the bound, or full of entries in use)."""


@dataclass(frozen=True, slots=True)
class EntryInfo:
    key: str
    bytes: int
    last_used: float


class _Lock:
    """An flock on a lock file, checked to still be the file at its path (a lock file is removed with its entry:
    a lock taken on a file that was unlinked meanwhile is dropped and taken again)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def try_acquire(self, exclusive: bool) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)  # the file was replaced while we locked it: lock the one at the path now

    async def acquire(self, exclusive: bool) -> None:
        # flock can't be awaited: poll without blocking (a blocking flock would hold a worker thread, unbounded).
        while not self.try_acquire(exclusive):  # noqa: ASYNC110
            await asyncio.sleep(_POLL)

    def release(self, unlink: bool = False) -> None:
        if self.fd is None:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


class ModelCache:
    def __init__(self, root: Path, max_bytes: int, *, room_wait: float = 30.0) -> None:
        if max_bytes <= 0:
            raise ValueError("the model cache's bound must be positive")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.room_wait = room_wait  # how long a reserve waits for entries in use to be released
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._filling: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0
        self._room = asyncio.Lock()
        self._ready = False

    # -- paths -----------------------------------------------------------------------------------------------
    def _entry(self, key: str) -> Path:
        return self.root / "entries" / key

    def _lock(self, key: str) -> _Lock:
        return _Lock(self.root / "locks" / f"{key}.lock")

    def _setup(self) -> None:
        for sub in ("entries", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # Downloads and evictions left by processes that died: their pid is in the name.
        for path in (self.root / "tmp").iterdir():
            pid = path.name.split(".")[1] if path.name.count(".") >= 2 else ""
            if not pid.isdigit() or not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)

    async def _ensure_setup(self) -> None:
        if not self._ready:
            await asyncio.to_thread(self._setup)
            self._ready = True

    # -- the API ---------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def use(self, key: str, fill: Fill, *, label: str = "") -> AsyncIterator[Path]:
        """The entry's files directory, filled by `fill(dir, reserve)` if missing; it cannot be evicted until the
        body ends. `fill` must call `reserve(n)` with the bytes it will write before writing them."""
        if not _KEY_RE.match(key):
            raise ValueError(f"bad cache key {key!r}")
        await self._ensure_setup()
        filled = False
        for _ in range(3):
            lock = self._lock(key)
            await lock.acquire(exclusive=False)
            try:
                present = await asyncio.to_thread(self._touch, key)
                if present:
                    if not filled:
                        self.hits += 1
                    yield self._entry(key) / "files"
                    return
            finally:
                lock.release()
            filled = True
            self.misses += 1
            await self._fill_once(key, fill, label)
        raise CacheError(
            f"the cache entry {key} was evicted again and again right after it was filled; is the bound too small?"
        )

    def _touch(self, key: str) -> bool:
        now = time.time_ns()  # not the kernel's coarse clock: two uses a millisecond apart must keep their order
        try:
            os.utime(self._entry(key) / "meta.json", ns=(now, now))
        except FileNotFoundError:
            return False
        return True

    async def _fill_once(self, key: str, fill: Fill, label: str) -> None:
        task = self._filling.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(key, fill, label), name=f"modelyard-cache-fill-{key}")
            self._filling[key] = task
            task.add_done_callback(lambda t: self._filled(key, t))
        await asyncio.shield(task)

    def _filled(self, key: str, task: asyncio.Task[None]) -> None:
        self._filling.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here too: every waiter may have gone (their loads timed out)

    async def _fill(self, key: str, fill: Fill, label: str) -> None:
        lock = self._lock(key)
        await lock.acquire(exclusive=True)
        reserved = 0
        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            if await asyncio.to_thread(self._entry(key).is_dir):
                return  # another process filled it while we waited for the lock
            await asyncio.to_thread((tmp / "files").mkdir, parents=True)

            async def reserve(n: int) -> None:
                nonlocal reserved
                await self._make_room(n, keep=key)
                self._reserved += n
                reserved += n

            await fill(tmp / "files", reserve)
            size = await asyncio.to_thread(self._commit, key, tmp, label)
            log.info("cached %s as %s (%d bytes)", label or key, key, size)
        finally:
            self._reserved -= reserved
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            lock.release()
        await self._make_room(0, keep=key)

    def _commit(self, key: str, tmp: Path, label: str) -> int:
        size = sum(p.stat().st_size for p in (tmp / "files").rglob("*") if p.is_file())
        (tmp / "meta.json").write_text(json.dumps({"bytes": size, "label": label}))
        os.rename(tmp, self._entry(key))
        return size

    # -- the bound -------------------------------------------------------------------------------------------
    def entries(self) -> list[EntryInfo]:
        """Every complete entry, least recently used first (blocking: file-system reads)."""
        out = []
        for path in (self.root / "entries").iterdir():
            try:
                meta = path / "meta.json"
                out.append(EntryInfo(path.name, int(json.loads(meta.read_text())["bytes"]), meta.stat().st_mtime))
            except (OSError, ValueError, KeyError):
                continue  # being evicted, or not an entry
        out.sort(key=lambda e: e.last_used)
        return out

    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries())

    async def _make_room(self, n: int, keep: str) -> None:
        """Evict least recently used entries until the entries, this process's reservations and `n` fit."""
        if n > self.max_bytes:
            raise CacheError(
                f"the model is {n} bytes, more than the whole model cache holds ({self.max_bytes} bytes, "
                "--model-cache-bytes)"
            )
        deadline = time.monotonic() + self.room_wait
        while True:
            async with self._room:
                glock = _Lock(self.root / "cache.lock")
                await glock.acquire(exclusive=True)
                try:
                    short = await asyncio.to_thread(self._evict_until, self.max_bytes - self._reserved - n, keep)
                finally:
                    glock.release()
            if short <= 0:
                return
            if n == 0:
                log.warning("model cache over its bound by %d bytes: the other entries are in use", short)
                return
            if time.monotonic() >= deadline:
                raise CacheError(
                    f"the model cache ({self.max_bytes} bytes, --model-cache-bytes) has no room for {n} bytes: "
                    f"{short} bytes more are held by models being loaded right now; try again, or raise the bound"
                )
            await asyncio.sleep(0.2)

    def _evict_until(self, limit: int, keep: str) -> int:
        """Evict LRU entries not in use until the entries total at most `limit`; returns how far over it remains."""
        entries = self.entries()
        used = sum(e.bytes for e in entries)
        for e in entries:
            if used <= limit:
                break
            if e.key == keep:
                continue
            lock = self._lock(e.key)
            if not lock.try_acquire(exclusive=True):
                continue  # in use (or being filled) somewhere
            try:
                trash = self.root / "tmp" / f"{e.key}.{os.getpid()}.evicted-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(self._entry(e.key), trash)
                except FileNotFoundError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
            finally:
                lock.release(unlink=True)
            used -= e.bytes
            self.evictions += 1
            log.info("evicted %s (%d bytes) from the model cache", e.key, e.bytes)
        return used - limit


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()  # Linux, as fcntl's flock above
