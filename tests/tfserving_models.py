"""Tiny real SavedModels for the TF Serving emulator (and a real TF Serving, were one ever at hand).

Every model is a copy of ONE template SavedModel (TF2, built once per machine and cached under the temp dir,
keyed by a hash of its builder's source and the TensorFlow version). The template reads its identity, a model
name and an offset, from an asset file (`assets/identity.tsv`, two tab-separated lines `name\\t<name>` and
`offset\\t<float>`) into a lookup table when the SavedModel is loaded; copying the folder and rewriting that asset
makes a new model in milliseconds, so 40 models take well under a second once the template exists. Building the
template imports TensorFlow in a subprocess (~10 s, once), so the process calling these helpers never imports it.

Signatures of every model (base path `<root>/<name>`, version folders `1`, `2`, ...):

- `serving_default` (method `tensorflow/serving/predict`): input `x` DT_FLOAT shape [-1, 4];
  outputs `y` DT_FLOAT [-1, 4] = x + offset, and `model` DT_STRING [-1] = the model name on every row.
- `tensorflow/serving/classify` (method `tensorflow/serving/classify`): input `inputs` DT_STRING [-1] of
  serialized tf.Example with a float feature `x` of 4 values; outputs `scores` DT_FLOAT [-1, 4] = x + offset and
  `classes` DT_STRING [-1, 4] = `<name>:0` .. `<name>:3`.
- `tensorflow/serving/regress` (method `tensorflow/serving/regress`): input `inputs` as above; output `outputs`
  DT_FLOAT [-1] = sum(x) + offset.

`build_models` gives model i (0-based, in the order of `names`) the offset `i + 1` unless `offsets` says otherwise,
so an answer shows which model answered twice over: its `model` string and its offset.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE_VERSION = "1"  # bump to force a rebuild of the cached template
IDENTITY_ASSET = "identity.tsv"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_offset(index: int) -> float:
    """The offset `build_models` gives the model at `index` in its `names`."""
    return float(index + 1)


def _tensorflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("tensorflow")
    except Exception:  # pragma: no cover - any TF install without metadata
        return "unknown"


def _template_dir() -> Path:
    digest = hashlib.sha256()
    digest.update(inspect.getsource(_build_template).encode())  # the builder only: editing helpers keeps the cache
    digest.update(IDENTITY_ASSET.encode())
    digest.update(_tensorflow_version().encode())
    digest.update(TEMPLATE_VERSION.encode())
    return Path(tempfile.gettempdir()) / f"modelyard-tfs-template-{digest.hexdigest()[:16]}"


def template_saved_model() -> Path:
    """The cached template SavedModel folder (the one holding saved_model.pb), built on first use."""
    target = _template_dir()
    if (target / "saved_model.pb").exists():
        return target
    staging = Path(tempfile.mkdtemp(prefix="modelyard-tfs-template-build-"))
    try:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        proc = subprocess.run(
            [sys.executable, "-m", "tests.tfserving_models", "--build-template", str(staging / "model")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building the template SavedModel failed:\n{proc.stderr[-4000:]}")
        try:
            os.replace(staging / "model", target)  # atomic: concurrent builders race harmlessly
        except OSError:
            if not (target / "saved_model.pb").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_version(base_path: Path, version: int, name: str, offset: float) -> Path:
    """Copy the template into `base_path/<version>` with the given identity; returns the version folder."""
    template = template_saved_model()
    version_dir = Path(base_path) / str(version)
    if version_dir.exists():
        shutil.rmtree(version_dir)
    staging = Path(base_path) / f".{version}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(template, staging)
    (staging / "assets" / IDENTITY_ASSET).write_text(f"name\t{name}\noffset\t{offset!r}\n")
    # Appear whole: a poller (TF Serving's or the emulator's) never sees a half-copied version folder.
    os.replace(staging, version_dir)
    return version_dir


def build_models(
    root: Path, names: list[str], offsets: dict[str, float] | None = None, version: int = 1
) -> dict[str, Path]:
    """One model per name at `root/<name>/<version>`; returns name -> base path (the folder above the versions)."""
    result: dict[str, Path] = {}
    for index, name in enumerate(names):
        base = Path(root) / name
        base.mkdir(parents=True, exist_ok=True)
        offset = offsets[name] if offsets and name in offsets else default_offset(index)
        write_version(base, version, name, offset)
        result[name] = base
    return result


def build_versioned_model(root: Path, name: str, versions: dict[int, float] | None = None) -> Path:
    """A model with several versions (default: version 1 offset 10.0, version 2 offset 20.0); returns its base path."""
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    for version, offset in (versions or {1: 10.0, 2: 20.0}).items():
        write_version(base, version, name, offset)
    return base


def build_broken_model(root: Path, name: str, kind: str = "corrupt") -> Path:
    """A base path TF Serving cannot serve; returns it. Kinds:

    - `corrupt`: version folder `1` whose saved_model.pb is not a SavedModel proto (the load fails).
    - `empty_version`: version folder `1` without any saved_model.pb (the load fails).
    - `no_versions`: the base path exists but holds no numeric version folder (nothing is ever loaded).
    - `missing`: the base path does not exist (TF Serving's file-system poll fails).
    """
    base = Path(root) / name
    if kind == "missing":
        if base.exists():
            shutil.rmtree(base)
        return base
    base.mkdir(parents=True, exist_ok=True)
    if kind == "no_versions":
        (base / "README").write_text("no version folders here\n")
        return base
    version_dir = base / "1"
    version_dir.mkdir(exist_ok=True)
    if kind == "corrupt":
        (version_dir / "saved_model.pb").write_bytes(b"\xff\xfe this is not a SavedModel proto \x00\x01")
    elif kind == "empty_version":
        (version_dir / "README").write_text("no saved_model.pb\n")
    else:
        raise ValueError(f"unknown broken-model kind {kind!r}")
    return base


def model_config_text(
    models: dict[str, Path],
    versions: dict[str, list[int]] | None = None,
    labels: dict[str, dict[str, int]] | None = None,
) -> str:
    """TF Serving's text-format ModelServerConfig serving `models` (name -> base path); optionally `specific`
    version policies (name -> versions) and version labels (name -> label -> version)."""
    lines = ["model_config_list {"]
    for name, base in models.items():
        lines += ["  config {", f'    name: "{name}"', f'    base_path: "{Path(base).resolve()}"']
        lines.append('    model_platform: "tensorflow"')
        if versions and name in versions:
            specific = " ".join(f"versions: {v}" for v in versions[name])
            lines.append(f"    model_version_policy {{ specific {{ {specific} }} }}")
        for label, version in (labels or {}).get(name, {}).items():
            lines.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- the template build, run in a subprocess (imports TensorFlow) ---------------------------------------------------


def _build_template(export_dir: Path) -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    work = Path(tempfile.mkdtemp(prefix="modelyard-tfs-asset-"))
    asset = work / IDENTITY_ASSET
    asset.write_text("name\ttemplate\noffset\t0.0\n")

    class Identified(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            initializer = tf.lookup.TextFileInitializer(
                str(asset),
                key_dtype=tf.string,
                key_index=0,
                value_dtype=tf.string,
                value_index=1,
                delimiter="\t",
            )
            self.table = tf.lookup.StaticHashTable(initializer, default_value="")

        def _identity(self) -> tuple[tf.Tensor, tf.Tensor]:
            name = self.table.lookup(tf.constant("name"))
            offset = tf.strings.to_number(self.table.lookup(tf.constant("offset")), out_type=tf.float32)
            return name, offset

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])  # type: ignore[untyped-decorator]
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            name, offset = self._identity()
            return {"y": x + offset, "model": tf.fill(tf.shape(x)[:1], name)}

        def _parse(self, inputs: tf.Tensor) -> tf.Tensor:
            return tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([4], tf.float32)})["x"]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])  # type: ignore[untyped-decorator]
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            name, offset = self._identity()
            x = self._parse(inputs)
            labels = tf.strings.join([tf.fill([4], name), tf.constant(["0", "1", "2", "3"])], separator=":")
            classes = tf.tile(tf.expand_dims(labels, 0), tf.stack([tf.shape(x)[0], 1]))
            return {"scores": x + offset, "classes": classes}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])  # type: ignore[untyped-decorator]
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            _, offset = self._identity()
            return {"outputs": tf.reduce_sum(self._parse(inputs), axis=1) + offset}

    module = Identified()
    signatures = {
        "serving_default": module.predict,
        "tensorflow/serving/classify": module.classify,
        "tensorflow/serving/regress": module.regress,
    }
    tf.saved_model.save(module, str(export_dir), signatures=signatures)

    # tf.saved_model.save marks every signature as a predict signature; TF Serving's Classify and Regress only
    # accept signatures whose method_name says classify / regress, so set those (the TF2 loader ignores it).
    pb_path = export_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(pb_path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for key, method in (
            ("tensorflow/serving/classify", "tensorflow/serving/classify"),
            ("tensorflow/serving/regress", "tensorflow/serving/regress"),
        ):
            meta_graph.signature_def[key].method_name = method
    pb_path.write_bytes(saved_model.SerializeToString())
    (export_dir / "fingerprint.pb").unlink(missing_ok=True)  # its checksum would no longer match saved_model.pb
    if not (export_dir / "assets" / IDENTITY_ASSET).exists():
        raise RuntimeError("the identity asset was not exported with the SavedModel")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-template":
        _build_template(Path(sys.argv[2]))
    else:
        print("usage: python -m tests.tfserving_models --build-template DIR", file=sys.stderr)
        sys.exit(2)
