"""GetModelMetadata (get_model_metadata_impl.cc): the `signature_def` map of the loaded meta graph."""

from __future__ import annotations

from tensorflow_serving.apis import (
    get_model_metadata_pb2,
)

from tests.tfserving_emulator.servables.server_core import ServerCore
from tests.tfserving_emulator.status import INVALID_ARGUMENT, TFError


def get_model_metadata(
    core: ServerCore, request: get_model_metadata_pb2.GetModelMetadataRequest
) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.HasField("model_spec"):
        raise TFError(INVALID_ARGUMENT, "Missing ModelSpec")
    if not request.metadata_field:
        raise TFError(INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field")
    for metadata_field in request.metadata_field:
        if metadata_field != "signature_def":
            # (sic: errors::InvalidArgument concatenates; the %s is printed as is)
            raise TFError(INVALID_ARGUMENT, f"Metadata field %s is not supported{metadata_field}")
    model = core.get_servable(request.model_spec)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in model.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = model.name
    response.model_spec.version.value = model.version
    response.metadata["signature_def"].Pack(signature_map)
    return response
