"""Storage, splits and loaders against a real S3 server over HTTP (moto on 127.0.0.1)."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from qadwh_ray import storage
from qadwh_ray.data.catalog import open_catalog
from qadwh_ray.data.readers import ImageReadError, read_images
from qadwh_ray.data.writers import write_parquet_images
from qadwh_ray.data.split import Split, multilabel_split

pytestmark = pytest.mark.e2e

RNG = np.random.default_rng(0)


@pytest.fixture
def bucket(s3_server):
    return s3_server.make_bucket()


def test_bytes_round_trip_and_boto3_interop(s3_server, bucket):
    uri = f"s3://{bucket}/dir/blob.bin"
    data = RNG.bytes(3 * 1024 * 1024 + 17)
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    assert storage.sha256_of(uri) == hashlib.sha256(data).hexdigest()
    assert storage.size_of(uri) == len(data)
    got = s3_server.client().get_object(Bucket=bucket, Key="dir/blob.bin")["Body"].read()
    assert got == data  # pyarrow wrote a plain S3 object
    s3_server.client().put_object(Bucket=bucket, Key="dir/from-boto.txt", Body=b"hi")
    assert storage.read_bytes(f"s3://{bucket}/dir/from-boto.txt") == b"hi"
    with storage.open_input(uri) as f:
        f.seek(5)
        assert f.read(4) == data[5:9]


def test_listing_exists_delete(bucket):
    root = f"s3://{bucket}/root"
    for key in ("a/x.txt", "a/deeper/y.png", "b.txt"):
        storage.write_bytes(storage.join(root, key), key.encode())
    assert storage.exists(root) and storage.is_dir(root) and storage.is_dir(f"s3://{bucket}")
    assert storage.exists(storage.join(root, "b.txt")) and not storage.exists(storage.join(root, "zz"))
    assert storage.list_dir(root) == ["a", "b.txt"]
    assert storage.list_files(root) == [storage.join(root, k) for k in ("a/deeper/y.png", "a/x.txt", "b.txt")]
    assert storage.list_files(root, suffixes=(".png",)) == [storage.join(root, "a/deeper/y.png")]
    with pytest.raises(OSError, match="not empty"):
        storage.delete(storage.join(root, "a"))
    storage.delete(storage.join(root, "a"), recursive=True)
    storage.delete(storage.join(root, "b.txt"))
    assert not storage.exists(storage.join(root, "b.txt")) and not storage.exists(storage.join(root, "a/x.txt"))
    with pytest.raises(ValueError, match="whole bucket"):
        storage.delete(f"s3://{bucket}", recursive=True)


def test_missing_objects_and_buckets_name_the_uri(bucket):
    for uri in (f"s3://{bucket}/no/such/key", "s3://no-such-bucket-qadwh/key"):
        with pytest.raises(FileNotFoundError) as err:
            storage.read_bytes(uri)
        assert uri in str(err.value)
    with pytest.raises(FileNotFoundError, match="no-such-bucket-qadwh"):
        storage.write_bytes("s3://no-such-bucket-qadwh/key", b"x")
    with pytest.raises(FileNotFoundError, match="nodir"):
        storage.list_dir(f"s3://{bucket}/nodir")


def test_failed_stream_write_publishes_nothing(bucket):
    uri = f"s3://{bucket}/partial.bin"
    with pytest.raises(RuntimeError):
        with storage.open_output(uri) as f:
            f.write(b"half")
            raise RuntimeError("writer crashed")
    assert not storage.exists(uri)
    with storage.open_output(uri) as f:
        f.write(b"whole")
    assert storage.read_bytes(uri) == b"whole"


def test_unreachable_endpoint_is_a_clear_error(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    monkeypatch.setenv("QADWH_S3_MAX_ATTEMPTS", "1")
    uri = "s3://some-bucket/key"
    with pytest.raises(storage.StorageError, match=r"cannot reach S3 storage at http://127\.0\.0\.1:1 for s3://some-bucket/key"):
        storage.read_bytes(uri)


def test_split_on_s3(bucket):
    lm = RNG.integers(0, 2, size=(100, 4)).astype(np.uint8)
    split = multilabel_split(lm, seed=1, n_query=10, n_train=20)
    uri = f"s3://{bucket}/splits/ml.json"
    split.save(uri)
    assert Split.load(uri) == split


def test_parquet_images_on_s3(bucket):
    images = RNG.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    lm = np.zeros((40, 6), np.uint8)
    lm[np.arange(40), np.arange(40) % 6] = 1
    lm[::4, 5] = 1
    uri = f"s3://{bucket}/tables/v1"
    files = write_parquet_images(uri, images, lm, ids=np.arange(40) * 3, rows_per_file=15, class_names=list("abcdef"))
    assert files == [f"{uri}/part-{i:05d}.parquet" for i in range(3)]
    cat = open_catalog(uri)
    assert cat.info.multi_label and cat.info.class_names == tuple("abcdef") and cat.info.format == "parquet"
    assert np.array_equal(cat.labels, lm) and np.array_equal(cat.ids, np.arange(40) * 3)
    pixels, bad = read_images(cat, np.arange(40))
    assert np.array_equal(pixels, images) and not any(bad)
    one = open_catalog(files[1])
    assert np.array_equal(read_images(one, np.arange(15))[0], images[15:30])


def test_image_folder_on_s3(bucket):
    root = f"s3://{bucket}/folder"
    expected = {}
    for c in ("trouser", "bag"):
        for i in range(3):
            img = RNG.integers(0, 256, size=(10, 12), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            key = storage.join(root, c, f"{i}.png")
            storage.write_bytes(key, buf.getvalue())
            expected[key] = (img, c)
    cat = open_catalog(root)
    assert cat.info.class_names == ("bag", "trouser") and len(cat) == 6
    pixels, _ = read_images(cat, np.arange(6))
    for i, (img, lab) in enumerate(zip(pixels, cat.labels)):
        ref = cat.files[i]
        assert ref.startswith("s3://") and np.array_equal(img, expected[ref][0])
        assert cat.info.class_names[lab.argmax()] == expected[ref][1]
    storage.write_bytes(storage.join(root, "bag", "9.png"), b"not a png")
    cat = open_catalog(root)
    with pytest.raises(ImageReadError, match=rf"s3://{bucket}/folder/bag/9.png"):
        read_images(cat, np.arange(len(cat)))


def test_create_bytes_has_one_winner_and_the_update_log_works_on_s3(bucket):
    from concurrent.futures import ThreadPoolExecutor

    from qadwh_ray.index.update_log import LogEntry, UpdateLog

    uri = f"s3://{bucket}/once/obj"
    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(lambda j: storage.create_bytes(uri, b"writer %d" % j), range(6)))
    assert won.count(True) == 1 and storage.read_bytes(uri) == b"writer %d" % won.index(True)

    logs = [UpdateLog(f"s3://{bucket}/idx") for _ in range(3)]

    def write(n):
        return [e.seq for j in range(5) for e in logs[n].append([LogEntry(0, "put", 100 * n + j, code="00ff")])]

    with ThreadPoolExecutor(3) as pool:
        seqs = sorted(s for got in pool.map(write, range(3)) for s in got)
    assert seqs == list(range(1, 16))
    entries, pos = UpdateLog(f"s3://{bucket}/idx").read(0)
    assert pos == 15 and sorted(e.id for e in entries) == sorted(100 * n + j for n in range(3) for j in range(5))
    assert logs[0].truncate(15) == 15 and logs[0].read(15) == ([], 15)
