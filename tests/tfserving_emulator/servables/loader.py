"""Loading one real SavedModel version folder (SavedModelBundleFactory, LoadSessionBundleOrSavedModelBundle),
with the test knobs `--load-delay`, `--unload-delay` and `--load-log`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tests.tfserving_emulator.servables.state_monitor import id_debug_string
from tests.tfserving_emulator.status import DATA_LOSS, INTERNAL, NOT_FOUND, UNIMPLEMENTED, TFError

log = logging.getLogger("tfserving_emulator")


@dataclass
class LoadedModel:
    name: str
    version: int
    path: str
    meta_graph: meta_graph_pb2.MetaGraphDef
    tf_model: Any

    @property
    def signature_defs(self) -> Any:
        return self.meta_graph.signature_def


@dataclass
class LoaderOptions:
    load_delay: float = 0.0
    unload_delay: float = 0.0
    load_log: str | None = None


class SavedModelLoader:
    """What SavedModelBundleFactory + LoadSessionBundleOrSavedModelBundle do for one version folder."""

    def __init__(self, options: LoaderOptions, stopping: threading.Event) -> None:
        self.options = options
        self._stopping = stopping
        self._log_lock = threading.Lock()

    def load(self, name: str, version: int, export_dir: str) -> LoadedModel:
        if self.options.load_log:
            with self._log_lock, open(self.options.load_log, "a") as f:
                f.write(f"load {name} {version}\n")
        log.info("Loading servable version %s from %s", id_debug_string((name, version)), export_dir)
        if self.options.load_delay > 0:
            self._stopping.wait(self.options.load_delay)
        path = Path(export_dir)
        if (path / "export.meta").exists():
            raise TFError(UNIMPLEMENTED, "Session Bundle is deprecated and removed.")
        pb, pbtxt = path / "saved_model.pb", path / "saved_model.pbtxt"
        if not pb.exists() and not pbtxt.exists():
            raise TFError(
                NOT_FOUND,
                "Specified file path does not appear to contain a SavedModel bundle (should have a file called "
                f"`saved_model.pb`)\nSpecified file path: {export_dir}",
            )
        saved_model = saved_model_pb2.SavedModel()
        try:
            if pb.exists():
                saved_model.ParseFromString(pb.read_bytes())
            else:
                text_format.Parse(pbtxt.read_text(), saved_model)
        except (DecodeError, text_format.ParseError, UnicodeDecodeError):
            kind = "binary" if pb.exists() else "text"
            raise TFError(DATA_LOSS, f"Can't parse {pb if pb.exists() else pbtxt} as {kind} proto") from None
        meta_graph = next((mg for mg in saved_model.meta_graphs if "serve" in mg.meta_info_def.tags), None)
        if meta_graph is None:
            raise TFError(
                NOT_FOUND,
                "Could not find meta graph def matching supplied tags: { serve }. To inspect available tag-sets in "
                "the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            )
        try:
            tf_model = tf.saved_model.load(export_dir, tags=["serve"])
        except tf.errors.OpError as e:
            raise TFError(int(e.error_code), e.message) from None
        except Exception as e:
            raise TFError(INTERNAL, f"{type(e).__name__}: {e}") from None
        return LoadedModel(name, version, export_dir, meta_graph, tf_model)

    def unload(self, model: LoadedModel | None) -> None:
        if self.options.unload_delay > 0:
            self._stopping.wait(self.options.unload_delay)
