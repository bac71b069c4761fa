"""The disk cache of model files, with a fake fetcher: LRU, the bound, one download per entry, no half entries."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest

from adapters.model_cache import CacheError, ModelCache, Reserve


class FakeFetcher:
    """Writes `size` bytes per entry; counts fills; can be held at a gate halfway through a download."""

    def __init__(self, size: int = 100) -> None:
        self.size = size
        self.fills: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail: set[str] = set()

    def fill(self, key: str):  # type: ignore[no-untyped-def]
        async def run(dest: Path, reserve: Reserve) -> None:
            self.fills[key] += 1
            await reserve(self.size)
            (dest / "1").mkdir(parents=True)
            (dest / "1" / "part-a").write_bytes(b"a" * (self.size // 2))
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            if key in self.fail:
                raise RuntimeError(f"download of {key} failed")
            (dest / "1" / "part-b").write_bytes(b"b" * (self.size - self.size // 2))

        return run


async def read(cache: ModelCache, fetcher: FakeFetcher, key: str) -> dict[str, int]:
    async with cache.use(key, fetcher.fill(key)) as root:
        return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def on_disk(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "entries").rglob("*") if p.is_file() and p.name != "meta.json")


async def test_a_miss_downloads_once_and_later_uses_are_hits(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 1000), FakeFetcher()
    assert await read(cache, fetcher, "k1") == {"1/part-a": 50, "1/part-b": 50}
    assert await read(cache, fetcher, "k1") == {"1/part-a": 50, "1/part-b": 50}
    assert fetcher.fills == {"k1": 1}
    assert (cache.misses, cache.hits) == (1, 1)


async def test_concurrent_uses_of_one_entry_share_one_download(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 1000), FakeFetcher()
    fetcher.gate = asyncio.Event()
    readers = [asyncio.create_task(read(cache, fetcher, "k1")) for _ in range(5)]
    await fetcher.started.wait()
    await asyncio.sleep(0.05)
    fetcher.gate.set()
    results = await asyncio.gather(*readers)
    assert fetcher.fills == {"k1": 1}
    assert all(r == {"1/part-a": 50, "1/part-b": 50} for r in results)


async def test_two_caches_on_one_directory_download_once(tmp_path: Path) -> None:
    """Two processes sharing a cache directory: the entry's file lock makes the second wait and find it there."""
    one, two, fetcher = ModelCache(tmp_path, 1000), ModelCache(tmp_path, 1000), FakeFetcher()
    fetcher.gate = asyncio.Event()
    first = asyncio.create_task(read(one, fetcher, "k1"))
    await fetcher.started.wait()
    second = asyncio.create_task(read(two, fetcher, "k1"))
    await asyncio.sleep(0.2)
    assert not second.done()  # waiting for the lock the first download holds
    fetcher.gate.set()
    assert await first == await second == {"1/part-a": 50, "1/part-b": 50}
    assert fetcher.fills == {"k1": 1}


async def test_no_half_written_entry_is_ever_visible(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 1000), FakeFetcher()
    fetcher.gate = asyncio.Event()
    reader = asyncio.create_task(read(cache, fetcher, "k1"))
    await fetcher.started.wait()
    # Half of the files are written, in tmp/: entries/ shows nothing yet.
    assert list((tmp_path / "entries").iterdir()) == []
    assert cache.entries() == []
    fetcher.gate.set()
    await reader
    assert [e.key for e in cache.entries()] == ["k1"]


async def test_a_failed_download_leaves_nothing_behind_and_is_retried_next_time(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 1000), FakeFetcher()
    fetcher.fail.add("k1")
    with pytest.raises(RuntimeError, match="download of k1 failed"):
        await read(cache, fetcher, "k1")
    assert list((tmp_path / "entries").iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    fetcher.fail.clear()
    assert await read(cache, fetcher, "k1") == {"1/part-a": 50, "1/part-b": 50}
    assert fetcher.fills == {"k1": 2}


async def test_least_recently_used_entries_go_first_and_the_bound_holds(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 300), FakeFetcher(100)
    for key in ("a", "b", "c"):
        await read(cache, fetcher, key)
    await read(cache, fetcher, "a")  # a is now the most recently used
    await read(cache, fetcher, "d")  # over the bound: b, the least recently used, goes
    assert sorted(e.key for e in cache.entries()) == ["a", "c", "d"]
    assert on_disk(tmp_path) <= 300
    for i in range(20):
        await read(cache, fetcher, f"x{i}")
        assert on_disk(tmp_path) <= 300
        assert cache.used_bytes() <= 300
    assert cache.evictions == 21  # 24 entries made, 3 fit
    assert not list((tmp_path / "locks").glob("b.lock"))  # an evicted entry's lock file goes with it


async def test_an_entry_in_use_is_not_evicted(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 200, room_wait=0.5), FakeFetcher(100)
    async with cache.use("a", fetcher.fill("a")):
        await read(cache, fetcher, "b")
        await read(cache, fetcher, "c")  # evicts b, not a (in use, and older)
        assert sorted(e.key for e in cache.entries()) == ["a", "c"]
        async with cache.use("c", fetcher.fill("c")):
            # Both entries are in use: there is no room for a third, and the cache says so.
            with pytest.raises(CacheError, match="held by models being loaded right now"):
                await read(cache, fetcher, "d")
    assert await read(cache, fetcher, "d") == {"1/part-a": 50, "1/part-b": 50}
    assert on_disk(tmp_path) <= 200


async def test_an_entry_larger_than_the_whole_cache_fails_with_the_sizes(tmp_path: Path) -> None:
    cache, fetcher = ModelCache(tmp_path, 99), FakeFetcher(100)
    with pytest.raises(CacheError, match=r"the model is 100 bytes, more than the whole model cache holds \(99 bytes"):
        await read(cache, fetcher, "big")
    assert cache.entries() == []


async def test_leftovers_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    (tmp_path / "tmp" / "k1.999999999.abcd" / "files").mkdir(parents=True)  # no such pid
    mine = tmp_path / "tmp" / f"k2.{os.getpid()}.abcd"
    mine.mkdir(parents=True)
    cache, fetcher = ModelCache(tmp_path, 1000), FakeFetcher()
    await read(cache, fetcher, "k1")
    assert sorted(p.name for p in (tmp_path / "tmp").iterdir()) == [mine.name]
