"""Triton model control over gRPC: repository load, unload and index, and the model state reads that go with them.

Why gRPC: Triton's HTTP repository load/unload calls hold its HTTP worker threads while they run
(triton-inference-server/server#8117, #8958), so warm HTTP requests to the same server wait behind a load (measured
here: warm p99 1.4 s under churn over HTTP, 7 ms over gRPC; docs/benchmarks.md). `adapters.triton` uses this
module whenever a backend has a `grpc_url`, and the HTTP repository API otherwise.

One `grpc.aio` channel per backend, separate from the data plane's (`adapters.grpc_forward`), so a long load holds
no stream the data plane needs. Calls return Triton's answers as `ControlAnswer` (status code number and message);
the adapter decides what they mean. A call's deadline expiring raises `BackendTimeout`; a connection that
could not be made raises `BackendUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2 as pb

from adapters.errors import BackendTimeout, BackendUnavailable
from adapters.grpc_forward import CHANNEL_OPTIONS

_SERVICE = "/inference.GRPCInferenceService/"


@dataclass(frozen=True)
class ControlAnswer:
    """Triton's answer to one control call: `status` 0 is OK, else a gRPC status code number with `details`."""

    status: int
    details: str = ""
    message: Any = None  # the response message (a service_pb2 type) when status is 0


class TritonGrpcControl:
    """Model control of one Triton backend over gRPC at `target` ("host:port")."""

    def __init__(self, backend_id: str, target: str) -> None:
        self.backend_id = backend_id
        self.target = target
        self._channel: grpc.aio.Channel | None = None

    async def _call(self, rpc: str, request: Message, response_type: type[Message], timeout: float) -> ControlAnswer:
        if self._channel is None:
            # Created here, inside the running event loop it will serve.
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        method = self._channel.unary_unary(
            _SERVICE + rpc, request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        try:
            message = await method(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details() or code.name
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise BackendTimeout(
                    f"backend {self.backend_id} did not answer {rpc} over gRPC within {timeout:g} s", self.backend_id
                ) from exc
            if code is grpc.StatusCode.UNAVAILABLE and _is_transport_failure(details):
                raise BackendUnavailable(
                    f"backend {self.backend_id} could not be reached over gRPC at {self.target}: {details}",
                    self.backend_id,
                ) from exc
            return ControlAnswer(code.value[0], details)
        return ControlAnswer(0, "", message)

    async def load(
        self, name: str, timeout: float, config: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> ControlAnswer:
        """`RepositoryModelLoad`; `config` (model config JSON) and `files` ({"1/model.py": content}) are the
        repository API's overrides for a load by content."""
        request = pb.RepositoryModelLoadRequest(model_name=name)
        if config is not None:
            request.parameters["config"].string_param = config
        for rel, content in (files or {}).items():
            request.parameters[f"file:{rel}"].bytes_param = content
        return await self._call("RepositoryModelLoad", request, pb.RepositoryModelLoadResponse, timeout)

    async def unload(self, name: str, timeout: float) -> ControlAnswer:
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        return await self._call("RepositoryModelUnload", request, pb.RepositoryModelUnloadResponse, timeout)

    async def index(self, timeout: float) -> ControlAnswer:
        """`RepositoryIndex`; on success `message.models` has `name`, `version`, `state`, `reason`."""
        return await self._call("RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse, timeout)

    async def ready(self, name: str, timeout: float) -> bool:
        """Whether Triton serves `name` now (`ModelReady`); a refusal means not served."""
        answer = await self._call("ModelReady", pb.ModelReadyRequest(name=name), pb.ModelReadyResponse, timeout)
        return answer.status == 0 and bool(answer.message.ready)

    async def config(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The model's config as `GET /v2/models/{m}/config` gives it (a JSON-like dict), None if not served."""
        answer = await self._call("ModelConfig", pb.ModelConfigRequest(name=name), pb.ModelConfigResponse, timeout)
        if answer.status != 0:
            return None
        return dict(json_format.MessageToDict(answer.message.config, preserving_proto_field_name=True))

    async def statistics(self, timeout: float) -> ControlAnswer:
        """`ModelStatistics` of every served model; on success `message.model_stats` lists them by `name`."""
        return await self._call("ModelStatistics", pb.ModelStatisticsRequest(), pb.ModelStatisticsResponse, timeout)

    async def aclose(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()


def _serialize(message: Message) -> bytes:
    return bytes(message.SerializeToString())


def _is_transport_failure(details: str) -> bool:
    # grpc's own words when no connection could be made or it broke, as opposed to Triton answering UNAVAILABLE.
    low = details.lower()
    return any(
        w in low
        for w in (
            "failed to connect",
            "connection refused",
            "socket closed",
            "connection reset",
            "connections to all backends failing",
            "dns resolution failed",
            "broken pipe",
        )
    )
