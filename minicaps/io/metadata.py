"""The metadata of a checkpoint (or a weights file), checked field by field where the file
is loaded: the networks a file can hold, the RNG state, the run's settings (SETTINGS,
NEVER_NULL) and its record, each wrong field a ValueError naming the file and the field
("damaged checkpoint metadata"), so that no command meets a field of the wrong type.
"""
import numpy as np

# The networks a checkpoint or weights file can hold, by the "model" tag of its metadata
# (nn.registry.KINDS; a file without the tag, written before the CNN baselines came,
# holds a CapsNet).
from minicaps.nn.registry import DEFAULT_KIND as DEFAULT_MODEL
from minicaps.nn.registry import KINDS as MODELS
from minicaps.values import is_finite_real, is_int

FORMAT = "minicaps-checkpoint"
FORMAT_VERSION = 1
BIT_GENERATOR = "PCG64"   # numpy's default_rng: the only generator a run draws from
META_KEYS = ("format", "format_version", "config", "dtype", "epoch", "step", "optimizer",
             "rng_state")

def generator_from_state(state):
    """A numpy Generator whose bit generator continues from ``state`` (bit_generator.state),
    once check_rng_state has found it to be one minicaps writes."""
    check_rng_state(state)
    bit_generator = np.random.PCG64()
    try:
        bit_generator.state = state
    except (TypeError, KeyError, ValueError, OverflowError, IndexError) as e:
        raise ValueError(f"rng_state is not a {BIT_GENERATOR} state ({type(e).__name__}: "
                         f"{e})") from e
    return np.random.Generator(bit_generator)


def check_rng_state(state):
    """A ValueError naming the field unless ``state`` is a PCG64 bit_generator.state as
    minicaps writes it (train draws from default_rng): every field there, of its type and
    in its range. Another generator's state is refused here, when a checkpoint is read or
    written, not an epoch later when the run is saved."""
    def wrong(field, value, what):
        return ValueError(f"rng_state{field} is {str(value)[:80]!r}, expected {what}")

    if not isinstance(state, dict) or state.get("bit_generator") != BIT_GENERATOR:
        name = state.get("bit_generator") if isinstance(state, dict) else state
        raise wrong(".bit_generator", name, f"{BIT_GENERATOR!r}: minicaps saves and reads the "
                    f"state of numpy's default_rng ({BIT_GENERATOR}) only")
    inner = state.get("state")
    if not isinstance(inner, dict):
        raise wrong(".state", inner, '{"state": ..., "inc": ...}')
    for field in ("state", "inc"):
        if not (is_int(inner.get(field)) and 0 <= inner[field] < 2 ** 128):
            raise wrong(f".state.{field}", inner.get(field), "an integer in [0, 2**128)")
    if not (is_int(state.get("has_uint32")) and state["has_uint32"] in (0, 1)):
        raise wrong(".has_uint32", state.get("has_uint32"), "0 or 1")
    if not (is_int(state.get("uinteger")) and 0 <= state["uinteger"] < 2 ** 32):
        raise wrong(".uinteger", state.get("uinteger"), "an integer in [0, 2**32)")



def check_meta(meta, path):
    """The metadata with every field of its type: ValueError naming the field otherwise."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a minicaps checkpoint (format is not {FORMAT!r})")
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path}: checkpoint metadata lacks {missing}")
    version = meta["format_version"]
    if not is_int(version) or version < 1:
        raise ValueError(f"{path}: damaged checkpoint metadata (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {version} is newer "
                         f"than this minicaps reads ({FORMAT_VERSION}); upgrade minicaps")

    def bad(field, value, what):
        return ValueError(_damaged(path, field, value, what))

    for field in ("epoch", "step"):
        if not is_count(meta[field]):
            raise bad(field, meta[field], COUNT)
    if meta["dtype"] not in ("float32", "float64"):
        raise bad("dtype", meta["dtype"], "'float32' or 'float64'")
    for field in ("config", "optimizer", "rng_state"):
        if not isinstance(meta[field], dict):
            raise bad(field, meta[field], "a JSON object")
    for field in ("metrics", "extra"):
        if not isinstance(meta.get(field) or {}, dict):
            raise bad(field, meta[field], "a JSON object")
    extra = meta.get("extra") or {}
    best = extra.get("best_accuracy")
    if best is not None and not (is_finite_real(best) and 0 <= best <= 1):
        raise bad("extra.best_accuracy", best, "an accuracy in [0, 1]")
    hyper = meta["optimizer"]
    if hyper.get("name") != "Adam":
        raise ValueError(f"{path}: unsupported optimizer state {str(hyper)[:80]}")
    for field, ok, what in (("lr", lambda x: x > 0, "> 0"), ("beta1", lambda x: 0 <= x < 1, "in [0, 1)"),
                            ("beta2", lambda x: 0 <= x < 1, "in [0, 1)"), ("eps", lambda x: x > 0, "> 0")):
        value = hyper.get(field)
        if not is_finite_real(value) or not ok(value):
            raise bad(f"optimizer.{field}", value, f"a finite number {what}")
    if not is_count(hyper.get("t")):
        raise bad("optimizer.t", hyper.get("t"), COUNT)
    average = meta.get("average")
    if average is not None and not (isinstance(average, dict) and is_finite_real(average.get("decay"))
                                    and 0 < average["decay"] < 1):
        raise bad("average", average, "null or {\"decay\": a number in (0, 1)}")
    _check_kind(meta, path)
    dropout = meta.get("dropout")
    if dropout is not None and not (isinstance(dropout, dict) and set(dropout) == {"seed", "step"}
                                    and all(map(is_count, dropout.values()))):
        raise bad("dropout", dropout, f"{{\"seed\": {COUNT}, \"step\": {COUNT}}}")
    check_settings(extra.get("settings"), path, "extra.settings", num_classes_of(meta, path))
    _check_settings_fit(meta, extra.get("settings") or {}, path)
    check_fields(meta.get("metrics") or {}, path, "metrics", {
        name: ACCURACY for name in meta.get("metrics") or {} if name.endswith("accuracy")})
    return meta


# The run's record as evaluate, predict, plot and compare read it: {field: (ok, expected)},
# a field that is missing or null passes. Checked once where a file is loaded, so that no
# command meets a field of the wrong type.
# Counts (epoch, step, Adam's t, seeds) feed float arithmetic, the learning rate's decay
# and Adam's bias correction among it: below 2**53 every one is exact as a float.
MAX_COUNT = 2 ** 53
COUNT = "an integer >= 0 and below 2**53"


def is_count(x):
    return is_int(x) and 0 <= x < MAX_COUNT


def is_text(x):
    return isinstance(x, str)


ACCURACY = (lambda x: is_finite_real(x) and 0 <= x <= 1, "an accuracy in [0, 1]")
def _positive(x):
    return is_finite_real(x) and x > 0


SETTINGS = {              # what train writes (train.train's settings), each of its type
    "batch_size": (lambda x: is_count(x) and x >= 1, "an integer >= 1"),
    "lr": (_positive, "a number > 0"),
    "seed": (is_count, COUNT),
    "shift": (is_count, COUNT),
    "average": (lambda x: is_finite_real(x) and 0 < x < 1, "a decay in (0, 1), or null"),
    "model": (lambda x: isinstance(x, str) and x in MODELS, f"one of {', '.join(MODELS)}"),
    "flip": (lambda x: isinstance(x, bool), "true or false"),
    "dataset": (is_text, "a data set's name"),
    "classes": (lambda x: isinstance(x, list) and all(map(is_text, x)), "a list of class names"),
    "data_info": (lambda x: isinstance(x, dict), "a JSON object"),
    "crop": (lambda x: is_int(x) and x >= 1, "an integer >= 1"),
    "pairs_per_digit": (is_count, COUNT),
    "limit_test": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "null or an integer from 1 "
                   "and below 2**31"),
    "val_size": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "lr_decay": (lambda x: is_finite_real(x) and 0 < x <= 1, "a rate in (0, 1]"),
    "decay_steps": (lambda x: is_count(x) and x >= 1, "an integer >= 1"),
    "dtype": (lambda x: isinstance(x, str) and x in ("float32", "float64"),
              "'float32' or 'float64'"),
    "limit_train": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "null or an integer from 1 "
                    "and below 2**31"),
    "n_train": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "n_test": (lambda x: is_int(x) and 0 <= x < MAX_SIZE, "an integer >= 0 and below 2**31"),
    "ranks": (lambda x: is_int(x) and 1 <= x < MAX_SIZE, "an integer >= 1"),
}
# train always writes these as values, never null (older runs too): a null is damage, not a
# default (a resume would otherwise ask the user for a value no option can give)
NEVER_NULL = ("batch_size", "lr", "lr_decay", "decay_steps", "seed", "shift", "dtype",
              "dataset", "n_train", "n_test", "model", "ranks")
MAX_SIZE = 2 ** 31        # a count of images (limit_test, val_size) fits an int32
DATA_INFO = {             # an image folder's, as folder.load_image_folder records it
    "folder": (is_text, "a folder's path"),
    "image_size": (lambda x: isinstance(x, list) and len(x) == 2
                   and all(is_int(n) and n >= 1 for n in x), "[height, width] in pixels"),
    "color": (lambda x: x in ("gray", "rgb"), "'gray' or 'rgb'"),
    "test_fraction": (lambda x: is_finite_real(x) and 0 < x < 1, "a number in (0, 1)"),
    "seed": (is_count, COUNT),
    "split": (is_text, "a text"),
    "test_files_sha256": (is_text, "a SHA-256 in hex"),
    "undecodable": (is_count, COUNT),
}


def check_settings(settings, path, where, num_classes):
    """A run's settings (``where``: "extra.settings" of a checkpoint, "provenance.settings"
    of a weights file): null or a JSON object whose fields are of their types, with one
    class name per class of the network. ValueError naming the file and the field."""
    check_meta_field(path, where, settings, settings is None or isinstance(settings, dict),
                      "a JSON object")
    settings = settings or {}
    for name in NEVER_NULL:
        if name in settings and settings[name] is None:
            check_meta_field(path, f"{where}.{name}", None, False, SETTINGS[name][1])
    check_fields(settings, path, where, SETTINGS)
    check_fields(settings.get("data_info") or {}, path, f"{where}.data_info", DATA_INFO)
    classes = settings.get("classes")
    if classes and num_classes is not None:
        check_meta_field(path, f"{where}.classes", classes, len(classes) == num_classes,
                          f"{num_classes} class names, one per class of the network")


def _check_settings_fit(meta, settings, path):
    """The settings against the network the file holds: settings.model its kind, crop and
    shift within its input's side (as train cuts and shifts its images)."""
    kind, named = _check_kind(meta, path), settings.get("model")
    if named is not None and named != kind:
        raise ValueError(f"{path}: damaged checkpoint metadata: extra.settings.model is "
                         f"{named!r} but the file's model is {kind!r}; they must agree")
    try:
        side = config_from(meta, path).input_shape[:2]
    except (ValueError, TypeError, AttributeError):
        return                                  # a bad config: loading the arrays says so
    for name, top in (("crop", min(side)), ("shift", max(side))):
        value = settings.get(name)
        if value is not None:
            low = 1 if name == "crop" else 0
            check_meta_field(path, f"extra.settings.{name}", value, low <= value <= top,
                              f"an integer from {low} to {top} (the network's "
                              f"{side[0]}x{side[1]} input)")


def check_fields(record, path, where, rules):
    for name, (ok, what) in rules.items():
        value = record.get(name)
        if value is not None:
            check_meta_field(path, f"{where}.{name}", value, ok(value), what)


def num_classes_of(meta, path):
    """The number of classes of the network in the metadata; None where its config is bad
    (which loading the arrays then says)."""
    try:
        return config_from(meta, path).num_classes
    except ValueError:
        return None


def _check_kind(meta, path):
    """The network kind the metadata names ("capsnet" when it names none): one of MODELS,
    else a ValueError naming the file and the kinds this minicaps reads."""
    kind = meta.get("model", DEFAULT_MODEL)
    if not isinstance(kind, str) or kind not in MODELS:
        raise ValueError(f"{path}: holds a network of kind {str(kind)[:80]!r}, which this "
                         f"minicaps does not know (it reads {', '.join(map(repr, MODELS))}); "
                         f"a newer minicaps may read it")
    return kind


def _damaged(path, field, value, what):
    return (f"{path}: damaged checkpoint metadata: {field} is {str(value)[:80]!r}, "
            f"expected {what}")


def check_meta_field(path, field, value, ok, what):
    """ValueError naming the file and the field unless ``ok``."""
    if not ok:
        raise ValueError(_damaged(path, field, value, what))


def config_from(meta, path):
    """The config of the network the metadata's "model" tag names (a CapsNetConfig for a
    file without one, a CNNConfig), from its "config" fields."""
    config_class = MODELS[_check_kind(meta, path)][0]
    try:
        return config_class.from_dict(meta["config"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad network config in checkpoint ({e})") from e
