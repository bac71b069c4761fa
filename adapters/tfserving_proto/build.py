"""Regenerate descriptors.binpb from this package's .proto files, with protoc from grpcio-tools (a dev dependency).

    python -m adapters.tfserving_proto.build           # rewrite the committed artifact
    python -m adapters.tfserving_proto.build --check   # exit 1 if it is out of date

Run it after editing any .proto file here and commit the result with the edit.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

from adapters.artifacts import write_or_check

HERE = Path(__file__).resolve().parent
ARTIFACT = HERE / "descriptors.binpb"


def proto_files() -> list[str]:
    return sorted(p.name for p in HERE.glob("*.proto"))


def compile_descriptor_set(out: Path) -> None:
    """Compile every .proto file of this package into a FileDescriptorSet at `out`. Imports (wrappers.proto) are
    left out: the runtime takes them from the installed protobuf. No source info, so comments do not count.

    protoc runs in a child process (`python -m grpc_tools.protoc`, which finds the well-known .proto files itself):
    grpc_tools' compiler segfaults when loaded into a process that has already imported TensorFlow, as the tests
    have (both bundle their own libprotobuf)."""
    if importlib.util.find_spec("grpc_tools") is None:
        raise RuntimeError("protoc comes from grpcio-tools, a dev dependency: pip install grpcio-tools")
    command = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={HERE}", f"--descriptor_set_out={out}"]
    result = subprocess.run([*command, *proto_files()], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed on {HERE}/*.proto (exit {result.returncode}):\n{result.stderr}")


def same_descriptors(a: bytes, b: bytes) -> bool:
    """Whether two serialized FileDescriptorSets describe the same files (compared as messages, not bytes)."""
    parse = descriptor_pb2.FileDescriptorSet.FromString
    return bool(parse(a) == parse(b))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.tfserving_proto.build",
        description="Regenerate descriptors.binpb from the .proto files.",
    )
    parser.add_argument("--check", action="store_true", help="only check that the committed artifact is up to date")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / ARTIFACT.name
        compile_descriptor_set(fresh)
        data = fresh.read_bytes()
    return write_or_check(
        ARTIFACT,
        data,
        check=args.check,
        same=same_descriptors,
        command="python -m adapters.tfserving_proto.build",
        note=f", from {', '.join(proto_files())}",
    )


if __name__ == "__main__":
    sys.exit(main())
