"""Sources below the adapter: file:// and s3:// listings, downloads and their errors (S3: moto_server), the files a
Triton load sends (version policy, size bound), the config conversion and the load body, without a backend."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

from adapters.sources import FileSource, ModelSources, ModelTooLarge, S3Access, S3Source, SourceError, SourceSettings
from adapters.triton import _load_body
from adapters.triton_config import IDENTITY_PARAMETER, SOURCE_PARAMETER, main, parse_config, versions_to_send
from tests.sources.conftest import model_folder
from tests.sources.s3server import MotoServer

PYC = f"1/__pycache__/model.{sys.implementation.cache_tag}.pyc"  # write_model byte-compiles model.py


def sources(tmp_path: Path, moto: MotoServer | None = None, **settings: int) -> ModelSources:
    s = SourceSettings(cache_dir=str(tmp_path / "cache"), s3_endpoint_url=moto.url if moto else None, **settings)
    return ModelSources(s)


@pytest.fixture
def aws_env(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)


# -- file:// ---------------------------------------------------------------------------------------------------
def test_a_file_source_lists_its_files_and_its_identity_follows_changes(tmp_path: Path) -> None:
    d = model_folder(tmp_path, "fm", 1.0)
    src = FileSource(f"file://{d}")
    first = src.list()
    assert {f.path for f in first.files} == {"config.pbtxt", "1/model.py", PYC}
    assert src.list().identity() == first.identity()
    model_folder(tmp_path, "fm", 2.0, version=2)  # a new version folder
    second = src.list()
    assert second.identity() != first.identity()
    (d / "1" / "model.py").write_text((d / "1" / "model.py").read_text() + "\n# changed\n")
    os.utime(d / "1" / "model.py", ns=(1, 1))  # whatever the clock: a different mtime
    assert src.list().identity() != second.identity()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nothing-here", "does not exist on the gateway's host"),
        (lambda p: (p / "a-file").write_text("x") and p / "a-file", "is not a directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no files"),
    ],
)
def test_a_broken_file_source_says_what_is_wrong(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = make(tmp_path)
    with pytest.raises(SourceError, match=message):
        FileSource(f"file://{path}").list()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads directories whatever their mode")
def test_an_unreadable_directory_says_permission_denied(tmp_path: Path) -> None:
    d = model_folder(tmp_path, "locked", 1.0)
    (d / "1").chmod(0)
    try:
        with pytest.raises(SourceError, match="Permission denied"):
            FileSource(f"file://{d}").list()
    finally:
        (d / "1").chmod(0o755)


async def test_only_the_versions_triton_would_load_are_fetched(tmp_path: Path) -> None:
    d = model_folder(tmp_path, "vm", 1.0)
    model_folder(tmp_path, "vm", 2.0, version=2)
    model_folder(tmp_path, "vm", 3.0, version=3)
    (d / "labels.txt").write_text("a\nb\n")
    s = sources(tmp_path)
    async with s.files(f"file://{d}", 1 << 20) as files:
        sent = {rel for rel, _, _ in files.files}
        assert "labels.txt" in sent
        assert {rel.split("/")[0] for rel in sent if "/" in rel} == {"3"}  # latest only: Triton's default policy
        assert "config.pbtxt" not in sent  # goes as parameters.config
    text = (d / "config.pbtxt").read_text() + "version_policy { specific { versions: [1, 3] } }\n"
    (d / "config.pbtxt").write_text(text)
    async with s.files(f"file://{d}", 1 << 20) as files:
        assert {rel.split("/")[0] for rel, _, _ in files.files if "/" in rel} == {"1", "3"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: (d / "config.pbtxt").unlink(), "no config.pbtxt at its top level"),
        (lambda d: (d / "config.pbtxt").write_text("name: 'x'\nbogus_field: 3\n"), 'has no field named "bogus_field"'),
        (lambda d: (d / "1").rename(d / "latest"), "no version folder to load"),
    ],
)
async def test_a_model_directory_triton_could_not_load_is_refused_before_sending(  # type: ignore[no-untyped-def]
    tmp_path: Path, setup, message: str
) -> None:
    d = model_folder(tmp_path, "bad", 1.0)
    setup(d)
    with pytest.raises(SourceError, match=message):
        async with sources(tmp_path).files(f"file://{d}", 1 << 20):
            pass


async def test_a_model_over_the_upload_bound_fails_with_its_size_before_any_download(tmp_path: Path) -> None:
    d = model_folder(tmp_path, "big", 1.0)
    (d / "1" / "weights.bin").write_bytes(b"\0" * 5000)
    s = sources(tmp_path)
    with pytest.raises(ModelTooLarge, match=r"files are \d+ bytes, over the 4000 bytes a load may send to Triton"):
        async with s.files(f"file://{d}", 4000):
            pass
    assert s.downloads == 0


async def test_the_load_body_is_the_json_triton_takes(tmp_path: Path) -> None:
    d = model_folder(tmp_path, "body", 1.0)
    (d / "1" / "blob.bin").write_bytes(os.urandom(3 * 256 * 1024 * 2 + 7))  # several chunks, not a multiple of 3
    async with sources(tmp_path).files(f"file://{d}", 1 << 30) as files:
        length, stream = _load_body("body", files)
        body = b"".join([chunk async for chunk in stream])
        assert len(body) == length
        params = json.loads(body)["parameters"]
        for rel, path, _ in files.files:
            assert base64.b64decode(params[f"file:{rel}"]) == path.read_bytes()
        config = json.loads(params["config"])
        assert config["name"] == "body"
        assert config["parameters"][SOURCE_PARAMETER] == {"string_value": f"file://{d}"}
        assert config["parameters"][IDENTITY_PARAMETER] == {"string_value": files.identity}
        assert config["input"][0]["dims"] == ["-1"]  # int64 as JSON strings: Triton 2.51 takes them


def test_version_policies() -> None:
    latest = parse_config('backend: "python"')
    assert versions_to_send(latest, [1, 10, 2]) == [10]
    two = parse_config("version_policy { latest { num_versions: 2 } }")
    assert versions_to_send(two, [1, 10, 2]) == [2, 10]
    everything = parse_config("version_policy { all { } }")
    assert versions_to_send(everything, [2, 1]) == [1, 2]
    assert versions_to_send(parse_config("version_policy { specific { versions: 7 } }"), [1, 2]) == []


def test_the_committed_model_config_descriptor_is_tritonclients() -> None:
    assert main(["--check"]) == 0, "adapters/triton_model_config.binpb is stale: run python -m adapters.triton_config"


# -- s3:// -----------------------------------------------------------------------------------------------------
def test_an_s3_source_lists_and_downloads_the_listed_versions(
    tmp_path: Path, moto: MotoServer, bucket: str, aws_env: None
) -> None:
    d = model_folder(tmp_path, "sm", 1.0)
    moto.upload_dir(d, bucket, "a/sm")
    src = S3Source(f"s3://{bucket}/a/sm", S3Access(moto.url))
    listing = src.list()
    assert {f.path for f in listing.files} == {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    model_py = listing.get("1/model.py")
    assert model_py is not None
    src.download(model_py, tmp_path / "got.py")
    assert (tmp_path / "got.py").read_bytes() == (d / "1" / "model.py").read_bytes()
    # The object changed after the listing: the download says so instead of mixing versions.
    moto.client().put_object(Bucket=bucket, Key="a/sm/1/model.py", Body=b"# new\n")
    with pytest.raises(SourceError, match="changed while it was being downloaded"):
        src.download(model_py, tmp_path / "got.py")
    assert src.list().identity() != listing.identity()


def test_s3_errors_say_what_is_wrong(tmp_path: Path, moto: MotoServer, bucket: str, aws_env: None) -> None:
    access = S3Access(moto.url)
    with pytest.raises(SourceError, match=r"bucket 'no-such-bucket-x' does not exist \(S3 NoSuchBucket"):
        S3Source("s3://no-such-bucket-x/m", access).list()
    with pytest.raises(SourceError, match=rf"no objects under s3://{bucket}/nothing/here/ \(is the prefix right\?\)"):
        S3Source(f"s3://{bucket}/nothing/here", access).list()


def test_wrong_s3_credentials_are_named(
    tmp_path: Path, moto: MotoServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in moto.env(access_key="AKIANOTAKEY", secret_key="nope").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SourceError, match=r"refused the gateway's AWS credentials.*InvalidAccessKeyId"):
        S3Source(f"s3://{bucket}/m", S3Access(moto.url)).list()
    for key, value in moto.env(secret_key="wrong-secret").items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SourceError, match=r"secret access key does not match.*SignatureDoesNotMatch"):
        S3Source(f"s3://{bucket}/m", S3Access(moto.url)).list()


def test_an_unreachable_s3_endpoint_is_named(tmp_path: Path, aws_env: None) -> None:
    from gateway.embedded_redis import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError, match=f"cannot reach the S3 endpoint {url}"):
        S3Source("s3://bucket/m", S3Access(url)).list()


def test_boto3s_own_endpoint_setting_is_honoured(
    tmp_path: Path, moto: MotoServer, bucket: str, aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --s3-endpoint-url, boto3 >= 1.28 takes the endpoint from AWS_ENDPOINT_URL."""
    d = model_folder(tmp_path, "em", 1.0)
    moto.upload_dir(d, bucket, "em")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    assert S3Source(f"s3://{bucket}/em", S3Access(None)).list().get("config.pbtxt") is not None


async def test_s3_files_come_through_the_cache(tmp_path: Path, moto: MotoServer, bucket: str, aws_env: None) -> None:
    d = model_folder(tmp_path, "cm", 1.0)
    moto.upload_dir(d, bucket, "cm")
    s = sources(tmp_path, moto)
    moto.reset_recording()
    for _ in range(3):
        async with s.files(f"s3://{bucket}/cm", 1 << 20) as files:
            assert {rel for rel, _, _ in files.files} == {"1/model.py", PYC}
    counts = moto.count(bucket)
    assert counts["get"] == 3  # config.pbtxt, model.py and its .pyc, once
    assert counts["list"] == 3  # one listing per use: it is what tells a changed source
    assert (s.cache.misses, s.cache.hits) == (1, 2)
