"""
pyproxyd: hpack's decode_huffman, moved here from huffman_table.py (whose
docstring explains the state machine) so that it is compiled by mypyc while the
table's 4096-entry literal stays interpreted.
"""
from __future__ import annotations

from .exceptions import HPACKDecodingError
from .huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE


def decode_huffman(huffman_string: bytes | bytearray | memoryview | None) -> bytes:
    """
    Given a bytestring of Huffman-encoded data for HPACK, returns a bytestring
    of the decompressed data.
    """
    if not huffman_string:
        return b""

    state = 0
    flags = 0
    decoded_bytes = bytearray()

    # pyproxyd: iterated as it comes (bytes, bytearray and memoryview all yield
    # ints); the original's `huffman_string = bytearray(huffman_string)`, a
    # parameter rebound to another type, crashes mypyc.

    # This loop is unrolled somewhat. Because we use a nibble, not a byte, we
    # need to handle each nibble twice. We unroll that: it makes the loop body
    # a bit longer, but that's ok.
    # pyproxyd: the table and flags as locals (compiled, names imported from the
    # interpreted huffman_table were looked up in this module's dict, six times a
    # byte)
    table = HUFFMAN_TABLE
    fail = HUFFMAN_FAIL
    emit = HUFFMAN_EMIT_SYMBOL
    for input_byte in huffman_string:
        index = (state * 16) + (input_byte >> 4)
        state, flags, output_byte = table[index]

        if flags & fail:
            msg = "Invalid Huffman string"
            raise HPACKDecodingError(msg)

        if flags & emit:
            decoded_bytes.append(output_byte)

        index = (state * 16) + (input_byte & 0x0F)
        state, flags, output_byte = table[index]

        if flags & fail:
            msg = "Invalid Huffman string"
            raise HPACKDecodingError(msg)

        if flags & emit:
            decoded_bytes.append(output_byte)

    if not (flags & HUFFMAN_COMPLETE):
        msg = "Incomplete Huffman string"
        raise HPACKDecodingError(msg)

    return bytes(decoded_bytes)
