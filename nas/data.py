"""Datasets for search and training: (normalised float CHW image, int64 label) pairs.

``get_dataset(name, split)`` knows:

* ``fashion_mnist`` -- the idx ``.gz`` files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``), read directly: Debian recompressed them, so
  checksums of the upstream files do not apply; the idx headers are checked instead.
* ``digits`` -- scikit-learn's built-in 8x8 digits, split 80/20 (stratified, fixed seed) and
  resized (default 16x16). Always available: right for tests and smoke runs.
* ``cifar10`` -- the python-pickle layout (``data_batch_1..5``, ``test_batch``) under ``root``.
  Read with a restricted unpickler (:class:`ArrayUnpickler`) that builds only dicts, lists, bytes,
  strings, numbers and numpy arrays: a file that asks for anything else is refused, never run.
* ``imagefolder`` -- ``root/train/<class>/*.jpg|jpeg|png`` and ``root/val/<class>/...``
  (split ``"test"`` reads ``val``), loaded lazily per item.

Everything but ``imagefolder`` is held in memory as one float32 tensor (full Fashion-MNIST
train: about 190 MB). ``limit`` keeps the first N examples of a fixed-seed shuffle.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from nas.config import DATASETS

SPLITS = ("train", "test")
SEED = 0  # fixed seed of the digits split and of ``limit``

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_HINT = ("as root: apt-get install dataset-fashion-mnist (Debian package, MIT, Zalando), "
                      "or pass dataset=digits which is built in")
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049

DIGITS_SIZE = 16  # default image_size of digits (native 8x8)
DIGITS_TEST_FRACTION = 0.2

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGEFOLDER_SIZE = 224
IMAGEFOLDER_CROP_RATIO = 0.875  # resize the shorter side to size / 0.875 (256 for 224), then center crop
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where we looked; the message says how to get them."""


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset. Counts are the full splits on disk (before ``limit``)."""

    name: str
    input_shape: tuple[int, int, int]  # C, H, W as returned by the dataset
    num_classes: int
    num_train: int
    num_test: int


class TensorImageDataset(Dataset):
    """Images (N, C, H, W) float32, already normalised, and int64 labels, in memory."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...]):
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(f"images {tuple(images.shape)} and targets {tuple(targets.shape)} do not match")
        self.images = images.contiguous()
        self.targets = targets.to(torch.int64)
        self.classes = tuple(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.targets[i]


class ImageFolderDataset(Dataset):
    """ImageNet-style folder, read lazily: PIL -> RGB -> resize shorter side -> center crop -> normalise."""

    def __init__(self, samples: list[tuple[Path, int]], classes: tuple[str, ...], image_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.samples = samples
        self.classes = tuple(classes)
        self.image_size = image_size
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.int64)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        path, target = self.samples[i]
        with Image.open(path) as img:
            img = _resize_center_crop(img.convert("RGB"), self.image_size)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self._mean) / self._std, self.targets[i]


def _resize_center_crop(img, size: int):
    from PIL import Image

    w, h = img.size
    short = max(size, round(size / IMAGEFOLDER_CROP_RATIO))
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# -- helpers ------------------------------------------------------------------------------
def _limit_indices(n: int, limit: int | None) -> torch.Tensor | None:
    """First ``limit`` of a fixed-seed permutation (sorted back into data order); None keeps all."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit >= n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    return perm[:limit].sort().values


def _resize(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) float images to size x size, in chunks to bound memory."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    if len(images) == 0:
        return images.new_empty(images.shape[:2] + (size, size))
    antialias = size < min(images.shape[-2:])
    return torch.cat([F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                    antialias=antialias) for chunk in images.split(4096)])


def _normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return images.sub_(m).div_(s)


def _in_memory(images_u8: torch.Tensor, targets: torch.Tensor, scale: float,
               mean, std, image_size: int | None, limit: int | None, classes) -> TensorImageDataset:
    """Limit, convert to float in [0, 1], resize, normalise."""
    keep = _limit_indices(len(targets), limit)
    if keep is not None:
        images_u8, targets = images_u8[keep], targets[keep]
    images = _normalise(_resize(images_u8.to(torch.float32) / scale, image_size), mean, std)
    return TensorImageDataset(images, targets, classes)


# -- Fashion-MNIST --------------------------------------------------------------------------
def _fashion_paths(root: Path) -> dict[str, tuple[Path, Path]]:
    paths = {s: tuple(root / f for f in files) for s, files in FASHION_MNIST_FILES.items()}
    missing = [p.name for pair in paths.values() for p in pair if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: looked in {root} and missing {', '.join(missing)}. "
            f"To get it, {FASHION_MNIST_HINT}")
    return paths


def _idx_header(path: Path, magic: int, ndim: int) -> tuple[int, ...]:
    with gzip.open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    if len(head) < 4 + 4 * ndim or struct.unpack(">i", head[:4])[0] != magic:
        raise ValueError(f"{path}: not an idx file (expected magic number {magic})")
    return struct.unpack(f">{ndim}i", head[4:])


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot decompress ({e}); the file is damaged, reinstall it") from e
    head = 4 + 4 * ndim
    if len(data) < head or struct.unpack(">i", data[:4])[0] != magic:
        raise ValueError(f"{path}: not an idx file (expected magic number {magic})")
    dims = struct.unpack(f">{ndim}i", data[4:head])
    if len(data) != head + int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {len(data) - head} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


def _fashion_mnist(split: str, root: Path, image_size, limit) -> tuple[TensorImageDataset, DataInfo]:
    paths = _fashion_paths(root)
    img_path, lbl_path = paths[split]
    images = _read_idx(img_path, IDX_IMAGES_MAGIC, 3)
    labels = _read_idx(lbl_path, IDX_LABELS_MAGIC, 1)
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: {images.shape} images do not match {len(labels)} labels in {lbl_path}")
    if labels.max(initial=0) >= 10:
        raise ValueError(f"{lbl_path}: labels outside 0..9")
    counts = {s: len(images) if s == split else _idx_header(paths[s][0], IDX_IMAGES_MAGIC, 3)[0] for s in SPLITS}
    ds = _in_memory(torch.from_numpy(images.copy()).unsqueeze(1),
                    torch.from_numpy(labels.astype(np.int64)), 255.0, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                    image_size, limit, FASHION_MNIST_CLASSES)
    size = image_size or 28
    return ds, DataInfo("fashion_mnist", (1, size, size), 10, counts["train"], counts["test"])


# -- digits ---------------------------------------------------------------------------------
def _digits(split: str, image_size, limit) -> tuple[TensorImageDataset, DataInfo]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1)  # values 0..16
    targets = torch.from_numpy(d.target.astype(np.int64))
    idx_train, idx_test = train_test_split(np.arange(len(targets)), test_size=DIGITS_TEST_FRACTION,
                                           random_state=SEED, stratify=d.target)
    size = image_size or DIGITS_SIZE
    train = _resize(images[torch.from_numpy(np.sort(idx_train))] / 16.0, size)
    mean, std = (train.mean().item(),), (train.std().item(),)  # resized train-split statistics, both splits
    idx = torch.from_numpy(np.sort(idx_train if split == "train" else idx_test))
    ds = _in_memory(images[idx], targets[idx], 16.0, mean, std, size, limit,
                    tuple(str(i) for i in range(10)))
    return ds, DataInfo("digits", (1, size, size), 10, len(idx_train), len(idx_test))


# -- CIFAR-10 -------------------------------------------------------------------------------
def _cifar_dir(root: str | None) -> Path:
    expected = ", ".join(CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES)
    if root is None:
        raise DatasetNotFoundError(f"cifar10 needs root=<folder holding {expected}> (the python version of "
                                   "CIFAR-10, cifar-10-python.tar.gz extracted); no package ships it")
    base = Path(root)
    for cand in (base, base / "cifar-10-batches-py"):
        if all((cand / f).is_file() for f in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES):
            return cand
    missing = [f for f in CIFAR10_TRAIN_FILES + CIFAR10_TEST_FILES if not (base / f).is_file()]
    raise DatasetNotFoundError(f"CIFAR-10 not found in {base}: expected the python-pickle files {expected} "
                               f"(missing {', '.join(missing)}); extract cifar-10-python.tar.gz there")


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that imports nothing but what rebuilds a numpy array (and ``bytes`` in protocol 2).

    Plain containers, strings and numbers need no import; any other global (``os.system``,
    ``builtins.eval``, a class with ``__reduce__``) raises :class:`pickle.UnpicklingError` before it
    is looked up, so loading a hostile file cannot run its code.
    """

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol 2 writes bytes
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}: a CIFAR-10 batch holds only "
                                         "arrays, lists, dicts and bytes")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            d = ArrayUnpickler(f, encoding="bytes").load()
        if not isinstance(d, dict):
            raise TypeError(f"holds a {type(d).__name__}, not a dict")
        data = np.asarray(d.get(b"data", d.get("data")), dtype=np.uint8)
        labels = np.asarray(d.get(b"labels", d.get("labels")), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a CIFAR batch
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path}: expected data N x 3072 and N labels, got {data.shape} and {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= 10):
        raise ValueError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar10(split: str, root, image_size, limit) -> tuple[TensorImageDataset, DataInfo]:
    base = _cifar_dir(root)
    files = {"train": CIFAR10_TRAIN_FILES, "test": CIFAR10_TEST_FILES}
    counts = {}
    for s in SPLITS:
        if s == split:
            parts = [_read_cifar_batch(base / f) for f in files[s]]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            counts[s] = len(labels)
        else:  # only the count is needed; read one file at a time
            counts[s] = sum(len(_read_cifar_batch(base / f)[1]) for f in files[s])
    ds = _in_memory(torch.from_numpy(images), torch.from_numpy(labels), 255.0,
                    CIFAR10_MEAN, CIFAR10_STD, image_size, limit, CIFAR10_CLASSES)
    size = image_size or 32
    return ds, DataInfo("cifar10", (3, size, size), 10, counts["train"], counts["test"])


# -- image folder ---------------------------------------------------------------------------
def _list_images(split_dir: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    samples = []
    for target, cls in enumerate(classes):
        d = split_dir / cls
        if not d.is_dir():
            continue
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        samples += [(p, target) for p in files]
    return samples


def _imagefolder(split: str, root, image_size, limit) -> tuple[ImageFolderDataset, DataInfo]:
    layout = "root/train/<class>/*.jpg|jpeg|png and root/val/<class>/..."
    if root is None:
        raise DatasetNotFoundError(f"imagefolder needs root=<folder> laid out as {layout}")
    base = Path(root)
    dirs = {"train": base / "train", "test": base / "val"}
    if not dirs[split].is_dir():
        raise DatasetNotFoundError(f"image folder not found: no {dirs[split]} (expected {layout})")
    class_dir = dirs["train"] if dirs["train"].is_dir() else dirs[split]
    classes = tuple(sorted(e.name for e in os.scandir(class_dir) if e.is_dir()))
    if split == "test" and dirs["train"].is_dir():
        extra = sorted({e.name for e in os.scandir(dirs["test"]) if e.is_dir()} - set(classes))
        if extra:
            raise ValueError(f"{dirs['test']}: classes {extra[:5]} are not in {dirs['train']}")
    samples = {s: _list_images(d, classes) if d.is_dir() else [] for s, d in dirs.items()}
    if not samples[split]:
        raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {dirs[split]}/<class>/")
    keep = _limit_indices(len(samples[split]), limit)
    chosen = samples[split] if keep is None else [samples[split][i] for i in keep.tolist()]
    size = image_size or IMAGEFOLDER_SIZE
    ds = ImageFolderDataset(chosen, classes, size)
    return ds, DataInfo("imagefolder", (3, size, size), len(classes), len(samples["train"]), len(samples["test"]))


# -- public API -----------------------------------------------------------------------------
def get_dataset(name: str, split: str, root: str | os.PathLike | None = None, image_size: int | None = None,
                limit: int | None = None) -> tuple[Dataset, DataInfo]:
    """Dataset ``name`` (one of :data:`DATASETS`), ``split`` "train" or "test", and its :class:`DataInfo`.

    ``image_size`` resizes to a square (bilinear); ``limit`` keeps the first N examples of a fixed-seed
    shuffle (kept in data order), which roughly keeps class balance.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    if name == "fashion_mnist":
        return _fashion_mnist(split, Path(root) if root is not None else FASHION_MNIST_ROOT, image_size, limit)
    if name == "digits":
        return _digits(split, image_size, limit)
    if name == "cifar10":
        return _cifar10(split, root, image_size, limit)
    return _imagefolder(split, root, image_size, limit)


def dataset_config(cfg_dataset: DictConfig | None) -> dict:
    """A config's ``dataset`` node as a plain dict; ValueError naming a missing ``name`` or ``root``."""
    if cfg_dataset is None:
        raise ValueError("no dataset configured")
    for key in ("name", "root"):
        if OmegaConf.is_missing(cfg_dataset, key):
            raise ValueError(f"dataset.{key} is required for dataset {cfg_dataset.get('name', '?')}: "
                             f"pass dataset.{key}=...")
    return OmegaConf.to_container(cfg_dataset, resolve=True)


def load_data(d: dict, with_train: bool = True) -> tuple[Dataset | None, Dataset, DataInfo]:
    """(train split or None without ``with_train``, test split, info) of a :func:`dataset_config` dict."""
    train_set = info = None
    if with_train:
        train_set, info = get_dataset(d["name"], "train", d.get("root"), d.get("image_size"), d.get("limit"))
    test_set, test_info = get_dataset(d["name"], "test", d.get("root"), d.get("image_size"), d.get("test_limit"))
    return train_set, test_set, info or test_info


def train_val_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Subset, Subset]:
    """Deterministic random split into (train, val) subsets; indices kept in data order."""
    n = len(dataset)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} of {n} examples leaves an empty split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return Subset(dataset, train.tolist()), Subset(dataset, val.tolist())


class TensorBatches:
    """The batches of an in-memory dataset, gathered by index from its tensors on their device.

    ``order`` holds indices into the dataset's tensors in the order a sampler visits them; each batch is one
    ``index_select`` (no per-item collate, no copy to another device). It yields the batches a
    ``DataLoader`` over the same dataset, sampler and batch size would, in the same order.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, order: torch.Tensor, batch_size: int,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.targets = images, targets
        self.order = order.to(images.device)
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        n, bs = len(self.order), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __iter__(self):
        bs = self.batch_size
        for i in range(len(self)):
            idx = self.order[i * bs:(i + 1) * bs]
            yield self.images.index_select(0, idx), self.targets.index_select(0, idx)


def in_memory(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(images, targets, indices)`` of a :class:`TensorImageDataset` or of (nested) subsets of one, where
    item i of ``dataset`` is ``images[indices[i]]``; None for datasets read lazily (image folders)."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.images, dataset.targets, torch.arange(len(dataset))
    if isinstance(dataset, Subset):
        inner = in_memory(dataset.dataset)
        if inner is not None:
            images, targets, idx = inner
            return images, targets, idx[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    return None


def to_device(datasets: tuple[Dataset, ...], device: torch.device | str) -> tuple[Dataset, ...]:
    """The same datasets with their in-memory tensors on ``device``, each distinct tensor copied once (the
    subsets of one dataset share its copy); lazily read datasets are returned as they are."""
    device = torch.device(device)
    moved: dict[int, TensorImageDataset] = {}

    def move(ds: Dataset) -> Dataset:
        if isinstance(ds, TensorImageDataset):
            if ds.images.device == device:
                return ds
            if id(ds) not in moved:
                moved[id(ds)] = TensorImageDataset(ds.images.to(device), ds.targets.to(device), ds.classes)
            return moved[id(ds)]
        if isinstance(ds, Subset):
            return Subset(move(ds.dataset), ds.indices)
        return ds

    return tuple(move(ds) for ds in datasets)


def lazy_loader_workers() -> int:
    """Worker processes for a lazily decoded dataset: none on a CPU-only machine (the training process decodes,
    as before), else up to 8 of this process's share of the cores, so that PIL decoding at 224 px does not
    starve a GPU (the batches are the same: the order comes from the seeded sampler, decoding is deterministic)."""
    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1))


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False,
                sampler: Sampler | None = None):
    """Batches whose shuffle order is fixed by ``seed`` (or given by ``sampler``).

    In-memory datasets (:func:`in_memory`) give :class:`TensorBatches`, gathered on the device their tensors
    are on; the order is the one a ``DataLoader`` with the same seed and sampler visits, so results do not
    depend on which of the two ran. Other datasets give a single-process ``DataLoader``.
    """
    if sampler is not None and shuffle:
        raise ValueError("pass either shuffle=True or a sampler, not both")
    gen = torch.Generator().manual_seed(seed)
    tensors = in_memory(dataset)
    if tensors is None:  # decoded lazily (image folders): off the training process when it feeds a GPU
        workers = lazy_loader_workers()
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last,
                          num_workers=workers, pin_memory=workers > 0, generator=gen)
    images, targets, idx = tensors
    torch.empty((), dtype=torch.int64).random_(generator=gen)  # a DataLoader draws its workers' base seed first
    if sampler is None:
        sampler = RandomSampler(dataset, generator=gen) if shuffle else range(len(dataset))
    order = idx[torch.as_tensor(list(iter(sampler)), dtype=torch.int64)]
    return TensorBatches(images, targets, order, batch_size, drop_last)
