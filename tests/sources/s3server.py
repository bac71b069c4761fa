"""An S3-compatible server for the tests: `moto_server` (from moto[server]) on 127.0.0.1, as a child process.

It runs with IAM authentication on (`INITIAL_NO_AUTH_ACTION_COUNT`: the first few calls, which create the test's
IAM user and its key, are the only unauthenticated ones), so wrong credentials are refused as by S3, and with
moto's request recorder on, so tests can count the requests the gateway made (`requests()`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx

from gateway.embedded_redis import free_port

_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Request:
    method: str
    bucket: str
    key: str  # "" for bucket-level calls (listings)
    query: str

    @property
    def is_get_object(self) -> bool:
        return self.method == "GET" and bool(self.key)

    @property
    def is_listing(self) -> bool:
        return self.method == "GET" and not self.key and "list-type=2" in self.query


class MotoServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.recording = self.workdir / "moto-recording"
        self.log_path = self.workdir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_key = ""
        self.secret_key = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recording.touch()  # the recorder's download fails until its file exists
        env = dict(
            os.environ,
            INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_CALLS),
            MOTO_ENABLE_RECORDING="true",
            MOTO_RECORDER_FILEPATH=str(self.recording),
        )
        binary = Path(sys.executable).parent / "moto_server"
        command = [str(binary) if binary.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        # The recorder's API is not an AWS action: probing it does not use up the unauthenticated calls.
        probe = f"{self.url}/moto-api/recorder/download-recording"
        deadline = time.monotonic() + timeout
        while not _answers(probe):
            exited = self.proc.poll()
            late = time.monotonic() > deadline
            if exited is not None or late:
                self.stop()
                why = f"exited with {exited}" if exited is not None else f"did not answer within {timeout:g} s"
                raise RuntimeError(f"moto_server {why}: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="modelyard-tests")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="modelyard-tests", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="modelyard-tests")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def env(self, *, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """The AWS environment a client of this server needs (the gateway's, in the tests)."""
        return {
            "AWS_ACCESS_KEY_ID": access_key if access_key is not None else self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key if secret_key is not None else self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def upload_dir(self, local: Path, bucket: str, prefix: str) -> None:
        s3 = self.client()
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")

    def reset_recording(self) -> None:
        httpx.post(f"{self.url}/moto-api/recorder/reset-recording", timeout=10).raise_for_status()

    def requests(self) -> list[S3Request]:
        """S3 requests made since the last `reset_recording()`."""
        resp = httpx.get(f"{self.url}/moto-api/recorder/download-recording", timeout=10)
        resp.raise_for_status()
        out = []
        for line in resp.text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            parts = urlsplit(rec["url"])
            if parts.path.startswith("/moto-api"):
                continue
            bucket, _, key = parts.path.lstrip("/").partition("/")
            out.append(S3Request(rec["method"], bucket, key, parts.query))
        return out

    def count(self, bucket: str, prefix: str = "") -> Counter[str]:
        """Object GETs and listings made on `bucket` (under `prefix`) since the last reset."""
        c: Counter[str] = Counter()
        for r in self.requests():
            if r.bucket != bucket:
                continue
            if r.is_get_object and r.key.startswith(prefix):
                c["get"] += 1
            elif r.is_listing:
                c["list"] += 1
        return c


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
