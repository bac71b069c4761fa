"""Triton model configurations for loads by content: `config.pbtxt` in, the JSON Triton's load API takes out.

Triton 2.51 loads a model whose files come with the load call only when `parameters.config` is given, and only
as JSON (deploy/localstack/TRITON_FACTS.md, section h). A model source holds `config.pbtxt` (protobuf text
format), so the gateway parses it with Triton's `inference.ModelConfig` message and prints it as JSON.

The message's schema comes from `triton_model_config.binpb` next to this module: the serialized
`model_config.proto` FileDescriptorProto (BSD-3-Clause, NVIDIA), taken from the `tritonclient` wheel's
`model_config_pb2` by `python -m adapters.triton_config` and committed. It is loaded into a PRIVATE
descriptor pool, so the runtime needs only `protobuf`, and `tritonclient` (numpy, ml_dtypes, a quarter of a
second to import) stays a dev dependency, out of the gateway's process. `--check` says whether the artifact
matches the installed tritonclient; a test runs it.

The module also decides which version folders to send (the config's `version_policy`, Triton's default being
the latest version), and adds two parameters to the config: `modelyard.source` (where the files came from) and
`modelyard.source_identity` (the source's version identity). Triton 2.51 decides whether a load of a loaded
model is a reload by comparing configurations and version folders, not file contents, so the identity parameter
is what makes a load with changed files swap the model in place, and an unchanged one a no-op.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format

from adapters.artifacts import write_or_check

ARTIFACT = "triton_model_config.binpb"
SOURCE_PARAMETER = "modelyard.source"
IDENTITY_PARAMETER = "modelyard.source_identity"


class ModelConfigError(ValueError):
    """A config.pbtxt that is not a valid Triton model configuration."""


@functools.cache
def _config_class() -> Any:
    pool = descriptor_pool.DescriptorPool()
    data = resources.files("adapters").joinpath(ARTIFACT).read_bytes()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(text: str) -> Any:
    """Parse config.pbtxt; raises `ModelConfigError` with the parser's line and column."""
    config = _config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelConfigError(f"config.pbtxt is not a valid Triton model configuration: {exc}") from None
    return config


def versions_to_send(config: Any, available: Collection[int]) -> list[int]:
    """The version folders Triton would load under the config's version policy (default: the latest one)."""
    have = sorted(available)
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return have
    if choice == "specific":
        return [v for v in have if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return have[-count:]


def config_json(config: Any, name: str, source: str, identity: str) -> str:
    """The config as Triton's load API takes it: named after the model (Triton refuses a config whose name is
    not the model's) and carrying the source and its identity as parameters."""
    out = _config_class()()
    out.CopyFrom(config)
    out.name = name
    out.parameters[SOURCE_PARAMETER].string_value = source
    out.parameters[IDENTITY_PARAMETER].string_value = identity
    data = json_format.MessageToDict(out, preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def identity_of(config: dict[str, Any]) -> str | None:
    """The source identity in a config as Triton answers `GET /v2/models/{m}/config`, if the model was loaded
    from a source by modelyard."""
    params = config.get("parameters")
    if not isinstance(params, dict):
        return None
    value = params.get(IDENTITY_PARAMETER)
    if isinstance(value, dict) and isinstance(value.get("string_value"), str):
        return str(value["string_value"])
    return None


def _installed_descriptor() -> bytes:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise SystemExit(f"needs tritonclient, a dev dependency: pip install tritonclient ({exc})") from exc
    data: bytes = model_config_pb2.DESCRIPTOR.serialized_pb
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.triton_config",
        description=f"Write or check {ARTIFACT} from the installed tritonclient's model_config_pb2.",
    )
    parser.add_argument("--check", action="store_true", help="only check that the committed artifact is up to date")
    args = parser.parse_args(argv)
    parse = descriptor_pb2.FileDescriptorProto.FromString
    return write_or_check(
        Path(__file__).resolve().parent / ARTIFACT,
        _installed_descriptor(),
        check=args.check,
        same=lambda old, fresh: bool(parse(old) == parse(fresh)),
        command="python -m adapters.triton_config",
        note=", from tritonclient's model_config_pb2",
    )


if __name__ == "__main__":
    sys.exit(main())
