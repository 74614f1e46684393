"""Binary codes: packing bits into bytes and back.

Convention (FAISS's ``fvec2bitvec``; docs/architecture.md, 'Conventions'): bit ``t`` of code position
``8*j + t`` is stored in byte ``j`` at bit position ``t`` — little-endian within
each byte. Packed codes are C-contiguous ``uint8`` arrays of shape
``(n, ceil(nbits / 8))``.

Code lengths (the padding convention, used by every stage): a code may have
any number of bits from 1 to 4096 (the paper's ablation uses 12). Its packed
form is ``code_bytes(nbits) = ceil(nbits / 8)`` bytes; the ``8 * code_bytes -
nbits`` padding bits (the high bits of the last byte) are always 0
(``check_codes`` refuses a code where they are not), and their weights are 0
(``pad_weights``). The padding bits therefore never differ between two codes
and never weigh anything: every Hamming and weighted Hamming distance over
the padded bytes is exactly that of the unpadded codes. The index, the search
engine and the HTTP API store and move the padded bytes and report the real
length ``nbits``.
"""

from __future__ import annotations

import numpy as np

BIT_ORDER = "little"


def check_code_length(nbits: int) -> int:
    """Return ``nbits`` as int after checking it is a valid code length (1 to 4096 bits)."""
    if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)):
        raise TypeError(f"code length must be an integer number of bits, got {nbits!r}")
    nbits = int(nbits)
    if not 1 <= nbits <= 4096:
        raise ValueError(f"code length must be between 1 and 4096 bits, got {nbits}")
    return nbits


def code_bytes(nbits: int) -> int:
    """Bytes per packed code of ``nbits`` bits (zero-padded to a whole byte)."""
    return (check_code_length(nbits) + 7) // 8


def padding_mask(nbits: int) -> int:
    """The padding bits of the last byte of a packed ``nbits``-bit code, as a byte mask (0: none)."""
    used = check_code_length(nbits) % 8
    return 0 if used == 0 else 0xFF & ~((1 << used) - 1)


def pad_weights(weights: np.ndarray, nbytes: int) -> np.ndarray:
    """Per-bit weights ``(..., nbits)`` padded with zeros to ``(..., 8 * nbytes)`` (the padding bits of packed codes)."""
    weights = np.asarray(weights)
    extra = 8 * nbytes - weights.shape[-1]
    if extra < 0 or extra >= 8:
        raise ValueError(f"{weights.shape[-1]} weights do not fit {nbytes}-byte codes")
    if extra == 0:
        return weights
    return np.concatenate([weights, np.zeros(weights.shape[:-1] + (extra,), dtype=weights.dtype)], axis=-1)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a ``(n, nbits)`` array of 0/1 (bool or integer) into ``(n, ceil(nbits/8))`` uint8, zero-padded."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"bits must be a 2-D (n, nbits) array, got shape {bits.shape}")
    check_code_length(bits.shape[1])
    if bits.dtype != np.bool_:
        if not np.issubdtype(bits.dtype, np.integer):
            raise TypeError(f"bits must be bool or integer 0/1, got dtype {bits.dtype}")
        if bits.size and (bits.min() < 0 or bits.max() > 1):
            raise ValueError("bits must contain only 0 and 1")
    return np.ascontiguousarray(np.packbits(bits.astype(bool), axis=1, bitorder=BIT_ORDER))


def unpack_bits(codes: np.ndarray, nbits: int | None = None) -> np.ndarray:
    """Unpack ``(n, nbytes)`` uint8 codes into a ``(n, nbits)`` uint8 array of 0/1 (``nbits``: all bytes' bits)."""
    codes = check_codes(codes, nbits)
    bits = np.unpackbits(codes, axis=1, bitorder=BIT_ORDER)
    return bits if nbits is None else bits[:, :nbits]


def binarize(h: np.ndarray) -> np.ndarray:
    """Codes from sigmoid activations: b = 1[h >= 0.5], packed."""
    h = np.asarray(h)
    if not np.issubdtype(h.dtype, np.floating):
        raise TypeError(f"activations must be floating point, got dtype {h.dtype}")
    return pack_bits(h >= 0.5)


def check_codes(codes: np.ndarray, nbits: int | None = None, name: str = "codes") -> np.ndarray:
    """Validate packed codes and return them C-contiguous.

    ``codes`` must be a 2-D uint8 array; when ``nbits`` is given, each row must
    be exactly ``code_bytes(nbits)`` bytes with its padding bits 0.
    """
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint8 array, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise TypeError(f"{name} must have dtype uint8 (packed bits), got {codes.dtype}")
    if codes.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, nbytes), got shape {codes.shape}")
    if codes.shape[1] == 0:
        raise ValueError(f"{name} have zero bytes per code")
    if nbits is not None:
        nbytes = code_bytes(nbits)
        if codes.shape[1] != nbytes:
            raise ValueError(
                f"{name} have {codes.shape[1]} bytes ({codes.shape[1] * 8} bits) per code, "
                f"expected {nbytes} bytes for {nbits}-bit codes"
            )
        padding = padding_mask(nbits)
        if padding and codes.shape[0]:
            bad = np.flatnonzero(codes[:, -1] & padding)
            if bad.size:
                row = int(bad[0])
                where = f"{name} row {row}" if codes.shape[0] > 1 else name
                more = f" ({bad.size} such rows)" if bad.size > 1 else ""
                raise ValueError(
                    f"{where}: bits {nbits}..{8 * nbytes - 1} pad a {nbits}-bit code to {nbytes} bytes and must be 0, "
                    f"but its last byte is 0x{int(codes[row, -1]):02x}{more}"
                )
    return np.ascontiguousarray(codes)
