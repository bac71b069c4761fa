"""Start and stop the TF Serving emulator (the package `tests/tfserving_emulator/`) as a child process, for tests.

    with TFServingEmulator(tmp_path) as tfs:          # tmp_path: where the models live (tfs.model_root)
        build_models(tfs.model_root, ["a", "b"])      # tests/tfserving_models.py
        ... tfs.grpc_url  (127.0.0.1:PORT, for grpc channels)
        ... tfs.rest_url  (http://127.0.0.1:PORT)

This module does not import TensorFlow (the emulator process does): the readiness probe speaks raw gRPC bytes.
The child gets SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG is per thread): start it from a
thread that outlives it, e.g. the main thread of a test session, not from a short-lived worker thread.

Defaults differ from TF Serving's where TF Serving's would make tests slow, keeping its proportions:
- the file system is polled every 0.2 s (TF Serving: 1 s) and the manager makes a pass every 0.02 s (TF Serving:
  0.1 s), so a reload waits for at most about one poll, and the window of TF Serving's remove-then-re-add race
  (a reload re-adding a model removed a moment before can hang or fail, as in TF Serving) stays one tenth of a
  poll, as with TF Serving's defaults;
- a failed load is not retried (TF Serving: 5 retries, 60 s apart, blocking every other load meanwhile);
- the initial config is an empty `model_config_list {}` (the safe way to start a TF Serving that models are added
  to later: see the emulator's docstring on the first config).
Pass `extra_args` for anything else (any flag of `python -m tests.tfserving_emulator --help`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from gateway.embedded_redis import _die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
EMPTY_CONFIG = "model_config_list {}\n"


def _probe_request() -> bytes:
    """A serialized GetModelStatusRequest{model_spec{name: "__emulator_probe__"}}, without the protos."""
    name = b"__emulator_probe__"
    spec = b"\x0a" + bytes([len(name)]) + name  # ModelSpec.name = field 1
    return b"\x0a" + bytes([len(spec)]) + spec  # GetModelStatusRequest.model_spec = field 1


class TFServingEmulator:
    """One emulator process on 127.0.0.1, stopped by pid (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(
        self,
        model_root: Path,
        *,
        load_delay: float = 0.0,
        unload_delay: float = 0.0,
        max_models: int | None = None,
        initial_config: str | None = EMPTY_CONFIG,
        poll_wait: float = 0.2,
        manage_state_interval: float = 0.02,
        max_num_load_retries: int = 0,
        load_retry_interval: float = 1.0,
        extra_args: list[str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        """`model_root`: the folder the models are built in (created if missing; nothing reads it but the configs
        you send). `workdir` (default `model_root/.tfserving-emulator`) holds the initial config, the load log and
        the emulator's output (stdout and stderr)."""
        self.model_root = Path(model_root)
        self.workdir = Path(workdir) if workdir is not None else self.model_root / ".tfserving-emulator"
        self.load_delay = load_delay
        self.unload_delay = unload_delay
        self.max_models = max_models
        self.initial_config = initial_config
        self.poll_wait = poll_wait
        self.manage_state_interval = manage_state_interval
        self.max_num_load_retries = max_num_load_retries
        self.load_retry_interval = load_retry_interval
        self.extra_args = list(extra_args or [])
        self.grpc_port = 0
        self.rest_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "tfserving-emulator.log"
        self.load_log_path = self.workdir / "tfserving-loads.log"
        self.startup_seconds: float | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "tests.tfserving_emulator",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
            "--rest-port",
            str(self.rest_port),
            "--load-log",
            str(self.load_log_path),
            "--load-delay",
            str(self.load_delay),
            "--unload-delay",
            str(self.unload_delay),
            "--file-system-poll-wait-seconds",
            str(self.poll_wait),
            "--manage-state-interval-seconds",
            str(self.manage_state_interval),
            "--max-num-load-retries",
            str(self.max_num_load_retries),
            "--load-retry-interval-seconds",
            str(self.load_retry_interval),
        ]
        if self.max_models is not None:
            cmd += ["--max-models", str(self.max_models)]
        if self.initial_config is not None:
            config_path = self.workdir / "tfserving-initial.config"
            config_path.write_text(self.initial_config)
            cmd += ["--model-config-file", str(config_path)]
        return cmd + self.extra_args

    def start(self, timeout: float = 120.0) -> TFServingEmulator:
        """Start on free ports and wait until the gRPC ModelService answers; raises with the output tail if not."""
        self.model_root.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self.grpc_port, self.rest_port = free_port(), free_port()
            if self.grpc_port == self.rest_port:
                continue
            try:
                self._start_once(timeout)
                return self
            except _PortTaken:
                if attempt == 2:
                    raise RuntimeError(f"TF Serving emulator could not bind its ports:\n{self.output_tail()}") from None
        raise RuntimeError("TF Serving emulator did not start")  # pragma: no cover

    def _start_once(self, timeout: float) -> None:
        began = time.monotonic()
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self._command(),
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = began + timeout
        with grpc.insecure_channel(self.grpc_url) as channel:
            probe = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    self.proc = None
                    if code == 3:
                        raise _PortTaken()
                    raise RuntimeError(f"TF Serving emulator exited with {code}:\n{self.output_tail()}")
                try:
                    probe(_probe_request(), timeout=1.0)
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.NOT_FOUND:  # it answered: unknown model
                        self.startup_seconds = time.monotonic() - began
                        return
                    time.sleep(0.1)
                else:  # pragma: no cover - a model named __emulator_probe__
                    self.startup_seconds = time.monotonic() - began
                    return
        self.stop()
        raise RuntimeError(f"TF Serving emulator did not answer within {timeout:g} s:\n{self.output_tail()}")

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def output_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def load_log(self) -> list[str]:
        """Lines `load <name> <version>`, one per load attempt so far."""
        try:
            return self.load_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def load_count(self, name: str | None = None) -> int:
        return sum(1 for line in self.load_log() if name is None or line.split()[1] == name)

    def __enter__(self) -> TFServingEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _PortTaken(Exception):
    pass
