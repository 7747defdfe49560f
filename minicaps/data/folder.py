"""Your own images: a folder with one subfolder per class, read into a data.Dataset.

    DIR/cat/001.png  DIR/cat/002.jpg  DIR/dog/...           one subfolder per class
    DIR/train/cat/...  DIR/test/cat/...                      or your own split

The layout torchvision's ImageFolder reads: the class names are the subfolders' names, in
sorted order (label 0 is the first), and every .png, .jpg or .jpeg file under a class's
folder (its subfolders too) is one of its images. With DIR/train and DIR/test (or DIR/val
in place of test) those are the split, and a DIR/val beside both is the validation set;
otherwise a seeded ``test_fraction`` of each class is held out for testing, and the split
(seed, fraction, a hash of the test files' names) is kept in Dataset.info and so with the
run. Each split comes in an order shuffled with ``seed`` (not class by class), so the first
N images (--limit-train, --limit-test, plots) are a random draw of the classes. Finding the
pictures and drawing the split: data.folder_files; reading them into arrays: here.

Every image is converted to one size and one colour mode: ``image_size`` (default: the
size they all have; mixed sizes need it) and ``color`` "gray" or "rgb" (default: rgb if any
image is in colour; a palette of grays counts as gray). A JPEG's EXIF orientation is
applied, as a photo viewer shows it. Pixels come out as uint8, gray as (N, H, W) and
colour as (N, H, W, 3), as MNIST's come out of load_mnist. Before any pixel is decoded,
every header is read and the memory the arrays need checked against what is free.
Reading one picture is bounded, as in images.read_grayscale, by what it would hold at
once (at most MAX_PICTURE_BYTES, worked out from its header). A file that cannot
be read (images.open_picture, images.decode_picture), or a folder inside a class folder, is an error
naming it (``bad_images="error"``) or skipped with a warning naming it (``"skip"``); a
class folder that cannot be read is an error. Pillow is needed: ``pip install "minicaps[viz]"``.
"""
import time
from collections import Counter
from pathlib import Path

import numpy as np

from minicaps import backend
from minicaps.data.folder_files import (check_parts, held_out_files, printable, report_bad,
                                        scan_root, scan_split, seeded_parts, some_names,
                                        split_folders, test_files_sha256)
from minicaps.data.dataset import DataError, Dataset
from minicaps.data.picture_bytes import bytes_to_decode, jpeg_coefficient_bytes
from minicaps.data.pictures import decode_picture, load_pil, open_picture, unreadable_picture

COLORS = ("gray", "rgb")
BAD_IMAGES = ("error", "skip")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
EXIF_ORIENTATION = 0x0112      # 1: as stored; 5-8: a quarter turn, so height and width swap
MEMORY_SHARE = 0.5     # the images may take at most this share of the free memory
# What reading one picture of a folder may hold at once: a 24-megapixel photo takes about
# 200 MB. More than predict's images.MAX_BYTES (a picture from anyone), as a folder is the
# user's own; still bounded, so that a header promising a giant is refused undecoded.
MAX_PICTURE_BYTES = 400_000_000


def load_image_folder(root, image_size=None, color=None, test_fraction=0.1, seed=0,
                      bad_images="error", log=print, only=None):
    """Read ``root``'s class folders into a data.Dataset (see the module's docstring).

    image_size: None, an int (square) or (H, W). color: None, "gray" or "rgb".
    test_fraction: the share of each class held out for testing when root has no
    train/ and test/ folders, in (0, 1), drawn with ``seed``. bad_images: "error" or "skip".
    only: None, or "test" to decode the test images alone (what evaluating a run needs;
    the other splits come back empty). A seeded split is then drawn before any pixel is
    decoded, from the files whose headers read; a full read draws it after decoding, so
    the two differ only where a picture's pixels failed to decode (info["undecodable"]
    counts those; test_files_sha256 then differs too).
    """
    if only not in (None, "test"):
        raise ValueError(f"only must be None or 'test', got {only!r}")
    log = _printable_log(log)
    root = Path(root).expanduser()
    size = _check_options(root, image_size, color, test_fraction, seed, bad_images)
    folders = split_folders(root)
    classes, files, part_of = (scan_split(root, folders, log, bad_images) if folders
                               else scan_root(root, log, bad_images))
    headers, files = _read_headers(files, bad_images, log)
    size = size or _common_size(headers, root)
    color = color or ("rgb" if any(mode not in GRAY_MODES for _, mode in headers) else "gray")
    info = {"split": "seeded", "test_fraction": test_fraction, "seed": seed}
    if folders:
        names = " and ".join(f"{f.name}/" for f in folders if f is not None)
        info = {"split": f"{names} folders", "seed": seed}
    if only:            # the split first, from the files found; then the test pixels alone
        files = held_out_files(root, files, classes, part_of, test_fraction, seed, info)
    _check_memory(root, len(files), size, color)
    images, labels, paths = _decode_all(files, size, color, bad_images, log)
    if only:
        part = np.full(len(paths), "test")
    elif folders:
        part = np.array([part_of(p) for p in paths])
    else:
        part = seeded_parts(labels, len(classes), test_fraction, seed)
        info["test_files_sha256"] = test_files_sha256(root, paths, part == "test")
        info["undecodable"] = len(files) - len(paths)     # left out before the split
    check_parts(root, classes, labels, part, len(files) - len(paths), folders, only)
    info.update(image_size=list(size), color=color, folder=str(root.resolve()))
    _say_counts(root, classes, part, size, color, only, log)
    return _as_dataset(images, labels, part, classes, root, info, seed)


def _check_memory(root, n, size, color):
    channels = 3 if color == "rgb" else 1
    backend.check_fits(
        int(n * size[0] * size[1] * channels / MEMORY_SHARE),
        f"reading {n} images of {size[0]}x{size[1]}x{channels} from {root}",
        "give a smaller --image-size, use gray (--color gray), or train on fewer images")


def _say_counts(root, classes, part, size, color, only, log):
    counts = {name: int((part == name).sum()) for name in ("train", "val", "test")}
    what = f"images of {size[0]}x{size[1]} {color}"
    if only:
        log(f"{root}: {len(classes)} classes ({some_names(classes)}), {counts['test']} test "
            f"{what} (read alone)")
        return
    val = f", {counts['val']} validation" if counts["val"] else ""
    log(f"{root}: {len(classes)} classes ({some_names(classes)}), {counts['train']} training"
        f"{val} and {counts['test']} test {what}")


def _as_dataset(images, labels, part, classes, root, info, seed):
    """The Dataset of each part, each shuffled with ``seed``; val only when there is one."""
    split = {name: _shuffled(np.flatnonzero(part == name), seed)
             for name in ("train", "val", "test")}
    val = split["val"] if len(split["val"]) else None
    return Dataset(images[split["train"]], labels[split["train"]],
                   images[split["test"]], labels[split["test"]],
                   classes=tuple(classes), name=str(root), info=info,
                   x_val=None if val is None else images[val],
                   y_val=None if val is None else labels[val])


def _shuffled(index, seed):
    """``index`` in an order drawn with ``seed`` (its own stream, apart from the split's)."""
    return index[np.random.default_rng([seed, 1]).permutation(len(index))]


def parse_image_size(value):
    """None, 32, "32", (32, 40) or "32x40" -> None or (H, W) of ints >= 1."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().split("x")
        try:
            value = tuple(int(p) for p in parts) if len(parts) == 2 else int(value)
        except ValueError:
            raise ValueError(f"image size {value!r} is not N or HxW (such as 32 or 32x48)") from None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2 or
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"image_size must be an int or (H, W), got {value!r}")
    if min(value) < 1 or max(value) > 4096:
        raise ValueError(f"image_size must be 1..4096 pixels a side, got {value}")
    return int(value[0]), int(value[1])


def _check_options(root, image_size, color, test_fraction, seed, bad_images):
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give the folder that holds one subfolder "
                        f"of images per class")
    if color is not None and color not in COLORS:
        raise ValueError(f"color must be one of {COLORS} (or None: from the images), got {color!r}")
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
            or not 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be a number in (0, 1), such as 0.1, "
                         f"got {test_fraction!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return parse_image_size(image_size)


def _read_headers(files, bad_images, log):
    """Each image's (size as (H, W), mode), from its header alone; the files kept."""
    Image = load_pil()
    headers, kept = [], []
    for path, label in files:
        try:
            image = open_picture(Image, path)
        except (ValueError, OSError) as e:
            report_bad(path, str(e).replace(f"{path}: ", ""), bad_images, log)
            continue
        with image:
            w, h = image.size
            mode = "L" if _gray_palette(image) else image.mode
            headers.append(((w, h) if _turned(_orientation(image)) else (h, w), mode))
        kept.append((path, label))
    if not kept:
        raise DataError("none of the images could be read")
    return headers, kept


def _orientation(image):
    """A JPEG's EXIF orientation (1..8; 1 when it has none). Other formats keep theirs
    after the pixels, so they are read as stored."""
    if image.format not in ("JPEG", "MPO"):
        return 1
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:        # a damaged EXIF block: the picture as stored
        return 1
    return value if value in range(1, 9) else 1


def _turned(orientation):
    """True when an EXIF orientation turns the picture a quarter: height and width swap."""
    return orientation in (5, 6, 7, 8)


def _gray_palette(image):
    """True for a palette image whose colours are all grays, read from its header (the
    palette as stored; Image.getpalette would decode the pixels first)."""
    palette = getattr(image, "palette", None)
    if image.mode not in ("P", "PA") or palette is None or palette.mode != "RGB":
        return False
    colours = bytes(palette.palette)
    return bool(colours) and colours[0::3] == colours[1::3] == colours[2::3]


def _common_size(headers, root):
    sizes = Counter(size for size, _ in headers)
    if len(sizes) == 1:
        return next(iter(sizes))
    common = ", ".join(f"{h}x{w} ({n} image{'s' if n > 1 else ''})"
                       for (h, w), n in sizes.most_common(3))
    raise DataError(f"{root}: the images have {len(sizes)} different sizes (HxW: {common}"
                    f"{', ...' if len(sizes) > 3 else ''}); give the size to resize them all "
                    f"to (--image-size 32, or 32x48 for H x W)")


def _decode_all(files, size, color, bad_images, log):
    """uint8 arrays of every readable image at ``size`` in ``color``, with their labels
    and paths."""
    h, w = size
    shape = (len(files), h, w) + ((3,) if color == "rgb" else ())
    images = np.empty(shape, dtype=np.uint8)
    labels, paths = [], []
    last = time.monotonic()
    for k, (path, label) in enumerate(files):
        try:
            images[len(labels)] = read_image(path, size, color)
        except (ValueError, OSError) as e:
            report_bad(path, str(e).replace(f"{path}: ", ""), bad_images, log)
            continue
        labels.append(label)
        paths.append(path)
        if time.monotonic() - last > 30:
            log(f"read {k + 1}/{len(files)} images")
            last = time.monotonic()
    n = len(labels)
    if n == 0:
        raise DataError("none of the images could be read")
    return images[:n], np.asarray(labels, dtype=np.int64), paths


def read_image(path, size, color):
    """One picture file as uint8 (H, W) gray or (H, W, 3) colour, resized to ``size``
    (bilinear, with Pillow's anti-aliasing when shrinking); alpha is dropped, 16-bit and
    float gray scaled to 0..255. ValueError for a file that is not a picture this reads or
    whose reading would hold more than MAX_PICTURE_BYTES at once (_bytes_to_read)."""
    Image = load_pil()
    image = open_picture(Image, path)
    with image:
        h, w = size
        coefficients = jpeg_coefficient_bytes(image, path)
        orientation = _orientation(image)
        if image.format in ("JPEG", "MPO"):        # decode at 1/2..1/8 scale, as stored
            image.draft("L" if color == "gray" else "RGB",
                        (h, w) if _turned(orientation) else (w, h))
        need = _bytes_to_read(image, orientation, size, color) + coefficients
        if need > MAX_PICTURE_BYTES:
            raise ValueError(f"{path}: {image.size[0]} x {image.size[1]} pixels would take "
                             f"{need / 1e6:.0f} MB to read, more than this reads "
                             f"({MAX_PICTURE_BYTES / 1e6:.0f} MB); shrink the picture first")
        try:
            decode_picture(image, path)
            if orientation != 1:
                from PIL import ImageOps
                image = ImageOps.exif_transpose(image)
            image = _to_mode(image, color)
            if image.size != (w, h):
                image = image.resize((w, h), Image.BILINEAR)
            pixels = np.asarray(image)
        except (OSError, SyntaxError, ValueError) as e:     # a damaged or cut-off file
            raise unreadable_picture(path, e) from e
    return pixels


def _bytes_to_read(image, orientation, size, color):
    """What read_image holds at once for ``image`` (at its drafted size) read at ``size``
    (H, W) in ``color``: its decoding (images.bytes_to_decode); a copy in the colour mode
    asked for (Pillow's RGB: 4 bytes a pixel); a turned copy when the EXIF orientation
    turns it; for 16-bit or float gray, its float32, rounded and 8-bit copies; the resized picture
    and the pass between (Pillow resizes across, then down); and the array, which NumPy
    gets through tobytes (its pieces and their join: twice the array)."""
    w, h = image.size
    out, channels = (4, 3) if color == "rgb" else (1, 1)
    copies = out + (4 if orientation != 1 else 0)
    if image.mode.startswith("I") or image.mode == "F":
        copies += 4 + 4 + 1 + 1                  # float32, rounded, 8-bit, its "L" image
    if sorted(size) == sorted((w, h)):          # no resizing (turned, or not)
        resized, final = 0, w * h
    else:
        resized, final = out * (size[0] * size[1] + size[1] * max(w, h)), size[0] * size[1]
    return bytes_to_decode(image) + copies * w * h + resized + 2 * channels * final


def _to_mode(image, color):
    """``image`` as 8-bit "L" or "RGB"."""
    from PIL import Image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image, dtype=np.float32)
        if not np.isfinite(a).all():
            raise ValueError("the picture has pixels that are NaN or infinite")
        # 16 bits (a PNG's "I" too, in older Pillow) always by 257, so that every picture
        # of a folder scales alike; 32-bit and float gray by 257 only past 255
        sixteen = image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")
        a = np.clip(a / (257.0 if sixteen or a.max() > 255 else 1.0), 0, 255)
        image = Image.fromarray(np.round(a).astype(np.uint8), "L")
    if color == "gray":
        return image if image.mode == "L" else image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _printable_log(log):
    return lambda line: log(printable(line))
