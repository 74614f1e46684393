"""qadwh_ray.storage on local paths (S3 is covered in tests/e2e/test_storage_s3.py)."""

import hashlib
import os

import pyarrow.fs as pafs
import pytest

from qadwh_ray import storage


def test_join_and_schemes():
    assert storage.join("s3://bkt/idx", "v1", "m.json") == "s3://bkt/idx/v1/m.json"
    assert storage.join("s3://bkt/idx/", "/v1/", "m.json") == "s3://bkt/idx/v1/m.json"
    assert storage.join("/tmp/a", "b/c") == "/tmp/a/b/c"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.join("/", "x") == "/x"
    assert storage.join("rel", "x") == "rel/x"
    assert storage.is_s3("s3://bkt/k") and storage.is_s3("S3://bkt/k")
    assert not storage.is_s3("/tmp/x") and not storage.is_s3("file:///tmp/x")
    with pytest.raises(ValueError, match=r"'\.\.'"):
        storage.join("/tmp/a", "../b")


@pytest.mark.parametrize("uri", ["gs://bkt/key", "http://host/x", "hdfs://nn/x", "s3a://bkt/x"])
def test_unknown_schemes_are_rejected(uri):
    with pytest.raises(ValueError, match="unsupported URI scheme") as err:
        storage.read_bytes(uri)
    assert uri in str(err.value)
    with pytest.raises(ValueError):
        storage.is_s3(uri)
    with pytest.raises(ValueError):
        storage.write_bytes(uri, b"x")


def test_bad_s3_and_file_uris():
    with pytest.raises(ValueError, match="bucket"):
        storage.filesystem_and_path("s3://")
    with pytest.raises(ValueError, match="remote host"):
        storage.filesystem_and_path("file://otherhost/tmp/x")
    with pytest.raises(TypeError):
        storage.read_bytes(123)


def test_filesystem_and_path(tmp_path, monkeypatch):
    fs, path = storage.filesystem_and_path(str(tmp_path / "a.bin"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a.bin")
    fs, path = storage.filesystem_and_path(f"file://{tmp_path}/a.bin")
    assert path == str(tmp_path / "a.bin")
    monkeypatch.chdir(tmp_path)
    assert storage.filesystem_and_path("rel.bin")[1] == str(tmp_path / "rel.bin")
    # building the S3 filesystem does not contact anything
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    fs, path = storage.filesystem_and_path("s3://bkt/some/key")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bkt/some/key"
    assert storage.s3_endpoint() == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://127.0.0.1:9")
    with pytest.raises(ValueError, match="ftp://"):
        storage.filesystem_and_path("s3://bkt/k")


def test_write_read_roundtrip_creates_parents(tmp_path):
    uri = str(tmp_path / "deep" / "er" / "blob.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert storage.read_bytes("file://" + uri) == b"hello"
    storage.write_bytes(uri, b"replaced")
    assert storage.read_bytes(uri) == b"replaced"
    assert storage.size_of(uri) == 8
    assert os.listdir(tmp_path / "deep" / "er") == ["blob.bin"]  # no temporary files left
    with pytest.raises(TypeError):
        storage.write_bytes(uri, "text")


def test_missing_file_names_the_uri(tmp_path):
    uri = str(tmp_path / "nope.bin")
    for fn in (storage.read_bytes, storage.sha256_of, storage.open_input, storage.size_of, storage.delete, storage.list_dir):
        with pytest.raises(FileNotFoundError) as err:
            fn(uri)
        assert "nope.bin" in str(err.value)


def test_open_output_is_atomic(tmp_path):
    uri = str(tmp_path / "out.bin")
    storage.write_bytes(uri, b"old")
    with pytest.raises(RuntimeError):
        with storage.open_output(uri) as f:
            f.write(b"half-written")
            raise RuntimeError("writer crashed")
    assert storage.read_bytes(uri) == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    with storage.open_output(uri) as f:
        f.write(b"new")
    assert storage.read_bytes(uri) == b"new"
    with pytest.raises(IsADirectoryError):
        with storage.open_output(str(tmp_path)):
            pass


def test_open_input_is_seekable(tmp_path):
    uri = str(tmp_path / "x.bin")
    storage.write_bytes(uri, bytes(range(100)))
    with storage.open_input(uri) as f:
        f.seek(10)
        assert f.read(3) == bytes([10, 11, 12])
    with pytest.raises(IsADirectoryError):
        storage.open_input(str(tmp_path))


def test_sha256_streams_large_files(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)
    uri = str(tmp_path / "big.bin")
    storage.write_bytes(uri, data)
    assert storage.sha256_of(uri) == hashlib.sha256(data).hexdigest()


def test_exists_list_delete(tmp_path):
    root = str(tmp_path / "root")
    storage.write_bytes(storage.join(root, "b.txt"), b"b")
    storage.write_bytes(storage.join(root, "a", "x.txt"), b"x")
    storage.write_bytes(storage.join(root, "a", "deeper", "y.PNG"), b"y")
    storage.write_bytes(storage.join(root, ".hidden"), b"h")
    assert storage.exists(root) and storage.is_dir(root)
    assert storage.exists(storage.join(root, "b.txt")) and not storage.is_dir(storage.join(root, "b.txt"))
    assert not storage.exists(storage.join(root, "zzz"))
    assert storage.list_dir(root) == [".hidden", "a", "b.txt"]
    assert storage.list_files(root) == [storage.join(root, p) for p in ("a/deeper/y.PNG", "a/x.txt", "b.txt")]
    assert storage.list_files(root, recursive=False) == [storage.join(root, "b.txt")]
    assert storage.list_files(root, suffixes=(".png",)) == [storage.join(root, "a/deeper/y.PNG")]
    with pytest.raises(NotADirectoryError):
        storage.list_dir(storage.join(root, "b.txt"))
    with pytest.raises(OSError, match="not empty"):
        storage.delete(storage.join(root, "a"))
    storage.delete(storage.join(root, "b.txt"))
    assert not storage.exists(storage.join(root, "b.txt"))
    storage.delete(storage.join(root, "a"), recursive=True)
    assert storage.list_dir(root) == [".hidden"]
    storage.delete(storage.join(root, "gone"), missing_ok=True)
    with pytest.raises(FileNotFoundError, match="gone"):
        storage.delete(storage.join(root, "gone"))
