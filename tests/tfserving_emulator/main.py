"""The emulator process: command-line flags, the startup config file, wiring the parts, binding the gRPC and
REST ports, and the exit on SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests import tfserving_emulator as package
from tests.tfserving_emulator.grpc_services import ModelService, PredictionService
from tests.tfserving_emulator.rest.api import RestApi
from tests.tfserving_emulator.rest.http_server import HttpHandler, HttpServer
from tests.tfserving_emulator.servables.loader import LoaderOptions, SavedModelLoader
from tests.tfserving_emulator.servables.manager import Manager, ManagerOptions
from tests.tfserving_emulator.servables.server_core import CoreOptions, ServerCore
from tests.tfserving_emulator.servables.state_monitor import EventBus
from tests.tfserving_emulator.status import TFError

log = logging.getLogger("tfserving_emulator")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.tfserving_emulator", description=(package.__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind (default 127.0.0.1)")
    p.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, required=True)
    p.add_argument("--rest-port", "--rest_api_port", dest="rest_port", type=int, default=0, help="0: no REST")
    p.add_argument("--model-config-file", "--model_config_file", dest="model_config_file")
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds added to every load")
    p.add_argument("--unload-delay", type=float, default=0.0, help="seconds added to every unload")
    p.add_argument("--load-log", help="append 'load <name> <version>' per load attempt")
    p.add_argument("--max-models", type=int, help="loads fail (RESOURCE_EXHAUSTED) beyond N versions holding resources")
    p.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0)
    p.add_argument("--fail-if-no-model-versions-found", action="store_true")
    p.add_argument("--max-num-load-retries", type=int, default=5)
    p.add_argument("--load-retry-interval-seconds", type=float, default=60.0)
    p.add_argument("--num-load-threads", type=int, default=0)
    p.add_argument("--num-unload-threads", type=int, default=0)
    p.add_argument("--num-initial-load-threads", type=int, default=max(1, 4 * (os.cpu_count() or 1)))
    p.add_argument("--manage-state-interval-seconds", type=float, default=0.1)
    p.add_argument("--allow-version-labels-for-unavailable-models", action="store_true")
    p.add_argument("--grpc-max-threads", type=int, default=32)
    p.add_argument("--tf-threads", type=int, default=1, help="TensorFlow intra-op and inter-op threads")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s.%(msecs)03d %(levelname).1s %(threadName)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    tf.config.threading.set_intra_op_parallelism_threads(args.tf_threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.tf_threads)

    stopping = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        if not serving.is_set():
            os._exit(0)  # still loading the initial config: nothing to close
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    bus = EventBus()
    loader = SavedModelLoader(LoaderOptions(args.load_delay, args.unload_delay, args.load_log), stopping)
    manager = Manager(
        bus,
        loader,
        ManagerOptions(
            num_load_threads=args.num_load_threads,
            num_unload_threads=args.num_unload_threads,
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval=args.load_retry_interval_seconds,
            manage_state_interval=args.manage_state_interval_seconds,
            max_models=args.max_models,
        ),
        stopping,
    )
    core = ServerCore(
        manager,
        bus,
        CoreOptions(
            file_system_poll_wait=args.file_system_poll_wait_seconds,
            fail_if_no_model_versions_found=args.fail_if_no_model_versions_found,
            num_initial_load_threads=args.num_initial_load_threads,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        ),
    )

    if args.model_config_file:
        config = model_server_config_pb2.ModelServerConfig()
        try:
            text_format.Parse(Path(args.model_config_file).read_text(), config)
        except (OSError, text_format.ParseError) as e:
            print(f"Invalid protobuf file: '{args.model_config_file}' ({e})", file=sys.stderr)
            return 1
        if config.WhichOneof("config") == "custom_model_config":
            print("ModelServer does not yet support custom model config.", file=sys.stderr)
            return 1
        try:
            core.reload_config(config)
        except TFError as e:
            print(f"Failed to start server. Error: {e.to_string()}", file=sys.stderr)
            return 255

    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.grpc_max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ],
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), grpc_server)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), grpc_server)
    try:
        bound = grpc_server.add_insecure_port(f"{args.host}:{args.grpc_port}")
    except RuntimeError as e:
        bound = 0
        log.error("%s", e)
    if bound == 0:
        print(f"Failed to start server. Could not bind gRPC port {args.host}:{args.grpc_port}", file=sys.stderr)
        return 3
    grpc_server.start()
    http_server: ThreadingHTTPServer | None = None
    if args.rest_port:
        handler = type("Handler", (HttpHandler,), {"api": RestApi(core)})
        try:
            http_server = HttpServer((args.host, args.rest_port), handler)
        except OSError as e:
            print(
                f"Failed to start server. Could not bind REST port {args.host}:{args.rest_port}: {e}", file=sys.stderr
            )
            grpc_server.stop(0)
            return 3
        threading.Thread(target=http_server.serve_forever, name="http", daemon=True).start()
    serving.set()
    print(f"Running gRPC ModelServer at {args.host}:{args.grpc_port} ...", file=sys.stderr, flush=True)
    if http_server is not None:
        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_port} ...", file=sys.stderr, flush=True)

    while not stopping.wait(1.0):
        pass
    grpc_server.stop(0)
    if http_server is not None:
        http_server.shutdown()
        http_server.server_close()
    sys.stderr.flush()
    os._exit(0)  # handler threads may be blocked in a reload (as in TF Serving): do not join them
