"""IDX parsing and every data error path, on small files written here and on the real MNIST."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import urllib.error

import numpy as np
import pytest

from framebench.core import data
from framebench.core.data import load_dataset, parse_idx, read_idx_file
from framebench.errors import FrameBenchError
from tests.conftest import mnist_folder


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trips_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(images), ndim=3, what="x"), images)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(parse_idx(idx_bytes(labels), ndim=1, what="y"), labels)


@pytest.mark.parametrize(
    "raw, message",
    [
        (idx_bytes(np.zeros((2, 3, 4)))[:-1], "truncated"),
        (idx_bytes(np.zeros((2, 3, 4))) + b"\0", "trailing bytes"),
        (b"\x00\x00\x0d\x03" + idx_bytes(np.zeros((2, 3, 4)))[4:], "wrong IDX magic"),
        (idx_bytes(np.zeros(5)), "wrong IDX magic"),
        (b"\x00\x00", "truncated IDX header"),
    ],
)
def test_parse_idx_rejects_bad_bytes(raw, message):
    with pytest.raises(FrameBenchError, match=message):
        parse_idx(raw, ndim=3, what="file")


def fake_mnist_file(tmp_path, monkeypatch, array: np.ndarray, *, gz: bool, publish_hash: bool = True):
    """A small file under tmp_path with the upstream name, its hash published as if it were real."""
    raw = idx_bytes(array)
    folder = tmp_path / "mnist"
    folder.mkdir(exist_ok=True)
    path = folder / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    if publish_hash:
        monkeypatch.setitem(data.SHA256, "mnist/t10k-labels-idx1-ubyte", hashlib.sha256(raw).hexdigest())
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_file_accepts_gzipped_and_plain(tmp_path, monkeypatch, gz):
    labels = np.arange(10_000) % 10
    path = fake_mnist_file(tmp_path, monkeypatch, labels, gz=gz)
    np.testing.assert_array_equal(read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000), labels)


def test_bad_checksum_names_the_file_and_the_fix(tmp_path, monkeypatch):
    path = fake_mnist_file(tmp_path, monkeypatch, np.arange(10_000) % 10, gz=True, publish_hash=False)
    with pytest.raises(FrameBenchError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256 .* does not match.*--data-dir"):
        read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000)


def test_wrong_sample_count_is_reported(tmp_path, monkeypatch):
    path = fake_mnist_file(tmp_path, monkeypatch, np.zeros(9_999), gz=False)
    with pytest.raises(FrameBenchError, match=r"expected 10000 samples"):
        read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000)


def test_corrupt_gzip_is_reported(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(FrameBenchError, match=r"cannot be read or decompressed"):
        read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000)


def test_truncated_real_file_is_reported(tmp_path):
    real = (mnist_folder() / "t10k-labels-idx1-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(gzip.decompress(real)[:5000])
    with pytest.raises(FrameBenchError, match=r"truncated.*has 5000 bytes"):
        read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000)


def test_missing_files_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FrameBenchError, match=r"not found \(searched .*empty/mnist.*--dataset digits"):
        load_dataset("mnist", data_dir=str(tmp_path / "empty"))


def test_unknown_dataset():
    with pytest.raises(FrameBenchError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_data_dir_comes_before_the_cache(tmp_path, monkeypatch):
    """A corrupt copy in --data-dir is reported as corrupt, not silently replaced by a good cached one."""
    cache = tmp_path / "cache"
    (cache / "framebench").mkdir(parents=True)
    (cache / "framebench" / "mnist").symlink_to(mnist_folder())  # a cache holding good files
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    corrupt = tmp_path / "data" / "mnist"
    corrupt.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (corrupt / f"{name}.gz").write_bytes((mnist_folder() / f"{name}.gz").read_bytes())
    good = load_dataset("mnist", data_dir=str(tmp_path / "data"))  # all four found in --data-dir
    assert good.source == str(corrupt.resolve())
    damaged = bytearray((corrupt / "t10k-labels-idx1-ubyte.gz").read_bytes())
    damaged[-20] ^= 0xFF  # inside the deflate stream: the gzip framing stays valid
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(damaged))
    with pytest.raises(FrameBenchError, match=rf"{corrupt}/t10k-labels-idx1-ubyte.gz: (cannot be read or decompressed|SHA-256)"):
        load_dataset("mnist", data_dir=str(tmp_path / "data"))


def test_a_damaged_deflate_stream_is_one_line(tmp_path):
    """zlib.error, not OSError, is what a corrupt deflate stream raises: it must still be a clear error."""
    raw = bytearray(gzip.compress(idx_bytes(np.arange(10_000) % 10)))
    raw[len(raw) // 2] ^= 0xFF
    raw[len(raw) // 2 + 1] ^= 0xFF
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(raw))
    with pytest.raises(FrameBenchError, match=r"cannot be read or decompressed"):
        read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000)


def test_real_mnist_is_verified_and_scaled(mnist):
    assert mnist.x_train.shape == (60_000, 784) and mnist.x_test.shape == (10_000, 784)
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int64
    assert mnist.x_train.min() == 0.0 and mnist.x_train.max() == 1.0
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_digits_split_is_fixed_and_scaled():
    first, second = load_dataset("digits"), load_dataset("digits")
    np.testing.assert_array_equal(first.y_test, second.y_test)
    assert first.input_size == 64 and first.x_train.max() == 1.0 and len(first.y_train) + len(first.y_test) == 1797


class Response(io.BytesIO):
    """What urlopen returns, serving `payload`."""

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def serve(monkeypatch, payloads: dict[str, bytes]) -> list[str]:
    """Mirrors a/ and b/ answering with `payloads` by mirror (others unreachable); returns the URLs asked for."""
    asked = []

    def urlopen(url, timeout):
        asked.append(url)
        mirror = url.split("/")[2]
        if mirror not in payloads:
            raise urllib.error.URLError("unreachable")
        return Response(payloads[mirror])

    monkeypatch.setitem(data.MIRRORS, "mnist", ["http://a/", "http://b/"])
    monkeypatch.setattr(data.urllib.request, "urlopen", urlopen)
    return asked


def test_a_download_falls_back_to_the_next_mirror_verifies_and_is_cached(tmp_path, monkeypatch, capsys):
    labels = np.arange(10_000) % 10
    raw = idx_bytes(labels)
    monkeypatch.setitem(data.SHA256, "mnist/t10k-labels-idx1-ubyte", hashlib.sha256(raw).hexdigest())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FRAMEBENCH_DATA_DIR", raising=False)
    asked = serve(monkeypatch, {"b": gzip.compress(raw)})
    path = data.download("mnist", "t10k-labels-idx1-ubyte", data.default_cache_dir() / "mnist")
    assert asked == ["http://a/t10k-labels-idx1-ubyte.gz", "http://b/t10k-labels-idx1-ubyte.gz"]
    assert path == tmp_path / "framebench" / "mnist" / "t10k-labels-idx1-ubyte.gz" and sorted(path.parent.iterdir()) == [path]
    assert "downloading http://b/t10k-labels-idx1-ubyte.gz: 0.0/0.0 MB" in capsys.readouterr().err
    assert data.find_file("t10k-labels-idx1-ubyte", data.search_dirs("mnist", None)) == path  # found in the cache next time
    np.testing.assert_array_equal(read_idx_file(path, key="mnist/t10k-labels-idx1-ubyte", ndim=1, count=10_000), labels)


def test_a_download_that_fails_verification_everywhere_keeps_nothing_and_says_why(tmp_path, monkeypatch):
    serve(monkeypatch, {"a": gzip.compress(idx_bytes(np.arange(10_000) % 10)), "b": b"not gzip"})
    with pytest.raises(FrameBenchError) as error:
        data.download("mnist", "t10k-labels-idx1-ubyte", tmp_path)
    message = str(error.value)
    assert message.startswith("could not download mnist/t10k-labels-idx1-ubyte (http://a/t10k-labels-idx1-ubyte.gz: ")
    assert "does not match the published" in message and "http://b/t10k-labels-idx1-ubyte.gz: " in message
    assert message.endswith("put the files under --data-dir DIR/mnist/ or use --dataset digits offline")
    assert list(tmp_path.iterdir()) == []  # no partial or unverified file is left to be found later
