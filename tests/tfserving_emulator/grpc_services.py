"""The gRPC front end (model_service_impl.cc, prediction_service_impl.cc, grpc_status_util.cc): ModelService
(GetModelStatus, HandleReloadConfigRequest) and PredictionService (Predict, Classify, Regress,
GetModelMetadata, MultiInference), errors as gRPC status (messages cut at 1024 characters)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from tensorflow_serving.apis import (
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from tests.tfserving_emulator.inference.classify_regress import classify, regress
from tests.tfserving_emulator.inference.metadata import get_model_metadata
from tests.tfserving_emulator.inference.predict import predict
from tests.tfserving_emulator.servables.server_core import ServerCore
from tests.tfserving_emulator.status import INTERNAL, INVALID_ARGUMENT, OK, UNIMPLEMENTED, TFError

log = logging.getLogger("tfserving_emulator")


GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _abort(context: grpc.ServicerContext, error: TFError) -> Any:
    message = error.message if len(error.message) <= 1024 else error.message[:1024] + "...TRUNCATED"
    context.abort(GRPC_CODES.get(error.code, grpc.StatusCode.UNKNOWN), message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self.core.get_model_status(request)
        except TFError as e:
            return _abort(context, e)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        config = request.config
        error: TFError | None = None
        if config.WhichOneof("config") == "model_config_list":
            for index, entry in enumerate(config.model_config_list.config):
                log.info(
                    "Config entry index : %d path : %s name : %s platform : %s",
                    index,
                    entry.base_path,
                    entry.name,
                    entry.model_platform,
                )
            try:
                self.core.reload_config(config)
            except TFError as e:
                error = e
            except Exception as e:  # an emulator bug: say so
                log.exception("reload failed")
                error = TFError(INTERNAL, f"TF Serving emulator internal error: {e!r}")
        else:
            error = TFError(
                INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is "
                "currently supported",
            )
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = error.code if error else OK
        if error is not None:
            log.error("ReloadConfig failed: %s", error.message)
            response.status.error_message = error.message
            return _abort(context, error)
        return response


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def _call(self, fn: Callable[[], Any], context: grpc.ServicerContext) -> Any:
        try:
            return fn()
        except TFError as e:
            return _abort(context, e)
        except Exception as e:  # an emulator bug: say so
            log.exception("gRPC call failed")
            return _abort(context, TFError(INTERNAL, f"TF Serving emulator internal error: {e!r}"))

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: predict(self.core, request)[0], context)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: classify(self.core, request), context)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: regress(self.core, request), context)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call(lambda: get_model_metadata(self.core, request), context)

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest, context: grpc.ServicerContext) -> Any:
        return _abort(context, TFError(UNIMPLEMENTED, "MultiInference is not supported by the TF Serving emulator"))
