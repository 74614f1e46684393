"""Packing convention: little-endian bits within each byte."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qadwh_ray.core.bits import binarize, check_code_length, check_codes, code_bytes, pack_bits, padding_mask, unpack_bits


def test_bit_order_is_little_endian_within_byte():
    bits = np.zeros((1, 16), dtype=np.uint8)
    bits[0, 0] = 1  # bit 0 of byte 0 -> value 1
    bits[0, 9] = 1  # bit 1 of byte 1 -> value 2
    assert pack_bits(bits).tolist() == [[1, 2]]


@settings(max_examples=50, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda nbytes: arrays(np.uint8, st.tuples(st.integers(0, 5), st.just(8 * nbytes)), elements=st.integers(0, 1))
    )
)
def test_pack_unpack_roundtrip(bits):
    codes = pack_bits(bits)
    assert codes.dtype == np.uint8 and codes.shape == (bits.shape[0], bits.shape[1] // 8)
    assert codes.flags.c_contiguous
    np.testing.assert_array_equal(unpack_bits(codes, bits.shape[1]), bits)
    # manual reference: byte j = sum_t bit_{8j+t} * 2^t
    ref = (bits.reshape(bits.shape[0], bits.shape[1] // 8, 8).astype(np.int64) << np.arange(8)).sum(-1)
    np.testing.assert_array_equal(codes, ref)


def test_binarize_threshold_half():
    h = np.array([[0.49, 0.5, 0.51, 0.0, 1.0, 0.2, 0.7, 0.5]])
    np.testing.assert_array_equal(unpack_bits(binarize(h))[0], [0, 1, 1, 0, 1, 0, 1, 1])
    with pytest.raises(TypeError, match="floating"):
        binarize(np.ones((1, 8), dtype=np.int64))


@pytest.mark.parametrize("nbits", [0, -8, 4097])
def test_check_code_length_rejects(nbits):
    with pytest.raises(ValueError, match=str(nbits)):
        check_code_length(nbits)


def test_check_code_length_types():
    assert check_code_length(np.int64(48)) == 48
    with pytest.raises(TypeError):
        check_code_length(True)
    with pytest.raises(TypeError):
        check_code_length(8.0)


def test_pack_bits_rejects_bad_input():
    with pytest.raises(ValueError, match="0 and 1"):
        pack_bits(np.full((1, 8), 2))
    with pytest.raises(ValueError, match="2-D"):
        pack_bits(np.zeros(8, dtype=np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        pack_bits(np.zeros((1, 8), dtype=np.float32))


def test_check_codes_rejects():
    with pytest.raises(TypeError, match="uint8"):
        check_codes(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="numpy"):
        check_codes([[1, 2]])
    with pytest.raises(ValueError, match="2-D"):
        check_codes(np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match="expected 6 bytes"):
        check_codes(np.zeros((2, 4), dtype=np.uint8), nbits=48)
    with pytest.raises(ValueError, match="expected 2 bytes for 12-bit codes"):
        check_codes(np.zeros((2, 1), dtype=np.uint8), nbits=12)
    out = check_codes(np.zeros((4, 4), dtype=np.uint8)[:, ::2])
    assert out.flags.c_contiguous


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_codes_of_any_length_pad_with_zero_bits_and_keep_every_distance(nbits, n, seed):
    """A 12-bit (say) model's codes pad to whole bytes with zero bits; Hamming and
    weighted Hamming over the padded bytes (padding weights 0) equal the unpadded brute force."""
    from qadwh_ray.core.bits import code_bytes, pad_weights
    from qadwh_ray.core.hamming import hamming_distances, weighted_hamming_distances

    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, nbits), dtype=np.uint8)
    codes = pack_bits(bits)
    assert codes.shape == (n, code_bytes(nbits)) == (n, (nbits + 7) // 8)
    full = np.unpackbits(codes, axis=1, bitorder="little")
    assert not full[:, nbits:].any()  # the padding bits are zero
    np.testing.assert_array_equal(unpack_bits(codes, nbits), bits)
    w = rng.random((n, nbits))
    diff = bits[:, None, :] != bits[None, :, :]
    np.testing.assert_array_equal(hamming_distances(codes, codes), diff.sum(-1))
    ref = np.einsum("qk,qnk->qn", w, diff)
    np.testing.assert_allclose(weighted_hamming_distances(codes, codes, pad_weights(w, codes.shape[1])), ref,
                               rtol=1e-12, atol=1e-12)


def test_padding_bits_are_the_high_bits_of_the_last_byte_and_must_be_zero():
    from qadwh_ray.core.bits import pad_weights

    assert check_code_length(12) == 12 and code_bytes(12) == 2 and code_bytes(16) == 2 and code_bytes(1) == 1
    assert padding_mask(12) == 0xF0 and padding_mask(20) == 0xF0 and padding_mask(1) == 0xFE and padding_mask(16) == 0
    codes = pack_bits(np.ones((3, 12), dtype=np.uint8))
    assert codes.tolist() == [[0xFF, 0x0F]] * 3  # bits 12..15 (the high nibble of byte 1) are padding
    assert check_codes(codes, 12) is not None
    bad = codes.copy()
    bad[1, 1] = 0x1F  # bit 12 set
    with pytest.raises(ValueError, match=r"codes row 1: bits 12\.\.15 pad a 12-bit code to 2 bytes and must be 0, but its last byte is 0x1f"):
        check_codes(bad, 12)
    with pytest.raises(ValueError, match=r"^query: bits 1\.\.7 pad"):
        check_codes(np.array([[3]], dtype=np.uint8), 1, name="query")
    check_codes(bad, 16)  # all 16 bits are real bits of a 16-bit code
    np.testing.assert_array_equal(pad_weights(np.arange(12.0), 2), np.r_[np.arange(12.0), np.zeros(4)])
    with pytest.raises(ValueError, match="do not fit"):
        pad_weights(np.ones(17), 2)
