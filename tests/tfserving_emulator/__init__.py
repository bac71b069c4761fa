"""A TensorFlow Serving 2.x emulator for modelyard's tests: the model-management and inference behaviour of
`tensorflow_model_server`, as far as a client can observe it, rebuilt in Python on the official
`tensorflow_serving.apis` protos, grpc and TensorFlow itself.

    python -m tests.tfserving_emulator --grpc-port 8500 --rest-port 8501 [--model-config-file F] ...

No TF Serving binary can be installed where modelyard's tests run, so the gateway's TF Serving adapter is tested
against this. It follows TF Serving's own code (server_core.cc, model_service_impl.cc, get_model_status_impl.cc,
file_system_storage_path_source.cc, aspired_versions_manager.cc, basic_manager.cc, loader_harness.cc,
availability_preserving_policy.cc, servable_state_monitor.cc, load_servables_fast.cc, predict_util.cc,
classifier.cc, regressor.cc, get_model_metadata_impl.cc, http_rest_api_handler.cc, http_rest_api_util.cc,
http_server.cc, json_tensor.cc, grpc_status_util.cc) component by component, so the observable behaviour falls
out of the same structure rather than being special-cased:

Reproduced
- ModelService.HandleReloadConfigRequest: only `model_config_list` (anything else: INVALID_ARGUMENT "ServerModelConfig
  type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"). The list REPLACES
  the configured list; ServerCore's config mutex serializes reloads. Validation first (duplicate names, relative
  base paths, model_type/model_platform, platform changes, version labels), then the file-system source gets the
  new list: models left out are un-aspired at once and unloaded by the manager thread (UNLOADING then END, after
  `--unload-delay`); the call then waits, with a fresh state monitor, for the NEW models only (Latest(name) to reach
  AVAILABLE or END) and fails with UNKNOWN "N model(s) did not become available: {{name: X version: 1} due to
  error: CODE: msg}, }" if one ended instead. Models already in the old list are not waited for, whatever changed.
  The first model_config_list (at startup, or the first reload of a server started without one) goes through
  load_servables_fast instead ("Some servables did not become available: {...}"), and a failure there leaves no
  file-system source behind, exactly like TF Serving (see tensorflow/serving#1565). A failed reload answers with
  the gRPC error (code and message, message cut at 1024 characters + "...TRUNCATED"); ReloadConfigResponse.status
  is set too, but grpc sends no body with an error status, as with the C++ server.
- The file-system source polls every `--file-system-poll-wait-seconds` (TF Serving: 1 s): numeric version folders,
  version policies `latest` (num_versions), `all`, `specific`; a missing base path makes the WHOLE poll fail (no
  model gets new aspired versions; a reload adding it hangs until the path appears - TF Serving behaves the same,
  tensorflow/serving#1447); a base path with no version folder un-aspires every version of that model;
  `--fail-if-no-model-versions-found` makes such configs fail the reload instead.
- The AspiredVersionsManager: one management pass every 100 ms (flush, pending aspired versions, one action, an
  unload before a load), the AvailabilityPreservingPolicy (a new version loads before the old one unloads),
  loads and unloads inline in that thread unless `--num-load-threads`/`--num-unload-threads` > 0 (TF Serving's
  defaults are 0: loads are serial), `--num-initial-load-threads` for the first config, load retries
  (`--max-num-load-retries`, default 5 like TF Serving, `--load-retry-interval-seconds`, default 60) that block that
  thread, a failed version kept in END with its error while it stays aspired (it is retried only after it was
  left out of a reload and added again), re-aspired versions waiting until their old harness is gone.
- States as the ServableStateMonitor reports them: START, LOADING, AVAILABLE, UNLOADING, END with `status`
  (error_code, error_message); versions of removed models stay reported in END. GetModelStatus: "Missing
  ModelSpec", NOT_FOUND "Could not find any versions of model X" / "Could not find version N of model X".
- Loading: a version folder needs saved_model.pb or saved_model.pbtxt (else NOT_FOUND "Specified file path does not
  appear to contain a SavedModel bundle (should have a file called `saved_model.pb`)\\nSpecified file path: P");
  export.meta -> UNIMPLEMENTED "Session Bundle is deprecated and removed."; an unparsable proto -> DATA_LOSS; no
  `serve` meta graph -> NOT_FOUND; then a real tf.saved_model.load. `--max-models N` plays the part of TF Serving's
  resource tracker (--total_model_memory_limit_bytes): a load that would make more than N versions hold resources
  (loading, available or unloading) fails with RESOURCE_EXHAUSTED "Insufficient resources to load servable {name:
  X version: 1}" and END, after waiting for any load/unload in flight, like BasicManager::ReserveResources.
- PredictionService Predict / Classify / Regress / GetModelMetadata on the serving map: Latest(name) is the highest
  AVAILABLE version; NOT_FOUND "Servable not found for request: Latest(x)" / "Specific(x, 3)"; version labels
  (`version_labels` in the config, assignable only to an AVAILABLE version, "Unrecognized servable version label");
  predict validation and messages of predict_util.cc (signature key, method name, input count, aliases,
  output_filter); classify/regress over tf.Example `Input` with context, with the method-name, signature and
  output-shape checks of classifier.cc / regressor.cc; metadata = the `signature_def` map of the loaded meta graph.
- REST (http_rest_api_handler.cc): GET /v1/models/{m}[/versions/{v}|/labels/{l}][/metadata], POST
  .../{m}[/versions/{v}|/labels/{l}]:(predict|classify|regress), the row ("instances" -> "predictions") and
  columnar ("inputs" -> "outputs") formats with json_tensor.cc's checks, b64 and `_bytes` outputs, NaN/Infinity,
  float32 printed as TF Serving prints it (shortest round trip, whole numbers with ".0"); errors as
  `{ "error": "<message>" }` with http_server.cc's code mapping (NOT_FOUND 404, INVALID_ARGUMENT and
  FAILED_PRECONDITION 400, UNKNOWN/INTERNAL 500, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, ...), paths not under
  /v1/ 404 with an empty body, unknown /v1/ paths 400 "Malformed request: GET /v1/...".

Not reproduced (or only approximately)
- Batching, warmup (assets.extra), MultiInference (UNIMPLEMENTED here), TFLite, the session-run timeout, SSL,
  Prometheus, request logging, --model_config_file_poll_wait_seconds, a custom_model_config at startup (TF
  Serving crashes; the emulator exits 1), the deprecated `model_type` values other than TENSORFLOW.
- Exact texts of errors raised while TensorFlow runs a model (dtype/shape mismatches give INVALID_ARGUMENT with
  TensorFlow's Python message), of JSON parse errors (Python's json module, not rapidjson's), and the whitespace of
  JSON bodies. Error strings inside other errors use absl's "CODE: message" form (TF Serving 2.x).
- SIGTERM/SIGINT exit 0 after closing the ports (TF Serving dies by the signal). Nothing is unloaded on exit.
- TensorFlow runs with one intra-op and one inter-op thread (`--tf-threads`); loads are real TF loads, plus
  `--load-delay`.

Extra for tests: `--load-delay` / `--unload-delay` seconds added to every load / unload, `--load-log FILE` gets one
line `load <name> <version>` per load attempt (each retry is an attempt), `--max-models N` as above.

Layout (one concept per module; TF Serving's own file names in each docstring)
- `main.py` (and `__main__.py`): the process: flags, the startup config, wiring, ports, signals.
- `status.py`: error codes and `TFError`, the tensorflow::Status every layer raises.
- `servables/`: the model lifecycle: `state_monitor.py` (states, event bus, waits), `loader.py` (one SavedModel
  version), `manager.py` (harnesses, the management thread, `--max-models`), `file_system_source.py` (version
  folders, version policies), `server_core.py` (config reloads, version labels, GetModelStatus).
- `inference/`: `tensors.py`, `signatures.py`, `predict.py`, `classify_regress.py`, `metadata.py`.
- `grpc_services.py`: ModelService and PredictionService on the official grpc stubs.
- `rest/`: `api.py` (routes, errors), `http_server.py`, and the JSON of json_tensor.cc: `json_inputs.py`,
  `json_outputs.py`, `json_examples.py`, `json_writer.py`.
Nothing imports this package's names: the tests run it as a child process (tests/tfserving_stack.py), so importing
the package itself stays free of TensorFlow.
"""
