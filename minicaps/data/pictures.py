"""Your own picture of a digit, prepared the way MNIST's digits were.

MNIST (LeCun et al.) fitted each digit's bounding box into 20x20 pixels keeping its aspect
ratio, with anti-aliasing, then placed it in a 28x28 field so that its centre of mass sat
in the middle. A network trained on MNIST expects exactly that: white ink on black, in
[0, 1]. ``mnist_style`` does the same to any grayscale array; ``load_digit`` reads a PNG
(or a JPEG, GIF, BMP, TIFF, WebP or PNM picture) and calls it. Pillow is in the viz extra:
``pip install "minicaps[viz]"``.

A picture comes from whoever runs ``minicaps predict``, so reading one is bounded: what
Pillow would hold to decode it is worked out from its header and the picture refused
above MAX_BYTES; a JPEG is decoded at 1/2, 1/4 or 1/8 scale where that is enough; and
every picture is shrunk in Pillow to at most MAX_SIDE pixels a side before NumPy sees it
(the digit ends up 20 pixels tall anyway). A picture whose data ends before its pixels do
is refused, not read with the rest left black or gray as Pillow would: a JPEG from its
length (_check_jpeg_length), a PNG from what its data inflates to (_check_png_rows), and
any other with Pillow's LOAD_TRUNCATED_IMAGES off. Only a regular file is opened.
"""
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from minicaps.io.files import regular_file

VIZ_EXTRA = 'pip install "minicaps[viz]"'
INK = 0.2          # a pixel is ink when it is above this fraction of the brightest one
MAX_BYTES = 80_000_000    # read_grayscale refuses a file, or a decoding, that needs more
MAX_SIDE = 1024           # ... and shrinks what it decodes to at most this many pixels a side
SHRINK = "shrink the picture first: a digit needs no more than a few hundred pixels a side"
# The formats read, with how many more pictures' worth of memory (at 4 bytes a pixel) their
# decoder holds besides Pillow's own: the others decode a few rows at a time. EPS is not
# among them (Pillow runs Ghostscript for it), nor are containers of other pictures (ICO).
FORMATS = {"PNG": 0, "JPEG": 0, "MPO": 0, "GIF": 0, "BMP": 0, "PPM": 0,
           "TIFF": 1,      # libtiff decodes a strip or a tile at a time: at most all of it
           "WEBP": 3}      # libwebp's frame and canvases, and the bytes handed to Pillow
LUMA = (0.299, 0.587, 0.114)       # ITU-R 601, as PIL's "L"
HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)   # JPEG frames not arithmetic-coded
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}      # a pixel's samples, by PNG colour type
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))    # each interlacing pass: first column, first row, their steps


def load_pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"reading images needs Pillow: {VIZ_EXTRA}") from e
    return Image


def read_grayscale(path):
    """A picture file as a float32 (H, W) array in [0, 1], 1 = white, at most MAX_SIDE
    pixels a side (a bigger picture is box-averaged down by a whole factor).

    Colour is averaged to luminance; transparent pixels are laid on white (a drawing
    exported with a transparent background is dark ink on nothing). Raises ValueError for
    a file that is not a picture this reads, one whose decoding would need more than
    MAX_BYTES (refused from its header, undecoded), and one with NaN or infinite pixels
    (a float TIFF can hold them).
    """
    Image = load_pil()
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path}: a file of {path.stat().st_size / 1e6:.0f} MB is more than "
                         f"this reads ({MAX_BYTES / 1e6:.0f} MB); {SHRINK}")
    image = open_picture(Image, path)
    try:
        width, height = image.size
        coefficients = jpeg_coefficient_bytes(image, path)    # at full size, whatever the scale
        _draft(image)
        need = bytes_to_decode(image) + coefficients
        if need > MAX_BYTES:
            raise ValueError(f"{path}: {width} x {height} pixels would take {need / 1e6:.0f} MB "
                             f"to decode, more than this reads ({MAX_BYTES / 1e6:.0f} MB); {SHRINK}")
        try:
            decode_picture(image, path)
            small = _shrink(image, _working_mode(image))
            pixels, mode = np.asarray(small), small.mode   # a copy: small may be image itself
        except (OSError, SyntaxError, ValueError) as e:     # a damaged or cut-off file
            raise unreadable_picture(path, e) from e
    finally:
        image.close()       # the file, and the memory of the full-size picture
    return _gray(pixels, mode, path)


def open_picture(Image, path):
    """The picture at path, its header read and nothing decoded. ValueError naming it
    for what is not a picture this reads: a named pipe or a folder, a file this user may
    not read, a JPEG too short for the pixels its header claims (_check_jpeg_length)."""
    regular_file(path, "picture file")      # a named pipe would keep Pillow waiting
    try:
        # Pillow warns of big pictures (weighed later) and of damaged headers (a corrupt
        # EXIF block): the picture is then read or refused in one line, not warned about
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(path, formats=[f for f in FORMATS if f != "MPO"])  # a JPEG
    except FileNotFoundError:
        raise
    except PermissionError:
        raise ValueError(f"{path}: permission denied: this user may not read the file; give "
                         f"it read access (chmod u+r)") from None
    except Image.DecompressionBombError as e:      # far above MAX_BYTES
        raise ValueError(f"{path}: {str(e).rstrip('.')}; {SHRINK}") from e
    except (OSError, SyntaxError, ValueError) as e:   # PIL.UnidentifiedImageError: OSError
        raise unreadable_picture(path, e) from e
    try:
        _check_jpeg_length(image, path)
    except OSError as e:
        image.close()
        raise unreadable_picture(path, e) from e
    return image


def decode_picture(image, path):
    """Decode ``image``'s pixels (Image.load), or an OSError where its data ends before
    they do: Pillow's LOAD_TRUNCATED_IMAGES is kept off meanwhile, whatever the program
    set, and a PNG's rows are counted first (_check_png_rows)."""
    from PIL import ImageFile
    if image.format == "PNG":
        _check_png_rows(image, path)
    setting, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with warnings.catch_warnings():     # as in open_picture: read or refused, not warned about
            warnings.simplefilter("ignore")
            image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = setting


def unreadable_picture(path, e):
    why = "" if str(path) in str(e) else f" ({e})"
    return ValueError(f"{path}: not an image that can be read{why}; this reads "
                      f"{', '.join(sorted(FORMATS))} files")


def _draft(image):
    """Have a JPEG decoded at 1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT), as small as
    keeps its longer side at least MAX_SIDE, and in gray if it is in colour. Other
    formats are decoded whole."""
    factor = max(image.size) / MAX_SIDE
    if image.format in ("JPEG", "MPO") and (factor >= 2 or image.mode == "RGB"):
        size = tuple(max(1, math.ceil(n / max(factor, 1))) for n in image.size)
        image.draft("L" if image.mode == "RGB" else image.mode, size)


def _bytes_per_pixel(mode):
    """What one pixel of ``mode`` takes in Pillow's memory: a band of 8 bits is stored in
    4 bytes when there are several (RGB too), one band in its type's size."""
    from PIL import ImageMode
    m = ImageMode.getmode(mode)
    return 4 if len(m.bands) > 1 else np.dtype(m.typestr).itemsize


def bytes_to_decode(image):
    """Bytes that reading ``image`` at its (drafted) size holds at once: the decoded
    picture, the decoder's own buffers, a copy converted to the mode it is shrunk in and,
    for transparency, the premultiplied copy that Image.reduce averages; and 8 bytes a
    row for Pillow's row pointers, which a picture 1 pixel wide would make the most of."""
    width, height = image.size
    work = _working_mode(image)
    modes = [image.mode] + [work] * (work != image.mode)
    if work == "RGBA" and max(width, height) > MAX_SIDE:
        modes.append("RGBa")
    rows = sum(width * _bytes_per_pixel(mode) + 8 for mode in modes)
    return height * (rows + 4 * width * FORMATS.get(image.format, 1))


def jpeg_coefficient_bytes(image, path):
    """The DCT coefficients (2 bytes each) that libjpeg keeps for the whole picture, at
    full size whatever the scale, when it comes in several scans: a progressive JPEG, or
    one with a scan for each component. 0 for the usual single scan, decoded a row of
    blocks at a time, and for other formats."""
    if image.format not in ("JPEG", "MPO"):
        return 0
    if not image.info.get("progressive") and _first_scan_components(path) == image.layers:
        return 0
    return 64 * 2 * _jpeg_blocks(image)


def _jpeg_blocks(image):
    """How many 8x8 blocks a JPEG's components hold at full size (before any draft)."""
    width, height = image.size
    h_max = max(max(h for _, h, _, _ in image.layer), 1)
    v_max = max(max(v for _, _, v, _ in image.layer), 1)
    return sum(math.ceil(width * h / (8 * h_max)) * math.ceil(height * v / (8 * v_max))
               for _, h, v, _ in image.layer)


def _check_jpeg_length(image, path):
    """OSError when a Huffman-coded JPEG is too short for the pixels its header claims.

    Each 8x8 block of each component takes at least one bit (the code of its DC
    coefficient), however plain the picture. Where the data ends early at a marker,
    libjpeg fills the blocks left with gray and Pillow says nothing: a header claiming a
    giant around a small picture's data would be read as a gray picture."""
    if image.format not in ("JPEG", "MPO") or _jpeg_frame(path) not in HUFFMAN_FRAMES:
        return
    size, blocks = os.path.getsize(path), _jpeg_blocks(image)
    if 8 * size < blocks:
        raise OSError(f"its data ends before its {image.size[0]} x {image.size[1]} pixels do: "
                      f"{size} bytes, where their {blocks} blocks need at least "
                      f"{math.ceil(blocks / 8)}; the file is cut short or its header is wrong")


def _jpeg_frame(path):
    """A JPEG's frame marker (SOF0 0xC0 ... SOF15 0xCF), which says how it is coded;
    None where none is found before its first scan."""
    frames = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}      # not DHT, JPG, DAC
    return next((marker for marker, _ in _jpeg_segments(path) if marker in frames), None)


def _first_scan_components(path):
    """How many components a JPEG's first scan holds (its SOS segment's Ns): all of them
    in a single-scan file. 0 where the first scan is not found among the first few
    segments."""
    for marker, f in _jpeg_segments(path):
        if marker == 0xDA:                                 # SOS: Ns comes first
            ns = f.read(1)
            return ns[0] if ns else 0
    return 0


def _jpeg_segments(path, segments=1000):
    """(marker, the file at the segment's data) for each of a JPEG's first ``segments``
    segments, up to its first scan (SOS) included."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":                     # SOI
            return
        for _ in range(segments):
            if f.read(1) != b"\xff":
                return
            marker = f.read(1)
            while marker == b"\xff":                      # fill bytes
                marker = f.read(1)
            if not marker:
                return
            if marker[0] == 0x01 or 0xD0 <= marker[0] <= 0xD7:    # TEM, RSTn: no length
                continue
            length = int.from_bytes(f.read(2), "big")
            start = f.tell()
            yield marker[0], f
            if marker[0] == 0xDA:
                return
            f.seek(start + max(length - 2, 0))


def _check_png_rows(image, path):
    """OSError when a PNG's image data (its IDAT chunks) inflates to less than the rows
    its header promises. Pillow stops where the zlib stream ends, leaving the rows after
    it black; this counts what the stream holds, a piece at a time and no further than
    the rows need, before anything is decoded."""
    with open(path, "rb") as f:
        f.seek(16)                                         # the signature, IHDR's length, type
        width, height, depth, color, _, _, interlaced = struct.unpack(">IIBBBBB", f.read(13))
        f.seek(4, 1)                                       # IHDR's CRC
        need = _png_data_bytes(width, height, depth * PNG_SAMPLES.get(color, 1), interlaced)
        try:
            got = _inflated(_png_idat(f), need)
        except zlib.error as e:
            raise OSError(f"its compressed data is damaged ({e})") from e
    if got < need:
        raise OSError(f"its data ends before its {width} x {height} pixels do: it inflates to "
                      f"{got} bytes of the {need} they need; the file is cut short or damaged")


def _png_data_bytes(width, height, bits, interlaced):
    """What a PNG's image data inflates to: each row's filter byte and packed pixels of
    ``bits`` each, in each of Adam7's seven passes when interlaced."""
    total = 0
    for x0, y0, dx, dy in ADAM7 if interlaced else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            total += rows * (1 + -(-columns * bits // 8))
    return total


def _png_idat(f):
    """The data of a PNG's IDAT chunks, in pieces of at most 1 MB, read from ``f`` at the
    chunk after IHDR."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        if kind != b"IDAT":
            f.seek(length + 4, 1)                          # the chunk and its CRC
            continue
        while length > 0:
            piece = f.read(min(length, 1 << 20))
            if not piece:
                return
            length -= len(piece)
            yield piece
        f.seek(4, 1)


def _inflated(pieces, limit):
    """How many bytes the zlib stream in ``pieces`` inflates to, counted up to ``limit``
    and at most 1 MB at a time."""
    stream, total = zlib.decompressobj(), 0
    for piece in pieces:
        while piece and total < limit and not stream.eof:
            total += len(stream.decompress(piece, 1 << 20))
            piece = stream.unconsumed_tail
        if total >= limit or stream.eof:
            break
    return total


def _working_mode(image):
    """The mode a picture is shrunk and read in: 32-bit integer or float gray, colour
    with alpha where it has transparency, 8-bit gray, or colour."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return "F" if mode == "F" else "I"
    if "transparency" in image.info or mode.endswith(("A", "a")):
        return "RGBA"
    return "L" if mode in ("1", "L") else "RGB"


def _shrink(image, mode):
    """``image`` in ``mode``, box-averaged by the smallest whole factor that brings its
    longer side to MAX_SIDE or less (Image.reduce weighs colour by alpha)."""
    if image.mode != mode:
        image = image.convert(mode)
    factor = math.ceil(max(image.size) / MAX_SIDE)
    return image.reduce(factor) if factor > 1 else image


def _gray(pixels, mode, path):
    """The pixels of a shrunk picture (mode I, F, L, RGB or RGBA) as float32 gray in [0, 1]."""
    a = pixels.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: the picture has pixels that are NaN or infinite; "
                         f"save it with finite values (0 black to 1, 255 or 65535 white)")
    if mode in ("I", "F"):
        return np.clip(a / (65535.0 if a.max() > 255 else 255.0), 0, 1)
    if mode == "L":
        return a / 255
    gray = (a[..., 0] * LUMA[0] + a[..., 1] * LUMA[1] + a[..., 2] * LUMA[2]) / 255
    if mode == "RGB":
        return gray
    alpha = a[..., 3] / 255
    on_white = alpha * gray + (1 - alpha)
    if np.ptp(on_white) < 1e-3 and np.ptp(alpha) > 0:   # e.g. white ink on transparency
        return alpha
    return on_white


def mnist_style(gray, size=(28, 28), box=None):
    """A grayscale (H, W) array, any size, as an MNIST digit (size) float32 in [0, 1].

    1. white ink on black: the background level is the border's median, and the ink is
       on whichever side of it has more contrast (``_ink``), dark or light;
    2. the background level subtracted and the brightest ink scaled to 1;
    3. cropped to the ink's bounding box (pixels above INK of the brightest), with a
       margin for the faint edge;
    4. resized so that the bounding box fits a box x box square (20 for 28x28), keeping
       the aspect ratio;
    5. placed so that its centre of mass is at (H/2, W/2) in pixel indices, (14, 14)
       in 28x28, where MNIST's are.
    Raises ValueError for NaN or infinite pixels and for a picture with no ink.
    """
    Image = load_pil()
    with np.errstate(over="ignore"):
        gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2 or min(gray.shape) < 1:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if not np.isfinite(gray).all():
        raise ValueError("the image has pixels that are NaN or infinite (as float32); "
                         "only finite pixel values can be prepared")
    H, W = size
    box = box or max(1, round(20 * min(H, W) / 28))
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = _ink(gray, np.median(border))
    if ink.max() <= 1e-3:
        raise ValueError("the image is blank: no ink found")
    ink /= ink.max()
    rows, cols = np.nonzero(ink > INK)
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    scale = box / max(h, w)
    # the crop keeps a margin worth one output pixel around the ink, so that the faint
    # anti-aliased edge comes along; what lies further out (specks, noise) is dropped
    m = max(1, int(np.ceil(1 / scale)))
    top, left = max(rows.min() - m, 0), max(cols.min() - m, 0)
    ink = ink[top:rows.max() + m + 1, left:cols.max() + m + 1]
    new_h, new_w = (max(1, round(n * scale)) for n in ink.shape)
    small = Image.fromarray(ink).resize((new_w, new_h), Image.Resampling.LANCZOS)
    small = np.clip(np.asarray(small, dtype=np.float32), 0, 1)
    return center_by_mass(small, size).astype(np.float32)


def _ink(gray, background):
    """How far each pixel lies from the background level on the ink's side, >= 0.

    The ink is the side with more contrast. With t half the picture's largest departure
    from the background, the sums of what lies more than t above it and more than t below
    it are compared: a threshold that high passes the ink, which stands far from the
    background, and not what stands near it on the other side (uneven light on paper, a
    grey background's noise). It asks nothing of the background's own level, so white on
    black, black on white, and dark or light ink on mid-grey are all read alike.
    """
    off = gray - np.float32(background)
    t = max(off.max(), -off.min()) / 2
    above = np.clip(off - t, 0, None).sum(dtype=np.float64)
    below = np.clip(-off - t, 0, None).sum(dtype=np.float64)
    return np.clip(off if above >= below else -off, 0, None)


def center_by_mass(patch, size):
    """Paste patch into a zero field of ``size`` with its centre of mass at (H/2, W/2)
    in pixel indices (MNIST's digits average (14.0, 14.0)), shifted by whole pixels and
    cropped at the edges."""
    H, W = size
    h, w = patch.shape
    mass = patch.sum()
    cy = (patch.sum(axis=1) @ np.arange(h)) / mass
    cx = (patch.sum(axis=0) @ np.arange(w)) / mass
    top, left = int(round(H / 2 - cy)), int(round(W / 2 - cx))
    out = np.zeros((H, W))
    y0, x0 = max(top, 0), max(left, 0)                      # the overlap, in the field
    y1, x1 = min(top + h, H), min(left + w, W)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def load_digit(path, input_shape=(28, 28, 1)):
    """Read a picture and prepare it for a network with ``input_shape`` (H, W, C):
    float32 (H, W, C) in [0, 1] (the gray digit repeated over C channels)."""
    H, W, C = input_shape
    try:
        digit = mnist_style(read_grayscale(path), (H, W))
    except ValueError as e:
        raise ValueError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    return np.repeat(digit[..., None], C, axis=-1)


def save_gray(images, path, scale=4, inputs=()):
    """Write float images in [0, 1], (H, W) each (or (H, W, C)), side by side with a
    1-pixel gray gap, each pixel drawn as scale x scale, as a PNG (checkpoint.replace_file:
    never over one of the ``inputs`` the command read)."""
    from minicaps.io.writer import replace_file
    Image = load_pil()
    images = [np.asarray(a, dtype=np.float64) for a in images]
    images = [a.mean(axis=-1) if a.ndim == 3 else a for a in images]
    h = max(a.shape[0] for a in images)
    gap = np.full((h, 1), 0.5)
    strip = np.concatenate(sum(([np.pad(a, ((0, h - a.shape[0]), (0, 0))), gap]
                                for a in images), [])[:-1], axis=1)
    pixels = np.round(255 * np.clip(strip, 0, 1)).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((scale, scale), dtype=np.uint8))
    path = Path(path)
    replace_file(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"), inputs=inputs)
    return path
