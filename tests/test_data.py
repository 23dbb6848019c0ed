"""IDX parsing and every data error path, on small files written here and on the real MNIST; `framebench data`
against mirrors served on loopback (never the internet: the public mirrors are pointed at a closed local port)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import re
import socket
import struct
import threading
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from framebench.core import data
from framebench.core.data import load_dataset, parse_idx, read_idx_file
from framebench.errors import FrameBenchError
from tests.conftest import cli, mnist_folder


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
    monkeypatch.delenv(data.MIRROR_VARIABLE, raising=False)
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
    assert message.startswith("could not download mnist/t10k-labels-idx1-ubyte (tried http://a/t10k-labels-idx1-ubyte.gz: ")
    assert "does not match the published" in message and "http://b/t10k-labels-idx1-ubyte.gz: " in message
    assert message.endswith(data.where_to_get("mnist"))
    assert list(tmp_path.iterdir()) == []  # no partial or unverified file is left to be found later


FILES = [f"{name}/{filename}" for name in data.DOWNLOADED for split in data.SPLITS.values() for filename in split[:2]]


@pytest.fixture(scope="session")
def real_files() -> dict[str, bytes]:
    """'dataset/filename' -> the published gzipped bytes, found the documented way before any test changes the environment."""
    files = {}
    for key in FILES:
        name, filename = key.split("/")
        path = data.find_file(filename, data.search_dirs(name, None))
        assert path is not None, f"{key} is needed to serve a mirror; set FRAMEBENCH_DATA_DIR"
        files[key] = path.read_bytes() if path.suffix == ".gz" else gzip.compress(path.read_bytes())
    return files


def lay_out(root: Path, files: dict[str, bytes]) -> Path:
    """A folder laid out as a mirror or a --data-dir: root/<dataset>/<upstream file>.gz."""
    for key, payload in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{key}.gz").write_bytes(payload)
    return root


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves the server's `root` folder, recording every path asked for; with `cut`, a body stops halfway."""

    def do_GET(self):
        self.server.asked.append(self.path)
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.cut else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirrors():
    """Start a mirror on 127.0.0.1 serving a folder: mirrors(root, cut=False) -> (its URL, the paths it was asked for)."""
    servers = []

    def start(root: Path, cut: bool = False) -> tuple[str, list[str]]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
        server.root, server.asked, server.cut = root, [], cut
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", server.asked

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def refused():
    """A URL whose connections are refused: a loopback port bound but never listening, so no other server takes it."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{closed.getsockname()[1]}/"


@pytest.fixture
def fresh_machine(real_files, refused, tmp_path, monkeypatch):
    """An empty cache, no FRAMEBENCH_DATA_DIR, no Debian package, and public mirrors that refuse: what framebench finds
    on a new user's machine offline. Returns the public mirrors' URL."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for variable in ("FRAMEBENCH_DATA_DIR", data.MIRROR_VARIABLE, "FRAMEBENCH_NO_DOWNLOAD"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    for name in data.DOWNLOADED:
        monkeypatch.setitem(data.MIRRORS, name, (refused,))
    return refused


def cached(tmp_path) -> list[str]:
    """Every file under the cache, hidden temporary ones included."""
    root = tmp_path / "cache" / "framebench"
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()) if root.exists() else []


def error_line(result) -> str:
    """The one line a failed command ends with, after any download progress; it must be its only error."""
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.rstrip("\n").split("\n")
    assert [line for line in lines if "error" in line] == lines[-1:], result.stderr
    return lines[-1]


def test_data_downloads_every_file_from_the_mirror_into_the_cache_once(fresh_machine, real_files, mirrors, tmp_path, monkeypatch):
    url, asked = mirrors(lay_out(tmp_path / "mirror", real_files))
    monkeypatch.setenv(data.MIRROR_VARIABLE, url)
    first = cli("data")
    assert first.returncode == 0, first.stderr
    cache = tmp_path.resolve() / "cache" / "framebench"  # as printed: resolved
    assert first.stdout.splitlines() == [f"{name}: {cache / name} (4 of 4 files downloaded, verified)" for name in data.DOWNLOADED]
    assert asked == [f"/{key}.gz" for key in FILES]
    assert cached(tmp_path) == sorted(f"{key}.gz" for key in FILES)
    assert all((cache / f"{key}.gz").read_bytes() == payload for key, payload in real_files.items())
    size = len(real_files["mnist/train-images-idx3-ubyte"]) / 1e6
    assert f"downloading {url}mnist/train-images-idx3-ubyte.gz: {size:.1f}/{size:.1f} MB" in first.stderr
    second = cli("data")
    assert second.returncode == 0 and len(asked) == len(FILES)  # found in the cache: no request
    assert second.stdout.splitlines() == [f"{name}: {cache / name} (found, verified)" for name in data.DOWNLOADED]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda files: files["fashion-mnist/train-images-idx3-ubyte"], "SHA-256 .* does not match the published"),  # another dataset's file
        (lambda files: files["mnist/train-images-idx3-ubyte"][:1000], "Compressed file ended"),  # truncated
        (lambda files: b"<html>not found</html>", "Not a gzipped file"),  # an error page served as the file
    ],
)
def test_a_mirror_serving_a_damaged_file_is_rejected_and_nothing_is_cached(
    fresh_machine, real_files, mirrors, tmp_path, monkeypatch, damage, reason
):
    url, _ = mirrors(lay_out(tmp_path / "mirror", {"mnist/train-images-idx3-ubyte": damage(real_files)}))
    monkeypatch.setenv(data.MIRROR_VARIABLE, url)
    line = error_line(cli("data"))
    assert re.fullmatch(
        rf"error: could not download mnist/train-images-idx3-ubyte \(tried {url}mnist/train-images-idx3-ubyte.gz: .*{reason}.*; "
        rf"{fresh_machine}train-images-idx3-ubyte.gz: <urlopen error \[Errno 111\] Connection refused>\); "
        + re.escape(data.where_to_get("mnist")),
        line,
    ), line
    assert cached(tmp_path) == []


def test_a_rejected_mirror_copy_falls_back_to_the_next_source(fresh_machine, real_files, mirrors, tmp_path, monkeypatch):
    key = "mnist/t10k-labels-idx1-ubyte"
    bad, bad_asked = mirrors(lay_out(tmp_path / "bad", {key: real_files["fashion-mnist/t10k-labels-idx1-ubyte"]}))
    good, good_asked = mirrors(lay_out(tmp_path / "good", real_files))
    monkeypatch.setenv(data.MIRROR_VARIABLE, bad)
    monkeypatch.setitem(data.MIRRORS, "mnist", (fresh_machine, f"{good}mnist/"))
    path = data.download("mnist", "t10k-labels-idx1-ubyte", data.default_cache_dir() / "mnist")
    assert bad_asked == good_asked == [f"/{key}.gz"]
    assert path.read_bytes() == real_files[key] and cached(tmp_path) == [f"{key}.gz"]


def test_a_download_cut_short_is_rejected_and_leaves_no_file(fresh_machine, real_files, mirrors, tmp_path, monkeypatch):
    url, _ = mirrors(lay_out(tmp_path / "mirror", real_files), cut=True)
    monkeypatch.setenv(data.MIRROR_VARIABLE, url)
    size = len(real_files["mnist/train-images-idx3-ubyte"])
    assert f"{url}mnist/train-images-idx3-ubyte.gz: cut short at {size // 2} of {size} bytes;" in error_line(cli("data"))
    assert cached(tmp_path) == []


def test_no_reachable_source_is_one_line_naming_what_to_set(fresh_machine, refused, tmp_path, monkeypatch):
    monkeypatch.setenv(data.MIRROR_VARIABLE, refused.rstrip("/"))  # with or without the trailing slash
    assert error_line(cli("data")) == (
        f"error: could not download mnist/train-images-idx3-ubyte (tried {refused}mnist/train-images-idx3-ubyte.gz: "
        f"<urlopen error [Errno 111] Connection refused>; {refused}train-images-idx3-ubyte.gz: <urlopen error [Errno 111] "
        "Connection refused>); set FRAMEBENCH_DATA_DIR (or --data-dir) to a folder holding mnist/, or FRAMEBENCH_DATA_MIRROR "
        "to a URL serving mnist/<upstream file>.gz"
    )
    assert cached(tmp_path) == []


def test_check_only_verifies_and_names_what_to_set(fresh_machine, real_files, mirrors, tmp_path, monkeypatch):
    url, asked = mirrors(lay_out(tmp_path / "mirror", real_files))
    monkeypatch.setenv(data.MIRROR_VARIABLE, url)
    line = error_line(cli("data", "--check"))
    assert (
        asked == []
        and "train-images-idx3-ubyte[.gz] not found" in line
        and line.endswith(data.where_to_get("mnist") + ", or use --dataset digits offline")
    )
    found = cli("data", "--check", "--data-dir", str(tmp_path / "mirror"))  # the mirror's layout is a --data-dir's
    assert found.returncode == 0 and asked == []
    assert found.stdout.splitlines() == [f"{name}: {tmp_path.resolve() / 'mirror' / name} (found, verified)" for name in data.DOWNLOADED]


def test_data_reports_a_damaged_file_in_the_data_dir_instead_of_downloading_over_it(fresh_machine, real_files, tmp_path, monkeypatch):
    damaged = {**real_files, "fashion-mnist/t10k-labels-idx1-ubyte": real_files["mnist/t10k-labels-idx1-ubyte"]}
    monkeypatch.setenv("FRAMEBENCH_DATA_DIR", str(lay_out(tmp_path / "data", damaged)))
    result = cli("data")
    assert result.returncode == 2 and result.stdout.splitlines() == [f"mnist: {tmp_path.resolve() / 'data' / 'mnist'} (found, verified)"]
    assert re.fullmatch(
        r"error: .*fashion-mnist/t10k-labels-idx1-ubyte.gz: SHA-256 .* does not match the published .*", result.stderr.strip()
    )


def test_a_mirror_setting_that_is_not_a_url_is_one_line(fresh_machine, monkeypatch):
    monkeypatch.setenv(data.MIRROR_VARIABLE, "mirror.example.org/datasets")
    assert error_line(cli("data")) == (
        "error: FRAMEBENCH_DATA_MIRROR='mirror.example.org/datasets' is not an http(s) URL; set it to one serving mnist/<upstream file>.gz"
    )
