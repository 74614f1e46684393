"""Index format: shard schema, manifest JSON, sharding, shard verification (no Ray, no storage)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qadwh_ray.index.format import (
    BIT_ORDER,
    FORMAT_VERSION,
    IndexFormatError,
    IndexIntegrityError,
    Manifest,
    ShardInfo,
    check_shard_bytes,
    label_matrix_from_lists,
    labels_to_list_array,
    make_shard_table,
    shard_data_from_table,
    shard_of_ids,
    shard_schema,
    shard_table_bytes,
    splitmix64,
    validate_version_name,
)


def _items(n=50, nbits=16, c=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(1000)[:n].astype(np.int64)
    codes = rng.integers(0, 256, size=(n, nbits // 8), dtype=np.uint8)
    labels = np.zeros((n, c), np.uint8)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    labels[0, :] = 1  # multi-label row
    return ids, codes, labels


def _info(data, rows, file="shard-00000.parquet"):
    import hashlib

    return ShardInfo(file=file, rows=rows, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def test_schema_is_the_documented_one():
    s = shard_schema(48)
    assert s.names == ["id", "code", "labels", "source"]
    assert s.field("id").type == pa.int64() and not s.field("id").nullable
    assert s.field("code").type == pa.binary(6)
    assert s.field("labels").type == pa.list_(pa.int32())
    assert s.field("source").type == pa.string() and s.field("source").nullable
    assert s.metadata[b"qadwh.index.bit_order"] == b"little" == BIT_ORDER.encode()
    # a 12-bit code is stored in 2 bytes (zero padding); the metadata keeps the real length
    s12 = shard_schema(12)
    assert s12.field("code").type == pa.binary(2) and s12.metadata[b"qadwh.index.code_bits"] == b"12"
    with pytest.raises(ValueError, match="between 1 and 4096"):
        shard_schema(0)


def test_shard_roundtrip_sorted_by_id_and_codes_exact():
    ids, codes, labels = _items()
    table = make_shard_table(ids, codes, labels, [f"src-{i}" for i in ids], 16)
    data = shard_table_bytes(table)
    back = check_shard_bytes(data, _info(data, len(ids)), 16, "mem://x")
    d = shard_data_from_table(back, 16, 4)
    order = np.argsort(ids)
    assert np.array_equal(d.ids, ids[order])
    assert np.array_equal(d.codes, codes[order])
    assert np.array_equal(d.labels, labels[order])
    assert d.sources == [f"src-{i}" for i in ids[order]]


def test_labels_lists_roundtrip_and_unlabeled_rows_are_null():
    m = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], np.uint8)
    arr = labels_to_list_array(m, 3)
    assert arr.to_pylist() == [[1, 2], None, [0]]
    assert np.array_equal(label_matrix_from_lists(arr, 3), m)
    with pytest.raises(IndexFormatError, match="label 5 outside"):
        label_matrix_from_lists(pa.array([[5]], pa.list_(pa.int32())), 3)


def test_sharding_is_deterministic_and_balanced():
    ids = np.arange(100_000, dtype=np.int64)
    s = shard_of_ids(ids, 8)
    assert s.min() == 0 and s.max() == 7
    counts = np.bincount(s)
    assert counts.min() > 0.9 * counts.mean()
    assert np.array_equal(s, shard_of_ids(ids.copy(), 8))
    # strided ids do not pile up in one shard (a plain modulo would)
    assert np.bincount(shard_of_ids(ids * 8, 8)).min() > 0.9 * 100_000 / 8
    assert splitmix64(np.array([0], np.int64))[0] == np.uint64(0xE220A8397B1DCDAF)  # reference splitmix64(seed=0) first output


def test_check_shard_detects_truncation_corruption_and_row_count():
    ids, codes, labels = _items()
    data = shard_table_bytes(make_shard_table(ids, codes, labels, None, 16))
    info = _info(data, len(ids))
    with pytest.raises(IndexIntegrityError, match=r"shard-00000\.parquet at mem://x is damaged: .* bytes"):
        check_shard_bytes(data[:-10], info, 16, "mem://x")
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(IndexIntegrityError, match="SHA-256"):
        check_shard_bytes(bytes(flipped), info, 16, "mem://x")
    wrong_rows = ShardInfo(**{**info.to_dict(), "rows": len(ids) + 1})
    with pytest.raises(IndexIntegrityError, match="holds 50 rows, the manifest says 51"):
        check_shard_bytes(data, wrong_rows, 16, "mem://x")
    with pytest.raises(IndexIntegrityError, match="column 'code' has type"):
        check_shard_bytes(data, info, 32, "mem://x")


def test_check_shard_refuses_unsorted_ids():
    ids, codes, labels = _items()
    table = make_shard_table(ids, codes, labels, None, 16)  # not sorted
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    with pytest.raises(IndexIntegrityError, match="sorted"):
        check_shard_bytes(data, _info(data, len(ids)), 16, "mem://x")


def _manifest(**over):
    kw = dict(
        version="v1",
        code_bits=16,
        num_items=3,
        shards=[ShardInfo("shard-00000.parquet", 2, "a" * 64, 10), ShardInfo("shard-00001.parquet", 1, "b" * 64, 10)],
        checkpoint={"uri": "/c/model.pt", "sha256": "c" * 64, "model_config": {"nbits": 16}},
        created_at="2026-01-01T00:00:00.000000Z",
        num_classes=10,
    )
    kw.update(over)
    return Manifest(**kw)


def test_manifest_json_roundtrip_and_fields():
    m = _manifest(bad_rows=[{"row": 3, "id": 9, "source": "f#row=3", "reason": "x"}], bad_row_count=1)
    d = json.loads(m.to_json())
    for key in ("format_version", "code_bits", "code_bytes", "bit_order", "num_items", "shards", "checkpoint", "created_at"):
        assert key in d
    assert d["format_version"] == FORMAT_VERSION and d["bit_order"] == "little" and d["code_bytes"] == 2
    assert d["sharding"] == {"scheme": "splitmix64-mod", "num_shards": 2}
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_validation_errors_are_clear():
    with pytest.raises(IndexFormatError, match="shards hold 3 rows but num_items is 4"):
        _manifest(num_items=4)
    good = json.loads(_manifest().to_json())
    with pytest.raises(IndexFormatError, match="format version 99"):
        Manifest.from_dict({**good, "format_version": 99})
    with pytest.raises(IndexFormatError, match="unknown fields"):
        Manifest.from_dict({**good, "surprise": 1})
    with pytest.raises(IndexFormatError, match="not a qadwh index manifest"):
        Manifest.from_dict({**good, "format": "other"})
    bad_shard = {**good, "shards": [{**good["shards"][0], "file": "../x"}, good["shards"][1]]}
    with pytest.raises(IndexFormatError, match="plain file name"):
        Manifest.from_dict(bad_shard)
    with pytest.raises(IndexIntegrityError, match="not valid JSON"):
        Manifest.from_json(b'{"format": "qadwh-ind')
    with pytest.raises(IndexFormatError, match="3 class names for 10 classes"):
        _manifest(class_names=["a", "b", "c"])
    with pytest.raises(IndexFormatError, match="class_names must be a list of non-empty strings"):
        Manifest.from_dict({**good, "class_names": [1, 2]})


def test_manifest_keeps_the_real_code_length_and_the_class_names():
    from qadwh_ray.index.format import class_names_for

    names = class_names_for(10, ["boot", "coat"])
    assert names == ["boot", "coat"] + [str(c) for c in range(2, 10)]  # unnamed classes by number
    m = _manifest(code_bits=12, class_names=names)
    d = json.loads(m.to_json())
    assert d["code_bits"] == 12 and d["code_bytes"] == 2 and d["class_names"] == names
    assert Manifest.from_json(m.to_json()) == m
    old = {k: v for k, v in d.items() if k != "class_names"}  # a version written before class names
    assert Manifest.from_dict(old).class_names is None
    with pytest.raises(IndexFormatError, match="code_bytes 1 does not match code_bits 12"):
        Manifest.from_dict({**d, "code_bytes": 1})
    for bad, msg in ((["a", "a"], "unique"), (list("abc"), "3 class names for 2 classes")):
        with pytest.raises(ValueError, match=msg):
            class_names_for(2, bad)


def test_padded_codes_roundtrip_and_set_padding_bits_are_refused():
    rng = np.random.default_rng(0)
    ids = np.arange(20, dtype=np.int64)
    codes = rng.integers(0, 256, (20, 2), dtype=np.uint8)
    codes[:, 1] &= 0x0F  # 12-bit codes: bits 12..15 are padding
    data = shard_table_bytes(make_shard_table(ids, codes, None, None, 12))
    back = shard_data_from_table(check_shard_bytes(data, _info(data, 20), 12, "mem://x"), 12, None)
    assert back.codes.tobytes() == codes.tobytes()
    with pytest.raises(IndexIntegrityError, match="fixed_size_binary"):
        check_shard_bytes(data, _info(data, 20), 24, "mem://x")  # 3 bytes expected
    codes[5, 1] = 0x10
    with pytest.raises(ValueError, match=r"row 5: bits 12\.\.15 pad a 12-bit code"):
        make_shard_table(ids, codes, None, None, 12)


@pytest.mark.parametrize("name", ["", ".hidden", "_staging", "a/b", "..", "x" * 200, "v 1"])
def test_version_names_are_validated(name):
    with pytest.raises(ValueError, match="invalid index version name"):
        validate_version_name(name)
