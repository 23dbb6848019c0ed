"""Datasets: MNIST and Fashion-MNIST from verified IDX files, and scikit-learn's bundled digits offline.

Every IDX file is checked (magic number, dimensions, length, SHA-256 of the decompressed bytes)
before use, so a benchmark never trains on a truncated or substituted file without saying so.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import sys
import tempfile
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from framebench.errors import FrameBenchError

DATASETS = ("mnist", "fashion-mnist", "digits")
DOWNLOADED = ("mnist", "fashion-mnist")  # the datasets `framebench data` fetches (digits ships with scikit-learn)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {  # split -> (images file, labels file, number of samples)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
SHA256 = {  # SHA-256 of the decompressed IDX files, as published in shared/datasets/README.md
    "mnist/train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "mnist/train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "mnist/t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "mnist/t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "fashion-mnist/train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion-mnist/train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion-mnist/t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion-mnist/t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MIRRORS = {  # dataset -> base URLs serving the gzipped upstream files
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
MIRROR_VARIABLE = "FRAMEBENCH_DATA_MIRROR"  # an organisation's own mirror, URL/<dataset>/<file>.gz, tried first
PROGRESS_STEP = 1 << 20  # bytes between two progress lines of a download
IDX_MAGIC_UBYTE = 0x08  # type code of unsigned bytes in an IDX header
DIGITS_TEST_FRACTION = 0.2  # held-out share of scikit-learn's digits
DIGITS_SPLIT_SEED = 0  # fixed, so every run and every backend sees the same digits split


@dataclass(frozen=True)
class Dataset:
    name: str  # one of DATASETS
    x_train: np.ndarray  # float32 (n, features) in [0, 1]
    y_train: np.ndarray  # int64 (n,) class labels
    x_test: np.ndarray  # float32 (m, features) in [0, 1]
    y_test: np.ndarray  # int64 (m,)
    num_classes: int  # number of output units
    source: str  # where the files were read from, recorded in config.json

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[1])


def parse_idx(raw: bytes, *, ndim: int, what: str) -> np.ndarray:
    """Decode an unsigned-byte IDX array, checking the magic number, rank and length against the header."""
    if len(raw) < 4:
        raise FrameBenchError(f"{what}: truncated IDX header ({len(raw)} bytes)")
    zero, dtype_code, rank = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != IDX_MAGIC_UBYTE or rank != ndim:
        raise FrameBenchError(f"{what}: wrong IDX magic number 0x{raw[:4].hex()} (expected 0x000008{ndim:02x}); it is not this IDX file")
    if len(raw) < 4 + 4 * ndim:
        raise FrameBenchError(f"{what}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise FrameBenchError(f"{what}: {kind}: header says {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def check_idx(raw: bytes, *, key: str, ndim: int, count: int, what: str) -> np.ndarray:
    """Decode the decompressed bytes of upstream file `key` ('dataset/filename') and prove them the published ones."""
    array = parse_idx(raw, ndim=ndim, what=what)
    if array.shape[0] != count or (ndim == 3 and array.shape[1:] != (28, 28)):
        raise FrameBenchError(f"{what}: has shape {array.shape}, expected {count} samples of 28x28")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[key]:
        raise FrameBenchError(f"{what}: SHA-256 {digest[:12]}… does not match the published {SHA256[key][:12]}…")
    return array


def read_idx_file(path: Path, *, key: str, ndim: int, count: int) -> np.ndarray:
    """Read one upstream IDX file (gzipped or not), fully validated; `key` is 'dataset/filename'."""
    fix = "replace it (delete it to re-download, or point --data-dir at a good copy)"
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a damaged deflate stream inside valid gzip framing
        raise FrameBenchError(f"{path}: cannot be read or decompressed ({exc}); {fix}") from None
    try:
        return check_idx(raw, key=key, ndim=ndim, count=count, what=str(path))
    except FrameBenchError as exc:
        raise FrameBenchError(f"{exc}; {fix}") from None


def idx_layout(filename: str) -> dict:
    """The rank and sample count an upstream file must have, as keyword arguments of read_idx_file."""
    split = "train" if filename.startswith("train") else "test"
    return {"ndim": 3 if "images" in filename else 1, "count": SPLITS[split][2]}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "framebench"


def search_dirs(name: str, data_dir: str | None) -> list[Path]:
    """Folders that may hold `name`'s files, in the documented order of preference."""
    chosen = data_dir or os.environ.get("FRAMEBENCH_DATA_DIR")
    dirs = [Path(chosen) / name] if chosen else []
    dirs.append(default_cache_dir() / name)
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    return dirs


def find_file(filename: str, dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for candidate in (folder / filename, folder / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def where_to_get(name: str) -> str:
    """The settings that give framebench `name`'s files, for the line saying they could not be had."""
    return (
        f"set FRAMEBENCH_DATA_DIR (or --data-dir) to a folder holding {name}/, "
        f"or {MIRROR_VARIABLE} to a URL serving {name}/<upstream file>.gz"
    )


def mirror_urls(name: str) -> list[str]:
    """Base URLs serving `name`'s gzipped files, in the order tried: $FRAMEBENCH_DATA_MIRROR's, then the public ones."""
    mirror = os.environ.get(MIRROR_VARIABLE)
    if not mirror:
        return list(MIRRORS[name])
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FrameBenchError(f"{MIRROR_VARIABLE}={mirror!r} is not an http(s) URL; set it to one serving {name}/<upstream file>.gz")
    return [f"{mirror.rstrip('/')}/{name}/", *MIRRORS[name]]


def fetch(url: str, out: BinaryIO) -> None:
    """Copy `url`'s whole body into the open file `out`, its progress (bytes/total) on stderr."""
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0)
        size = f"{total / 1e6:.1f}" if total else "?"
        done = shown = 0
        while chunk := response.read(1 << 16):
            out.write(chunk)
            done += len(chunk)
            if done - shown >= PROGRESS_STEP or done == total:
                shown = done
                print(f"\rdownloading {url}: {done / 1e6:.1f}/{size} MB", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if total and done != total:  # urllib returns a body cut short by a closed connection without a word
        raise FrameBenchError(f"{url}: cut short at {done} of {total} bytes")


def download(name: str, filename: str, target_dir: Path) -> Path:
    """Fetch `filename`.gz from the first source whose copy is the published file, and rename it into place:
    a damaged or substituted copy is never kept, and a killed download leaves only a temporary file."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{filename}.gz"
    errors = []
    for base in mirror_urls(name):
        url = f"{base}{filename}.gz"
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=f".{filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                fetch(url, out)
            check_idx(gzip.decompress(Path(tmp).read_bytes()), key=f"{name}/{filename}", **idx_layout(filename), what=url)
            os.replace(tmp, target)
            return target
        except FrameBenchError as exc:  # not the published file: never kept
            errors.append(str(exc))
        except (OSError, EOFError, zlib.error, http.client.HTTPException) as exc:  # HTTPException: e.g. a chunked body cut short
            errors.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise FrameBenchError(f"could not download {name}/{filename} (tried {'; '.join(errors)}); {where_to_get(name)}")


def locate(name: str, filename: str, dirs: list[Path], allow_download: bool) -> tuple[Path, bool]:
    """Where `filename` of `name` is (searching `dirs`, then downloading into the cache if allowed), and whether it was downloaded."""
    path = find_file(filename, dirs)
    if path is not None:
        return path, False
    if allow_download:
        return download(name, filename, default_cache_dir() / name), True
    searched = ", ".join(str(d) for d in dirs)
    raise FrameBenchError(
        f"{name} file {filename}[.gz] not found (searched {searched}; downloads are off); "
        f"{where_to_get(name)}, or use --dataset digits offline"
    )


def downloads_allowed() -> bool:
    return not os.environ.get("FRAMEBENCH_NO_DOWNLOAD")


def ensure_dataset(name: str, data_dir: str | None = None, *, allow_download: bool | None = None) -> str:
    """Verify every file of `name` where the documented order finds it, downloading what is missing into the cache
    (if allowed; default: unless $FRAMEBENCH_NO_DOWNLOAD), so later runs and tests need no network; the line saying where it is."""
    dirs = search_dirs(name, data_dir)
    allow_download = downloads_allowed() if allow_download is None else allow_download
    folders, fetched = set(), 0
    for images_name, labels_name, _ in SPLITS.values():
        for filename in (images_name, labels_name):
            path, downloaded = locate(name, filename, dirs, allow_download)
            if not downloaded:  # a download is verified before it is renamed into place
                read_idx_file(path, key=f"{name}/{filename}", **idx_layout(filename))
            folders.add(str(path.parent.resolve()))
            fetched += downloaded
    how = f"{fetched} of {2 * len(SPLITS)} files downloaded" if fetched else "found"
    return f"{name}: {', '.join(sorted(folders))} ({how}, verified)"


def load_idx_dataset(name: str, data_dir: str | None, allow_download: bool) -> Dataset:
    dirs = search_dirs(name, data_dir)
    arrays, sources = {}, set()
    for images_name, labels_name, _ in SPLITS.values():
        for filename in (images_name, labels_name):
            path, _ = locate(name, filename, dirs, allow_download)
            arrays[filename] = read_idx_file(path, key=f"{name}/{filename}", **idx_layout(filename))
            sources.add(str(path.parent.resolve()))
    train_images, train_labels, _ = SPLITS["train"]
    test_images, test_labels, _ = SPLITS["test"]
    return Dataset(
        name=name,
        x_train=_pixels(arrays[train_images], 255.0),
        y_train=arrays[train_labels].astype(np.int64),
        x_test=_pixels(arrays[test_images], 255.0),
        y_test=arrays[test_labels].astype(np.int64),
        num_classes=10,
        source=", ".join(sorted(sources)),
    )


def load_digits_dataset() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits.target))
    n_test = int(round(len(order) * DIGITS_TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    return Dataset(
        name="digits",
        x_train=_pixels(digits.images[train], 16.0),
        y_train=digits.target[train].astype(np.int64),
        x_test=_pixels(digits.images[test], 16.0),
        y_test=digits.target[test].astype(np.int64),
        num_classes=10,
        source="sklearn.datasets.load_digits",
    )


def _pixels(images: np.ndarray, maximum: float) -> np.ndarray:
    """Flatten to (n, features) and scale to float32 in [0, 1] by the format's maximum value."""
    return (images.reshape(len(images), -1).astype(np.float32) / np.float32(maximum)).astype(np.float32)


def load_dataset(name: str, *, data_dir: str | None = None, allow_download: bool | None = None) -> Dataset:
    """Load `name`; downloads happen only when allowed (default: unless $FRAMEBENCH_NO_DOWNLOAD is set)."""
    if name not in DATASETS:
        raise FrameBenchError(f"unknown dataset {name!r}; --dataset takes one of: {', '.join(DATASETS)}")
    if name == "digits":
        return load_digits_dataset()
    return load_idx_dataset(name, data_dir, downloads_allowed() if allow_download is None else allow_download)
