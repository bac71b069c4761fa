"""The file-system source (file_system_storage_path_source.cc): polls each model's base path for version
folders and hands the aspired versions to the manager."""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tensorflow_serving.config import file_system_storage_path_source_pb2

from tests.tfserving_emulator.status import INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNKNOWN, TFError

log = logging.getLogger("tfserving_emulator")


@dataclass
class ServableToMonitor:
    name: str
    base_path: str
    policy: file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


_VERSION_RE = re.compile(r"^\s*[+-]?\d+\s*$")


def _parse_version(child: str) -> int | None:
    if not _VERSION_RE.match(child):
        return None
    value = int(child)
    return value if -(2**63) <= value < 2**63 else None


def poll_servable(servable: ServableToMonitor) -> list[tuple[int, str]]:
    base = servable.base_path
    if not os.path.exists(base):
        raise TFError(INVALID_ARGUMENT, f"Could not find base path {base} for servable {servable.name}")
    try:
        children = sorted(os.listdir(base))
    except OSError as e:
        raise TFError(PERMISSION_DENIED if isinstance(e, PermissionError) else UNKNOWN, str(e)) from None
    by_version: dict[int, str] = {}
    for child in children:
        version = _parse_version(child)
        if version is not None:
            by_version[version] = child
    versions: list[tuple[int, str]] = []
    choice = servable.policy.WhichOneof("policy_choice")
    if choice in (None, "latest"):
        wanted = max(servable.policy.latest.num_versions, 1)
        for version in sorted(by_version, reverse=True)[:wanted]:
            versions.append((version, os.path.join(base, by_version[version])))
    elif choice == "all":
        for child in children:
            version = _parse_version(child)
            if version is not None:
                versions.append((version, os.path.join(base, child)))
    elif choice == "specific":
        specific = set(servable.policy.specific.versions)
        for version in sorted(by_version):
            if version in specific:
                versions.append((version, os.path.join(base, by_version[version])))
        for version in specific - {v for v, _ in versions}:
            log.warning(
                "Version %d of servable %s, which was requested to be served as a 'specific' version in the "
                "servable's version policy, was not found in the file system",
                version,
                servable.name,
            )
    if not versions:
        log.warning("No versions of servable %s found under base path %s", servable.name, base)
    return versions


class FileSystemSource:
    def __init__(self, servables: list[ServableToMonitor], poll_wait: float, fail_if_zero_versions: bool) -> None:
        self._lock = threading.Lock()
        self._poll_wait = poll_wait
        self._fail_if_zero = fail_if_zero_versions
        self._servables: list[ServableToMonitor] = []
        self._callback: Callable[[str, list[tuple[int, str]]], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.update_config(servables)

    def servable_names(self) -> list[str]:
        with self._lock:
            return [s.name for s in self._servables]

    def update_config(self, servables: list[ServableToMonitor]) -> None:
        with self._lock:
            if self._fail_if_zero:
                for servable in servables:
                    if not poll_servable(servable):
                        # (sic: TF Serving prints the deprecated top-level base_path field, which is empty here)
                        raise TFError(
                            NOT_FOUND, f"Unable to find a numerical version path for servable {servable.name} at: "
                        )
            if self._callback is not None:
                new_names = {s.name for s in servables}
                for old in self._servables:
                    if old.name not in new_names:
                        self._callback(old.name, [])
            self._servables = list(servables)

    def set_aspired_versions_callback(self, callback: Callable[[str, list[tuple[int, str]]], None]) -> None:
        with self._lock:
            self._callback = callback
        if self._poll_wait >= 0:
            self._thread = threading.Thread(target=self._run, name="FileSystemStoragePathSource", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            begin = time.monotonic()
            self.poll()
            if self._poll_wait == 0:
                return  # TF Serving: poll once
            self._stop.wait(max(0.0, begin + self._poll_wait - time.monotonic()))

    def poll(self) -> None:
        with self._lock:
            if self._callback is None or self._stop.is_set():
                return
            try:
                by_name = [(s.name, poll_servable(s)) for s in self._servables]
            except TFError as e:
                log.error("FileSystemStoragePathSource encountered a filesystem access error: %s", e.message)
                return
            for name, versions in by_name:
                self._callback(name, versions)
