"""modelyard's own TF Serving protobuf messages, so that the gateway never imports TensorFlow.

The official `tensorflow_serving.apis` modules pull in all of TensorFlow (seconds to import, hundreds of MB). The
.proto files in this package declare the few TF Serving messages the gateway reads or writes, with TF Serving's
own packages, message names and field numbers (checked against tensorflow-serving-api 2.x by
tests/adapters/test_tfserving_wire.py), so their bytes are TF Serving's bytes:

- model.proto: ModelSpec, complete.
- status.proto: StatusProto, complete (error_code declared as int32: the same varint as TF's error enum).
- model_server_config.proto: ModelServerConfig, ModelConfigList, ModelConfig and
  FileSystemStoragePathSourceConfig.ServableVersionPolicy, as far as a ReloadConfigRequest needs them.
- model_service.proto: ModelService with GetModelStatusRequest/Response, ModelVersionStatus (and its State),
  ReloadConfigRequest/Response (their metric fields left out).
- prediction_service.proto: PredictionService with the OUTER messages of Predict, Classify, Regress,
  GetModelMetadata and MultiInference, partial on purpose: only model_spec (and MultiInference's tasks/results
  that hold them) is declared. Tensors, examples and results are not: they stay opaque bytes.

The messages live in a PRIVATE descriptor pool, loaded from descriptors.binpb (a FileDescriptorSet compiled from
the .proto files and committed), never in protobuf's default pool: their full names are the official ones, and a
process that also imports `tensorflow_serving` (the tests do) would otherwise see two definitions of
`tensorflow.serving.PredictRequest`. The runtime needs only `protobuf`.

The API is in `adapters.tfserving_proto.messages` (bytes in, bytes out, typed). This module imports nothing, so that
`python -m adapters.tfserving_proto.build` runs even while the artifact is missing or stale.

The data-plane functions (`read_model_spec`, `rewrite_model_name`) do not even parse the outer messages: they walk
the top-level records on the wire (`adapters.protowire.records`), parse only the ModelSpec with protobuf, and
splice a renamed ModelSpec back in place, so the tensor bytes are neither parsed nor moved. The outer views in
prediction_service.proto give the field numbers they walk, and the gRPC method table (`METHODS`).

To change a message: edit its .proto file, keep TF Serving's field numbers, then regenerate the artifact with
`python -m adapters.tfserving_proto.build` (needs grpcio-tools, a dev dependency) and commit both. A test fails
while the artifact is out of date.
"""
