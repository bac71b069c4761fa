"""Run the real Triton Inference Server shipped in the nvidia-pytriton wheel, without Docker.

The wheel holds the `tritonserver` binary, the Python backend and one backend stub per Python version, but
not a backend directory Triton can use as is: `find_triton()` builds one (once, in a cache directory) with the
stub that matches the running Python. `TritonServer` starts the binary in explicit model-control mode, bound
to 127.0.0.1 only, in its own process group so that stopping it also stops the Python stub processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "TritonDist",
    "TritonError",
    "TritonNotFoundError",
    "TritonServer",
    "TritonStartError",
    "find_triton",
    "free_port",
]

_INSTALL_HINT = "pip install 'modelyard[local]'"
# Files of a Triton backend directory for the Python backend: <backend_dir>/python/<name>.
_STUB_NAME = "triton_python_backend_stub"
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")


class TritonError(RuntimeError):
    """Base of the errors raised by this module."""


class TritonNotFoundError(TritonError):
    """The nvidia-pytriton wheel, or a part of it that is needed, is not installed."""


class TritonStartError(TritonError):
    """The server process exited, or did not become live, during `TritonServer.start()`."""


@dataclass(frozen=True)
class TritonDist:
    """Where the parts of a runnable Triton are.

    `binary` is the `tritonserver` executable, `backend_dir` the value for `--backend-directory` (it holds
    `python/`), and `lib_dir` the shared libraries that must be on `LD_LIBRARY_PATH`.
    """

    binary: Path
    backend_dir: Path
    lib_dir: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when asked (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "modelyard" / "triton-backends" / f"py{sys.version_info[0]}{sys.version_info[1]}"


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(
            f"Triton is not installed: the nvidia-pytriton wheel ships it. Install it with: {_INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise TritonNotFoundError(
            f"{what} not found at {path}; the nvidia-pytriton install looks incomplete. {_INSTALL_HINT}"
        )
    return path


def find_triton(cache_dir: Path | None = None) -> TritonDist:
    """Locate Triton in the nvidia-pytriton wheel and prepare its backend directory.

    The backend directory is `<cache_dir>/<key>/` with `python/` holding symlinks to the Python backend and
    to the stub for `sys.version_info`; `<key>` depends on where the wheel is installed, so several
    virtualenvs can share `cache_dir`. It is built once, in a temporary directory renamed into place, and
    reused after that.
    `cache_dir` defaults to `~/.cache/modelyard/triton-backends/py3X`.
    Raises `TritonNotFoundError` when the wheel or a needed part of it is missing.
    """
    pkg = _pytriton_dir()
    server_dir = pkg / "tritonserver"
    binary = _require(server_dir / "bin" / "tritonserver", "tritonserver binary")
    lib_dir = pkg.parent / "nvidia_pytriton.libs"
    if not lib_dir.is_dir():  # editable installs of pytriton keep the libraries here
        lib_dir = _require(server_dir / "external_libs", "Triton shared libraries (nvidia_pytriton.libs)")
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    sources = {name: _require(server_dir / "backends" / "python" / name, name) for name in _PYTHON_BACKEND_FILES}
    sources[_STUB_NAME] = _require(
        server_dir / "python_backend_stubs" / version / _STUB_NAME,
        f"Python backend stub for Python {version}",
    )
    cache = cache_dir if cache_dir is not None else _default_cache_dir()
    key = hashlib.sha256(str(server_dir.resolve()).encode()).hexdigest()[:12]
    backend_dir = cache / key
    _ensure_backend_dir(backend_dir, {name: src.resolve() for name, src in sources.items()})
    return TritonDist(binary=binary, backend_dir=backend_dir, lib_dir=lib_dir)


def _backend_dir_ok(backend_dir: Path, sources: dict[str, Path]) -> bool:
    python_dir = backend_dir / "python"
    return all((python_dir / name).exists() and (python_dir / name).resolve() == src for name, src in sources.items())


def _ensure_backend_dir(backend_dir: Path, sources: dict[str, Path]) -> None:
    if _backend_dir_ok(backend_dir, sources):
        return
    backend_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=backend_dir.parent))
    try:
        (tmp / "python").mkdir()
        for name, src in sources.items():
            (tmp / "python" / name).symlink_to(src)
        try:
            os.rename(tmp, backend_dir)
            return
        except OSError:
            # Another process built it meanwhile (rename onto a non-empty directory fails): use theirs.
            if _backend_dir_ok(backend_dir, sources):
                return
        # A broken or outdated directory is in the way: move it aside, then swap ours in.
        stale = backend_dir.parent / f".stale-{uuid.uuid4().hex}"
        try:
            os.rename(backend_dir, stale)
        except FileNotFoundError:
            pass
        try:
            os.rename(tmp, backend_dir)
        except OSError:
            if not _backend_dir_ok(backend_dir, sources):
                raise
        shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class TritonServer:
    """One `tritonserver` process on 127.0.0.1, in explicit model-control mode.

    Nothing is loaded at start: load models with `POST /v2/repository/models/{m}/load`. The process runs in a
    process group of its own (the Python stubs are its children), and `stop()` signals that whole group.
    Output goes to `log_path` (appended). Use as a context manager, or call `start()` and `stop()`.

    On SIGTERM Triton waits for in-flight requests and for open HTTP connections, idle keep-alive ones
    included, up to `--exit-timeout-secs` (Triton's default is 30 s): `exit_timeout` sets it, 5 s by default,
    so that `stop()` ends gracefully (models finalized) within its own timeout.
    `extra_args` go on the command line.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        log_path: Path,
        dist: TritonDist | None = None,
        extra_env: dict[str, str] | None = None,
        exit_timeout: int = 5,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.model_repository = Path(model_repository)
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.log_path = Path(log_path)
        self._dist = dist
        self._extra_env = dict(extra_env or {})
        self.exit_timeout = exit_timeout
        self._extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        """Base URL of the HTTP endpoint (KServe v2 and the repository API)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC endpoint, as `tritonclient.grpc` takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        """Pid of the server process (also its process group id). Raises if it was never started."""
        if self._proc is None:
            raise TritonError("the Triton server was not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, dist: TritonDist) -> list[str]:
        """The command line `start()` runs."""
        # A distinct shared-memory prefix keeps the Python backends of servers on one machine apart.
        shm_prefix = f"modelyard_{os.getpid()}_{self.http_port}_"
        return [
            str(dist.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={dist.backend_dir}",
            "--model-control-mode=explicit",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--exit-timeout-secs={self.exit_timeout}",
            *self._extra_args,
        ]

    def environment(self, dist: TritonDist) -> dict[str, str]:
        """The environment `start()` gives the server (and so the Python stubs, which inherit it)."""
        env = dict(os.environ)
        env.update(self._extra_env)
        ld_path = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{dist.lib_dir}:{ld_path}" if ld_path else str(dist.lib_dir)
        # The stub embeds Python and finds its prefix from `python3` on PATH: put this interpreter's bin
        # directory first so that the stubs see this environment's site-packages (numpy < 2).
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', os.defpath)}"
        return env

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until `GET /v2/health/live` answers 200.

        Raises `TritonStartError`, with the end of the log, if the process exits or is not live in `timeout`
        seconds (the process is stopped first).
        """
        if self.running:
            raise TritonError(f"the Triton server is already running (pid {self.pid})")
        if not self.model_repository.is_dir():
            raise TritonError(f"model repository {self.model_repository} is not a directory")
        dist = self._dist if self._dist is not None else find_triton()
        self._dist = dist
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                self.command(dist),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(dist),
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise TritonStartError(
                        f"tritonserver exited with code {code} during start; end of {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/v2/health/live").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    self.stop()
                    raise TritonStartError(
                        f"tritonserver was not live after {timeout:g} s; end of {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it is still there after `timeout` seconds.

        Returns once the server has exited and no process of its group is left. Safe to call twice.
        """
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                proc.wait()
        # Stubs normally exit with the server; make sure none outlives it.
        deadline = time.monotonic() + 2.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(pgid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would (for tests of backend failure)."""
        proc = self._proc
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of what this run of the server wrote to `log_path`."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_offset, size - max_bytes))
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> TritonServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
