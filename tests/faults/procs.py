"""Real processes the fault tests kill, pause and restart: a redis-server with an append-only file (so it can
come back with its data, or be wiped to come back empty) and the signals sent to Tritons and gateways."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.embedded_redis import _die_with_parent, redis_server_binary


def stable_port() -> int:
    """A free port below Linux's ephemeral range (32768-60999 by default), for a server the test restarts on
    the same port. In the ephemeral range, a client that keeps reconnecting to the dead server's port can be
    given that very port as its own and connect to itself (TCP simultaneous open), and the restart then fails
    with 'Address already in use': seen here with a killed Triton and the gateways' gRPC reconnects."""
    for _ in range(100):
        port = random.randrange(20000, 32700)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class FaultRedis:
    """One redis-server on 127.0.0.1 with `appendonly yes, appendfsync always` in `data_dir`; stopped by pid."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.port = stable_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # an interrupted test run leaves no redis-server behind
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s")

    def kill(self) -> None:
        """SIGKILL, as a crash: what the append-only file holds is what a restart gets back."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def wipe(self) -> None:
        """Forget the data on disk: the next start comes back empty (a restart without persistence)."""
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def signal_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    """Send `sig` to one process we started (by its pid, never by name)."""
    assert proc is not None and proc.poll() is None, "process not running"
    os.kill(proc.pid, sig)
