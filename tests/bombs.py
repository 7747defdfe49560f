"""Small files that promise gigabytes: deflate streams of zeros built without holding
them, and an affNIST .mat file whose compressed variable inflates to what it declares."""
import struct
import zlib

PIECE = 1 << 24


def deflated_zeros(prefix, n_zeros, wbits):
    """A deflate stream (zlib wbits=15, gzip wbits=31) of ``prefix`` then ``n_zeros`` zero
    bytes, with its real trailer, built without holding the zeros: every PIECE of zeros is
    compressed once after a full flush (which resets the compressor), so its bytes repeat."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    if wbits > 15:                      # the gzip header comes out with the first output
        head = c.compress(b"") + head
    block = c.compress(bytes(PIECE)) + c.flush(zlib.Z_FULL_FLUSH)
    rest = n_zeros % PIECE
    tail = c.compress(bytes(rest)) + c.flush(zlib.Z_FULL_FLUSH) if rest else b""
    crc, adler = zlib.crc32(prefix), zlib.adler32(prefix)
    for size in [PIECE] * (n_zeros // PIECE) + ([rest] if rest else []):
        zeros = bytes(size)
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    final = b"\x03\x00"                 # an empty last block (fixed Huffman codes)
    trailer = (struct.pack("<II", crc, (len(prefix) + n_zeros) & 0xFFFFFFFF) if wbits > 15
               else struct.pack(">I", adler))
    return head + block * (n_zeros // PIECE) + tail + final + trailer



MI_INT8, MI_UINT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 2, 5, 6, 14, 15
MX_UINT8 = 9


def mat_bomb(path, pictures, declared=None):
    """A Matlab 5 file holding one compressed variable affNISTdata: a uint8 1600 x pictures
    matrix of zeros, whose miMATRIX tag declares ``declared`` bytes (default: its true
    size). 1.5 GB of zeros take 1.5 MB."""
    def element(mdtype, data):
        return struct.pack("<II", mdtype, len(data)) + data + bytes(-len(data) % 8)

    n_data = 1600 * pictures
    header = (element(MI_UINT32, struct.pack("<II", MX_UINT8, 0))
              + element(MI_INT32, struct.pack("<ii", 1600, pictures))
              + element(MI_INT8, b"affNISTdata")
              + struct.pack("<II", MI_UINT8, n_data))
    size = len(header) + n_data if declared is None else declared
    stream = deflated_zeros(struct.pack("<II", MI_MATRIX, size) + header, n_data, 15)
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
                     + struct.pack("<II", MI_COMPRESSED, len(stream)) + stream)
    return path


