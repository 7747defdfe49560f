"""How many bytes a picture needs once decoded, and whether its file holds the data for that
many: a JPEG's coefficient blocks and its scans, a PNG's rows, counted from the headers
before anything is decoded, so that a hostile or truncated file is refused, not decoded."""
import math
import os
import struct
import zlib
import numpy as np

MAX_SIDE = 1024    # read_grayscale shrinks what it decodes to at most this many pixels a side
# The formats read, with how many more pictures' worth of memory (at 4 bytes a pixel) their
# decoder holds besides Pillow's own: the others decode a few rows at a time. EPS is not
# among them (Pillow runs Ghostscript for it), nor are containers of other pictures (ICO).
FORMATS = {"PNG": 0, "JPEG": 0, "MPO": 0, "GIF": 0, "BMP": 0, "PPM": 0,
           "TIFF": 1,      # libtiff decodes a strip or a tile at a time: at most all of it
           "WEBP": 3}      # libwebp's frame and canvases, and the bytes handed to Pillow
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))    # each interlacing pass: first column, first row, their steps


HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)   # JPEG frames not arithmetic-coded


PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}      # a pixel's samples, by PNG colour type


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
    work = working_mode(image)
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


def check_jpeg_length(image, path):
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


def check_png_rows(image, path):
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


def working_mode(image):
    """The mode a picture is shrunk and read in: 32-bit integer or float gray, colour
    with alpha where it has transparency, 8-bit gray, or colour."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return "F" if mode == "F" else "I"
    if "transparency" in image.info or mode.endswith(("A", "a")):
        return "RGBA"
    return "L" if mode in ("1", "L") else "RGB"
