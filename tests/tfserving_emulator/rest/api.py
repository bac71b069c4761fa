"""The REST API (http_rest_api_handler.cc, http_rest_api_util.cc): routing /v1/models/... to status, metadata,
predict, classify and regress, and errors as `{ "error": ... }` with http_server.cc's status mapping."""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
from typing import Any

from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from tests.tfserving_emulator.inference.classify_regress import classify, regress
from tests.tfserving_emulator.inference.metadata import get_model_metadata
from tests.tfserving_emulator.inference.predict import predict
from tests.tfserving_emulator.inference.signatures import DEFAULT_SIGNATURE
from tests.tfserving_emulator.rest.json_examples import examples_input_from_json
from tests.tfserving_emulator.rest.json_inputs import inputs_from_json, parse_json_body, signature_name_from_json
from tests.tfserving_emulator.rest.json_outputs import json_from_outputs
from tests.tfserving_emulator.rest.json_writer import RawNumber, dumps, format_decimal
from tests.tfserving_emulator.servables.server_core import ServerCore
from tests.tfserving_emulator.status import INVALID_ARGUMENT, TFError

log = logging.getLogger("tfserving_emulator")


# http_server.cc ToHTTPStatusCode
HTTP_STATUS = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}


PREDICTION_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_RE = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
V1_RE = re.compile(r"(?i)/v1/.*", re.DOTALL)


def _model_spec(name: str, version: int | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name)
    if version is not None and label is not None:
        raise TFError(
            INVALID_ARGUMENT, f"Both model version ({version}) and model version label ({label}) cannot be supplied."
        )
    if version is not None:
        spec.version.value = version
    if label is not None:
        spec.version_label = label
    return spec


def _json_request(request: Any, spec: model_pb2.ModelSpec, body: bytes) -> dict[str, Any]:
    """Parse a POST body; `request.model_spec` becomes `spec` with the body's signature_name. Returns the body."""
    request.model_spec.CopyFrom(spec)
    doc = parse_json_body(body)
    request.model_spec.signature_name = signature_name_from_json(doc)
    return doc


class RestApi:
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    def process(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """HttpRestApiHandler::ProcessRequest -> (HTTP status, JSON body)."""
        try:
            output = self._process(method, path, body)
            return 200, output
        except TFError as e:
            return HTTP_STATUS.get(e.code, 500), '{ "error": ' + json.dumps(e.message) + " }"
        except Exception as e:  # an emulator bug: say so rather than drop the connection
            log.exception("REST %s %s failed", method, path)
            return 500, '{ "error": ' + json.dumps(f"TF Serving emulator internal error: {e!r}") + " }"

    def _process(self, method: str, path: str, body: bytes) -> str:
        malformed = TFError(INVALID_ARGUMENT, f"Malformed request: {method} {path}")
        if method == "POST":
            m = PREDICTION_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version_str, label, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        elif method == "GET":
            m = STATUS_RE.fullmatch(path)
            if not m:
                raise malformed
            name, version_str, label, verb = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
        else:
            raise malformed
        name = urllib.parse.unquote(name)
        version = int(version_str) if version_str else None
        if label:
            label = urllib.parse.unquote(label)
        if method == "POST":
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb == "classify":
                return self._classify(name, version, label, body)
            if verb == "regress":
                return self._regress(name, version, label, body)
            raise malformed  # e.g. ":PREDICT" matches the case-insensitive pattern but no handler
        if verb == "metadata":
            return self._metadata(name, version, label)
        return self._status(name, version, label)

    def _predict(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = predict_pb2.PredictRequest()
        doc = _json_request(request, _model_spec(name, version, label), body)
        model = self.core.get_servable(request.model_spec)  # GetInfoMap
        signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name not in model.signature_defs:
            raise TFError(INVALID_ARGUMENT, f'Serving signature name: "{signature_name}" not found in signature def')
        tensorinfo = {k: v.dtype for k, v in model.signature_defs[signature_name].inputs.items()}
        if not tensorinfo:
            raise TFError(
                INVALID_ARGUMENT,
                f"Failed to get input map for signature: {request.model_spec.signature_name or 'DEFAULT'}",
            )
        fmt, inputs = inputs_from_json(doc, tensorinfo)
        _, outputs = predict(self.core, request, inputs)
        return json_from_outputs(outputs, fmt)

    def _classify(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest()
        doc = _json_request(request, _model_spec(name, version, label), body)
        request.input.CopyFrom(examples_input_from_json(doc, "classify"))
        result = classify(self.core, request).result
        if not result.classifications:
            raise TFError(INVALID_ARGUMENT, "Cannot convert empty ClassificationResults to JSON")
        rows = [
            [[c.label, RawNumber(format_decimal(c.score, True))] for c in cls.classes] for cls in result.classifications
        ]
        return (
            '{\n    "results": [\n' + ",\n".join("        " + dumps(r, single_line=True) for r in rows) + "\n    ]\n}"
        )

    def _regress(self, name: str, version: int | None, label: str | None, body: bytes) -> str:
        request = regression_pb2.RegressionRequest()
        doc = _json_request(request, _model_spec(name, version, label), body)
        request.input.CopyFrom(examples_input_from_json(doc, "classify"))  # (sic: the message says classify)
        result = regress(self.core, request).result
        if not result.regressions:
            raise TFError(INVALID_ARGUMENT, "Cannot convert empty RegressionResults to JSON")
        values = [RawNumber(format_decimal(r.value, True)) for r in result.regressions]
        return '{\n    "results": ' + dumps(values, single_line=True) + "\n}"

    def _status(self, name: str, version: int | None, label: str | None) -> str:
        if not name:
            raise TFError(INVALID_ARGUMENT, "Missing model name in request.")
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        response = self.core.get_model_status(request)
        return str(json_format.MessageToJson(response, always_print_fields_with_no_presence=True, indent=1))

    def _metadata(self, name: str, version: int | None, label: str | None) -> str:
        if not name:
            raise TFError(INVALID_ARGUMENT, "Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.metadata_field.append("signature_def")
        request.model_spec.CopyFrom(_model_spec(name, version, label))
        response = get_model_metadata(self.core, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)

        def to_json(message: Any) -> str:
            return str(
                json_format.MessageToJson(
                    message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True, indent=1
                )
            )

        return (
            '{\n"model_spec":'
            + to_json(response.model_spec)
            + ',\n"metadata": {"signature_def": '
            + to_json(signature_map)
            + "}\n}\n"
        )
