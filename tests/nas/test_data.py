import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    FASHION_MNIST_ROOT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataInfo,
    DatasetNotFoundError,
    get_dataset,
    make_loader,
    train_val_split,
)


# -- digits ---------------------------------------------------------------------------------
def test_digits_shapes_labels_and_normalisation():
    train, info = get_dataset("digits", "train")
    test, info_test = get_dataset("digits", "test")
    assert info == info_test == DataInfo("digits", (1, 16, 16), 10, 1437, 360)
    assert len(train) == 1437 and len(test) == 360
    x, y = train[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) < 10
    assert set(train.targets.tolist()) == set(test.targets.tolist()) == set(range(10))
    assert abs(train.images.mean().item()) < 1e-3 and abs(train.images.std().item() - 1) < 1e-3
    assert abs(test.images.mean().item()) < 0.1
    small, info8 = get_dataset("digits", "train", image_size=8)
    assert small[0][0].shape == (1, 8, 8) and info8.input_shape == (1, 8, 8)


def test_digits_split_is_deterministic_and_disjoint():
    a, _ = get_dataset("digits", "train")
    b, _ = get_dataset("digits", "train")
    test, _ = get_dataset("digits", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    rows = {tuple(r.tolist()) for r in a.images.flatten(1)}
    assert not any(tuple(r.tolist()) in rows for r in test.images.flatten(1)[:50])


def test_limit_is_deterministic_subset_roughly_balanced():
    full, _ = get_dataset("digits", "train")
    a, info = get_dataset("digits", "train", limit=200)
    b, _ = get_dataset("digits", "train", limit=200)
    assert len(a) == 200 and info.num_train == 1437  # info describes the full split
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    counts = torch.bincount(a.targets, minlength=10)
    assert counts.min() >= 8 and counts.max() <= 35
    full_rows = {tuple(r.tolist()) for r in full.images.flatten(1)}
    assert all(tuple(r.tolist()) in full_rows for r in a.images.flatten(1))
    assert len(get_dataset("digits", "train", limit=10_000)[0]) == 1437
    with pytest.raises(ValueError, match="limit"):
        get_dataset("digits", "train", limit=0)


def test_train_val_split_and_loader_are_reproducible():
    ds, _ = get_dataset("digits", "train", limit=100)
    tr, va = train_val_split(ds, 0.2, seed=3)
    tr2, va2 = train_val_split(ds, 0.2, seed=3)
    assert len(tr) == 80 and len(va) == 20
    assert tr.indices == tr2.indices and va.indices == va2.indices
    assert set(tr.indices).isdisjoint(va.indices) and set(tr.indices) | set(va.indices) == set(range(100))
    assert train_val_split(ds, 0.2, seed=4)[1].indices != va.indices
    with pytest.raises(ValueError):
        train_val_split(ds, 1.0, seed=0)

    def order(seed):
        return torch.cat([y for _, y in make_loader(tr, 16, shuffle=True, seed=seed)])

    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))
    x, y = next(iter(make_loader(tr, 16, shuffle=False, seed=0, drop_last=True)))
    assert x.shape == (16, 1, 16, 16) and y.dtype == torch.int64
    assert len(make_loader(tr, 16, shuffle=False, seed=0, drop_last=True)) == 5


# -- Fashion-MNIST -------------------------------------------------------------------------------
needs_fashion = pytest.mark.skipif(not (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT} "
                                          "(apt-get install dataset-fashion-mnist)")


@needs_fashion
def test_fashion_mnist_full():
    train, info = get_dataset("fashion_mnist", "train")
    assert info == DataInfo("fashion_mnist", (1, 28, 28), 10, 60000, 10000)
    assert len(train) == 60000
    assert train.targets.min() == 0 and train.targets.max() == 9
    assert torch.equal(torch.bincount(train.targets), torch.full((10,), 6000))
    assert abs(train.images.mean().item()) < 0.01 and abs(train.images.std().item() - 1) < 0.01
    test, _ = get_dataset("fashion_mnist", "test", limit=500, image_size=32)
    assert len(test) == 500 and test[0][0].shape == (1, 32, 32)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        get_dataset("fashion_mnist", "train", root=str(tmp_path))
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "as root: apt-get install dataset-fashion-mnist (Debian package, MIT, Zalando)" in msg
    assert "dataset=digits" in msg and str(tmp_path) in msg


def _write_idx(path: Path, magic: int, arr: np.ndarray) -> None:
    head = struct.pack(">i", magic) + struct.pack(f">{arr.ndim}i", *arr.shape)
    path.write_bytes(gzip.compress(head + arr.astype(np.uint8).tobytes()))


def test_fashion_mnist_idx_headers_are_checked(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 6)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049, np.arange(n) % 10)
    ds, info = get_dataset("fashion_mnist", "test", root=tmp_path)
    assert len(ds) == 6 and (info.num_train, info.num_test) == (12, 6)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2051, np.arange(6))  # wrong magic
    with pytest.raises(ValueError, match="magic"):
        get_dataset("fashion_mnist", "test", root=tmp_path)


# -- CIFAR-10 -------------------------------------------------------------------------------
def _fake_cifar(root: Path, per_file: int = 20, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, per_file)],
             b"filenames": [f"{i}.png".encode() for i in range(per_file)]}
        with open(root / name, "wb") as f:
            pickle.dump(d, f, protocol=protocol)


class _RunsCode:
    """A pickle payload that runs a shell command when a plain ``pickle.load`` rebuilds it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("protocol", [2, 5])  # CIFAR-10's own files are protocol 2 (bytes via _codecs.encode)
def test_cifar10_reads_every_pickle_protocol(tmp_path, protocol):
    _fake_cifar(tmp_path, per_file=4, protocol=protocol)
    _, info = get_dataset("cifar10", "test", root=tmp_path)
    assert (info.num_train, info.num_test) == (20, 4)


def test_cifar10_hostile_pickle_is_refused_not_run(tmp_path):
    _fake_cifar(tmp_path, per_file=4)
    marker = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 python batch .*refused to load global "
                                         r"posix\.system"):
        get_dataset("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_cifar10_pickle_layout(tmp_path):
    _fake_cifar(tmp_path)
    train, info = get_dataset("cifar10", "train", root=tmp_path)
    test, _ = get_dataset("cifar10", "test", root=str(tmp_path))
    assert info == DataInfo("cifar10", (3, 32, 32), 10, 100, 20)
    assert len(train) == 100 and len(test) == 20
    with open(tmp_path / "test_batch", "rb") as f:
        raw = pickle.load(f)
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    expected = (first - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    x, y = test[0]
    assert torch.allclose(x, expected, atol=1e-5) and int(y) == raw[b"labels"][0]
    small, info16 = get_dataset("cifar10", "test", root=tmp_path, image_size=16, limit=5)
    assert len(small) == 5 and small[0][0].shape == (3, 16, 16) and info16.input_shape == (3, 16, 16)


def test_cifar10_missing_names_expected_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data_batch_1.*test_batch"):
        get_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="root"):
        get_dataset("cifar10", "train")


# -- image folder -------------------------------------------------------------------------------
def _fake_folder(root: Path) -> None:
    from PIL import Image

    colours = {"cat": (255, 0, 0), "ant": (0, 255, 0), "bee": (0, 0, 255)}
    sizes = [(40, 30), (30, 50), (20, 20)]
    for split, n in (("train", 3), ("val", 1)):
        for cls, rgb in colours.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                ext = ".png" if i % 2 == 0 else ".JPEG"
                mode = "RGB" if i < 2 else "L"
                img = Image.new("RGB", sizes[i], rgb).convert(mode)
                img.save(d / f"img{i}{ext}", format="PNG" if ext == ".png" else "JPEG", quality=100)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder(tmp_path):
    _fake_folder(tmp_path)
    train, info = get_dataset("imagefolder", "train", root=tmp_path, image_size=16)
    test, _ = get_dataset("imagefolder", "test", root=tmp_path, image_size=16)
    assert info == DataInfo("imagefolder", (3, 16, 16), 3, 9, 3)
    assert train.classes == ("ant", "bee", "cat") and len(train) == 9 and len(test) == 3
    assert test.targets.tolist() == [0, 1, 2]
    x, y = test[2]  # val/cat/img0.png: solid red
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and int(y) == 2
    red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), red, atol=1e-4)
    for i in range(len(train)):  # every size and mode comes out the same shape
        assert train[i][0].shape == (3, 16, 16)
    assert get_dataset("imagefolder", "train", root=tmp_path)[0][0][0].shape == (3, 224, 224)
    assert len(get_dataset("imagefolder", "train", root=tmp_path, image_size=16, limit=4)[0]) == 4
    batch = next(iter(make_loader(train, 4, shuffle=True, seed=0)))
    assert batch[0].shape == (4, 3, 16, 16) and batch[1].dtype == torch.int64


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train"):
        get_dataset("imagefolder", "train", root=tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError) as e:
        get_dataset("mnist", "train")
    assert all(name in str(e.value) for name in DATASETS)
    with pytest.raises(ValueError, match="split"):
        get_dataset("digits", "val")
