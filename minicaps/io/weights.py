"""Weights files: a trained network without its training state, and the one that ships.

A checkpoint holds everything a run needs to go on (Adam's moments, the random state, the
average): about 4 times the parameters. To look at a trained network, or to hand one on,
the parameters are enough, and float16 halves them again:

    minicaps export-weights runs/x/best.npz weights.npz     # the moving average, float16
    model = load_weights("weights.npz").model

A weights file is an .npz like a checkpoint (read by the same allow-list reader,
checkpoint.read_archive): ``param/<name>`` arrays (float16, float32 or float64) and a
``meta`` JSON member {"format": "minicaps-weights", "model", "config", "dtype", "weights",
"provenance"}, where model is the kind of network ("capsnet" or "cnn", as a checkpoint's;
a file without it holds a CapsNet) and provenance says how they were made (command,
seed, epochs, test accuracy).

minicaps ships one: the paper's network trained on MNIST (SHIPPED, with the run's
metrics.jsonl beside it for the curves picture), which ``--pretrained`` loads in
``minicaps plot``, ``predict`` and ``evaluate``, and ``load_pretrained()`` in Python.
Both check it against its SHA-256 (SHIPPED_SHA256) first: a file that was edited reads as
well as the real one, and would give other numbers without a word.
"""
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.io.archive import ARRAY_DTYPES, read_archive
from minicaps.io.checkpoint import load_checkpoint
from minicaps.io.metadata import ACCURACY, check_fields, check_meta_field, config_from, is_count, num_classes_of, is_text, check_settings
from minicaps.io.writer import write_atomically
from minicaps.nn.registry import build_model, model_kind
from minicaps.io.metadata import FORMAT as CHECKPOINT_FORMAT
from minicaps.io.files import regular_file, writable_file
from minicaps.nn.base import Network

FORMAT = "minicaps-weights"
FORMAT_VERSION = 1
WEIGHT_DTYPES = (np.dtype("float16"),) + ARRAY_DTYPES
SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "capsnet-mnist.npz"
SHIPPED_METRICS = SHIPPED.with_suffix(".metrics.jsonl")
SHIPPED_SHA256 = "eaf6fde942e24f57b6ca757da55dd65c54c48e529eca4095bf78b6bbf6f6a680"

# How a weights file was made, as export_weights writes it (a field missing or null passes;
# fields of other names are notes, kept as they are). The settings are checked as a
# checkpoint's (checkpoint.check_settings).
PROVENANCE = {
    "checkpoint": (is_text, "the path of a checkpoint"),
    "epoch": (is_count, "an integer >= 0"),
    "step": (is_count, "an integer >= 0"),
    "seed": (is_count, "an integer >= 0"),
    "command": (is_text, "a text"),
    "weights": (is_text, "a text"),
    "test_accuracy": ACCURACY,
    "test_accuracy_note": (is_text, "a text"),
}


@dataclass
class Weights:
    """What load_weights returns: the model, which weights it holds ("average" or
    "trained") and how they were made. ``model_with`` answers like a Checkpoint's."""
    path: Path
    model: Network          # a CapsNet or a BaselineCNN (fast), as the file's "model" tag says
    weights: str
    provenance: dict = field(default_factory=dict)

    @property
    def metrics_path(self):
        """The run's metrics.jsonl kept beside the file (for curves), or None."""
        path = self.path.with_suffix(".metrics.jsonl")
        return path if path.is_file() else None

    @property
    def epoch(self):
        return self.provenance.get("epoch", "?")

    @property
    def step(self):
        return self.provenance.get("step", "?")

    @property
    def extra(self):
        return {"settings": self.provenance.get("settings", {})}

    @property
    def metrics(self):
        """The test accuracy the provenance records, keyed as a run's metrics are."""
        key = "avg_test_accuracy" if self.weights == "average" else "test_accuracy"
        accuracy = self.provenance.get("test_accuracy")
        return {key: accuracy} if accuracy is not None else {}

    def model_with(self, weights="auto"):
        if weights not in ("auto", self.weights):
            raise ValueError(f"{self.path} holds only the {self.weights} weights (a weights "
                             f"file keeps one set); give --weights auto or {self.weights}")
        return self.model, self.weights


def export_weights(checkpoint, out, weights="auto", dtype="float16", provenance=None):
    """Write the ``weights`` of ``checkpoint`` ("auto": the moving average when the run
    kept one) to ``out`` as a weights file in ``dtype``; returns its path. Refuses
    parameters that ``dtype`` cannot hold (beyond float16's 65504), and an ``out`` that is
    ``checkpoint`` itself or anything but a weights file (_replaceable)."""
    _replaceable(Path(out), checkpoint)
    ckpt = load_checkpoint(checkpoint, device="cpu")
    model, used = ckpt.model_with(weights)
    dtype = np.dtype(dtype)
    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights are saved as float16, float32 or float64, not {dtype}")
    arrays = {}
    for name, p in model.params.items():
        p = backend.to_numpy(p)
        if np.abs(p).max(initial=0) > np.finfo(dtype).max:
            raise ValueError(f"{name} holds values beyond {dtype}'s range "
                             f"({np.finfo(dtype).max:g}); export it as float32")
        arrays[f"param/{name}"] = p.astype(dtype)
    made = {"checkpoint": str(checkpoint), "epoch": ckpt.epoch, "step": ckpt.step,
            "settings": ckpt.extra.get("settings", {}), **(provenance or {})}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model": model_kind(model), "config": model.config.to_dict(), "dtype": dtype.name, "weights": used,
            "provenance": made}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    write_atomically(Path(out), arrays)
    return Path(out)


def _replaceable(out, checkpoint):
    """ValueError naming ``out`` unless export_weights may write there: nothing yet, a link
    (replaced, not followed), or a weights file that is not ``checkpoint``. A run's
    checkpoint is never written over: its training state would be lost."""
    writable_file(out, inputs=[checkpoint])
    if out.is_symlink() or not out.exists():
        return
    try:
        meta, _ = read_archive(out, lambda meta, path: meta, (), only_meta=True)
    except ValueError:
        meta = None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return
    what = ("a minicaps checkpoint (a run's training state)"
            if isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT
            else "not a minicaps weights file")
    raise ValueError(f"{out} is {what}: export-weights writes over a weights file only, so it "
                     f"is left as it was; give another name for the weights file")


def load_weights(path, device=None, dtype="float32"):
    """A Weights with the network of the weights file at ``path`` (a CapsNet or a
    BaselineCNN, as its "model" tag says), computing in ``dtype`` on ``device``.
    ValueError naming the file for anything wrong in it."""
    path = regular_file(Path(path), "weights file")
    meta, arrays = read_archive(path, _check_weights_meta, ("param",), dtypes=WEIGHT_DTYPES)
    params = {k[len("param/"):]: a.astype(dtype) for k, a in arrays.items()}
    try:
        model = build_model(config_from(meta, path), dtype=dtype, device=device,
                            params=params)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return Weights(path, model, meta["weights"], meta["provenance"])


def load_any(path, device=None):
    """A checkpoint of a run (checkpoint.Checkpoint) or a weights file (Weights), whichever
    ``path`` holds: both answer model_with, epoch, step, extra and metrics."""
    meta, _ = read_archive(path, lambda meta, path: meta, (), only_meta=True)
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return load_weights(path, device=device)
    return load_checkpoint(path, device=device)


def metrics_beside(path):
    """The metrics.jsonl of the run a checkpoint or weights file comes from, if beside it."""
    path = Path(path)
    for candidate in (path.with_suffix(".metrics.jsonl"), path.parent / "metrics.jsonl"):
        if candidate.is_file():
            return candidate
    return path.parent / "metrics.jsonl"


def load_pretrained(device=None, dtype="float32"):
    """The CapsNet that ships with minicaps: the paper's network trained on MNIST (its
    provenance, test accuracy included, in ``.provenance``)."""
    if not SHIPPED.is_file():
        raise FileNotFoundError(f"the shipped weights are missing ({SHIPPED}): reinstall "
                                f"minicaps from its source checkout")
    _check_shipped()
    return load_weights(SHIPPED, device=device, dtype=dtype)


def _check_shipped():
    """The shipped weights file must be the one released: its SHA-256 is SHIPPED_SHA256.
    (A file edited and zipped again reads as well as the real one, with other numbers.)"""
    digest = hashlib.sha256()
    with open(SHIPPED, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SHIPPED_SHA256:
        raise ValueError(f"the shipped weights file {SHIPPED} is damaged: its SHA-256 is "
                         f"{digest.hexdigest()[:16]}..., the released file's is "
                         f"{SHIPPED_SHA256[:16]}...; reinstall minicaps from its source checkout")


def _check_weights_meta(meta, path):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minicaps weights file (format is not {FORMAT!r}); "
                         f"a checkpoint of a run is given without --pretrained")
    version = meta.get("format_version")
    check_meta_field(path, "format_version", version,
                      isinstance(version, int) and 1 <= version <= FORMAT_VERSION,
                      f"an integer in 1..{FORMAT_VERSION}")
    check_meta_field(path, "config", meta.get("config"), isinstance(meta.get("config"), dict),
                      "a JSON object")
    check_meta_field(path, "dtype", meta.get("dtype"),
                      meta.get("dtype") in [d.name for d in WEIGHT_DTYPES], "float16/32/64")
    check_meta_field(path, "weights", meta.get("weights"),
                      meta.get("weights") in ("average", "trained"), "'average' or 'trained'")
    check_meta_field(path, "provenance", meta.get("provenance"),
                      isinstance(meta.get("provenance"), dict), "a JSON object")
    check_fields(meta["provenance"], path, "provenance", PROVENANCE)
    check_settings(meta["provenance"].get("settings"), path, "provenance.settings",
                   num_classes_of(meta, path))
    return meta
