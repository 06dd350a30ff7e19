"""Datasets: one uniform split object, a registry of loaders, augmentation on the device.

Every loader returns a `Dataset` of uint8 image tensors (N, C, H, W) and int64 labels, plus an
optional group attribute (for subgroup metrics) and class names. Small datasets stay on the
device as uint8 and are augmented there a batch at a time (airbench-style): uint8 on the
device is 4x smaller than floats and per-sample CPU transforms are the bottleneck otherwise.
The one exception is MNIST-1D: real-valued signals, float32 (N, 1, 40), normalization "none".

`digits` (scikit-learn's handwritten digits, which ships with scikit-learn) is the embedded
default; `mnist1d` (generated offline by the `mnist1d` package, cached) is the main testbed, with
large test sets and further test sets from the same distribution. Real datasets load from a data
root (argument, then $NNRANDOMNESS_DATA); a missing one is an error saying where the files go.
Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import stream
from .files import write_atomic

DATA_ROOT_ENV = "NNRANDOMNESS_DATA"


@dataclass
class ExtraTests:
    """Further test sets from the dataset's distribution, each made by `make(seed)` -> (x, y) on first use.

    Generated lazily (only a run that evaluates them pays for them) and kept in memory once made,
    so that one loaded dataset serves every replica of a cell.
    """

    seeds: tuple[int, ...]  # one generator seed per set, in evaluation order
    make: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    _made: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.seeds)

    def load(self, progress: bool = True) -> None:
        """Make every set not yet in memory (a tqdm bar over them: minutes when the cache is cold)."""
        missing = [s for s in self.seeds if s not in self._made]
        if progress and missing:
            from tqdm import tqdm

            missing = tqdm(missing, desc="extra test sets", unit="set")
        for seed in missing:
            self._made[seed] = self.make(seed)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(seed, x, y) of every set, in `seeds` order."""
        self.load()
        for seed in self.seeds:
            yield (seed, *self._made[seed])


@dataclass
class Dataset:
    """Train and test splits of one dataset: images as uint8 (N, C, H, W), or signals as float32 (N, C, L)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    g_train: torch.Tensor | None = None  # group attribute (0/1), e.g. Male for CelebA
    g_test: torch.Tensor | None = None
    group_name: str | None = None
    # How the model sees the images: "unit" scales to [0, 1] (the paper's x/255);
    # "standardize" subtracts the per-image mean and divides by the per-image std (ResNet recipe).
    normalization: str = "unit"
    augment_pad: int = 0  # pad-and-crop amount used by `augment`, in pixels
    augment_flip: bool = False  # horizontal flips make sense for photos, not for digits
    info: dict = field(default_factory=dict)  # provenance: source files, split rule
    extra_tests: ExtraTests | None = None  # further test sets of the same distribution (mnist1d)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Labels (N, K) of 0/1, one column per attribute in `classes` order (CelebA's target "all"),
        instead of (N,) class indices: the model has K independent sigmoid outputs."""
        return self.y_train.dim() == 2

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def input_dims(self) -> int:
        """Spatial dimensions of an input: 2 for images (N, C, H, W), 1 for signals (N, C, L)."""
        return self.x_train.dim() - 2

    def to(self, device) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            **{k: move(getattr(self, k)) for k in ("x_train", "y_train", "x_test", "y_test", "g_train", "g_test")},
        )


# ----------------------------------------------------------------------------- preprocessing
def to_float(x: torch.Tensor, normalization: str) -> torch.Tensor:
    """uint8 images -> float32 model inputs; "none" takes real-valued inputs as they are (MNIST-1D)."""
    x = x.float()
    if normalization == "none":
        return x
    if normalization == "unit":
        return x / 255.0
    if normalization == "standardize":
        # tf.image.per_image_standardization: (x - mean) / max(std, 1/sqrt(num_pixels))
        flat = x.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1, correction=0).clamp_min(1.0 / flat.shape[1] ** 0.5).view(-1, 1, 1, 1)
        return (x - mean) / std
    if normalization == "mean_std":  # the paper's ResNet-50: ImageNet's per-channel mean and std (imagenet_stream)
        mean = torch.tensor(stream.MEAN_RGB, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / torch.tensor(stream.STD_RGB, device=x.device).view(1, 3, 1, 1)
    raise ValueError(f"unknown normalization {normalization!r}; valid: 'unit', 'standardize', 'mean_std', 'none'")


def training_inputs(
    x: torch.Tensor, normalization: str, pad: int, flip: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """A training batch as the model sees it: augmented (when `generator` is given) and converted.

    Per-image standardisation comes *before* the pad-and-crop, as in the paper's ResNet-18 code
    (tf.image.per_image_standardization on the whole 32x32 image, then a zero pad to 40 and a random
    crop): its padding is each image's mean, and the crop's statistics are the whole image's. Every
    other normalization augments the uint8 batch first (x/255 commutes with a zero pad and a crop,
    and uint8 moves less memory): today's bits.
    """
    if generator is None:
        return to_float(x, normalization)
    if normalization == "standardize":
        return augment(to_float(x, normalization), pad, flip, generator)
    return to_float(augment(x, pad, flip, generator), normalization)


# The loaders that take each input option (`input_options`): per-image standardisation where the
# images are photos; a resolution where the loader resizes (CelebA's aligned 178x218 faces, ImageNet);
# a target where the labels are attributes (CelebA: one of them, or "all").
INPUT_OPTION_DATASETS = {
    "normalization": ("cifar10", "cifar100", "celeba", "imagenet", "imagenet_stream"),
    "image_size": ("celeba", "imagenet", "imagenet_stream"),
    "target": ("celeba",),
}


def input_options(name: str, normalization: str = "", image_size: int = 0, target: str = "") -> dict:
    """The loader options (for `load_dataset(name, root, **options)`) that give dataset `name` the inputs a
    recipe asks for: `normalization` ("" keeps the loader's own: x/255 for images; "unit" or
    "standardize", see `to_float`), `image_size` (0 keeps the loader's own; else the square side in
    pixels) and `target` ("" keeps the loader's own; else what it predicts: a CelebA attribute name, or
    "all", judged against the attribute file by the loader). {} for the defaults. Raises ValueError naming
    the value and the valid choices."""
    if normalization and normalization not in NORMALIZATIONS:
        valid = ", ".join(map(repr, NORMALIZATIONS))
        raise ValueError(f"unknown normalization {normalization!r}; valid: '' (the dataset's own), {valid}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
        raise ValueError(f"image_size must be an integer >= 0 (0: the dataset's own), got {image_size!r}")
    if not isinstance(target, str):
        raise ValueError(f"target must be a string ('': the dataset's own), got {target!r}")
    given = (("normalization", normalization), ("image_size", image_size), ("target", target))
    options = {k: v for k, v in given if v}
    for option in options:
        if name not in INPUT_OPTION_DATASETS[option]:
            raise ValueError(
                f"dataset {name!r} has no {option} option; datasets with one: "
                f"{', '.join(INPUT_OPTION_DATASETS[option])} (leave it at its default for {name!r})"
            )
    return options


def augment(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random pad-and-crop and horizontal flip of a uint8 batch, on its device, in one go.

    All draws come from `generator` (the augmentation stream), one call per batch, so the
    augmentation of a replica depends only on its seed and the batch sequence. A batch of
    signals (N, C, L) is shifted in time instead (`augment_signal`).
    """
    if x.dim() == 3:
        return augment_signal(x, pad, flip, generator)
    n, _, h, w = x.shape
    if pad:
        shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator, device=generator.device).to(x.device)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        # Gather each crop with one advanced index instead of a Python loop over the batch.
        rows = (shifts[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (shifts[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(-1), x)
    return x


def augment_signal(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random zero-pad-and-crop along time (a shift of up to `pad` steps either way) and time
    reversal of a batch of signals (N, C, L); draws from `generator` like `augment`."""
    n, _, length = x.shape
    if pad:
        shifts = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
        padded = torch.nn.functional.pad(x, (pad, pad))
        cols = (shifts.view(n, 1) + torch.arange(length, device=x.device)).view(n, 1, length)
        x = padded.gather(2, cols.expand(-1, x.shape[1], -1))
    if flip:
        mask = torch.rand(n, generator=generator, device=generator.device).to(x.device) < 0.5
        x = torch.where(mask.view(n, 1, 1), x.flip(-1), x)
    return x


# ----------------------------------------------------------------------------- embedded data
def _digits_arrays():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 8x8 images with values 0..16 -> uint8 0..255 (exact for the 17 levels: 255/16 rounded)
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return x, bunch.target.astype(np.int64)


def _fixed_split(n: int, test_fraction: float = 0.2, seed: int = 0):
    """A fixed train/test split: the same on every machine (numpy's PCG64 is portable)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def load_digits(root=None) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, a fixed 80/20 split (1,438 / 359)."""
    x, y = _digits_arrays()
    tr, te = _fixed_split(len(y))
    t = torch.from_numpy
    return Dataset(
        name="digits",
        x_train=t(x[tr]),
        y_train=t(y[tr]),
        x_test=t(x[te]),
        y_test=t(y[te]),
        classes=[str(i) for i in range(10)],
        augment_pad=1,
        info={"source": "sklearn.datasets.load_digits", "split": "numpy default_rng(0) permutation, 20% test"},
    )


# In digits_groups, even digits are mostly shown inverted and odd digits mostly plain, so the
# attribute is correlated with the label and (odd, inverted) / (even, plain) are rare subgroups.
GROUP_RATE = {0: 0.9, 1: 0.1}  # P(inverted | label parity even=0 / odd=1)


def load_digits_groups(root=None) -> Dataset:
    """Digits plus a nuisance attribute "inverted" (255 - x), correlated with the label.

    P(inverted | even digit) = 0.9 and P(inverted | odd digit) = 0.1, drawn once with a fixed
    seed; each rare (label, attribute) subgroup is about 1 % of the data: the CPU stand-in for
    CelebA's rare blond men.
    """
    d = load_digits()
    rng = np.random.default_rng(1)  # fixed: the attribute is part of the data, not a noise source

    def attribute(y: torch.Tensor) -> torch.Tensor:
        p = np.where(y.numpy() % 2 == 0, GROUP_RATE[0], GROUP_RATE[1])
        return torch.from_numpy((rng.random(len(p)) < p).astype(np.int64))

    g_train, g_test = attribute(d.y_train), attribute(d.y_test)
    invert = lambda x, g: torch.where(g.view(-1, 1, 1, 1).bool(), 255 - x, x)  # noqa: E731
    return replace(
        d,
        name="digits_groups",
        x_train=invert(d.x_train, g_train),
        x_test=invert(d.x_test, g_test),
        g_train=g_train,
        g_test=g_test,
        group_name="inverted",
        info={**d.info, "attribute": "inverted contrast, P(inv|even)=0.9, P(inv|odd)=0.1, default_rng(1)"},
    )


# ----------------------------------------------------------------------------- MNIST-1D
# Greydanus & Kobak, "Scaling down deep learning with MNIST-1D" (ICML 2024; the `mnist1d` package,
# Apache-2.0): ten 1D templates, randomly padded, translated, scaled, sheared and noised into
# signals of 40 steps. Generated here with `mnist1d.data.make_dataset` only (its `get_dataset`
# downloads). Train: the canonical 4,000 (the package's default arguments, seed 42, first 80 %);
# test: 10,000 from MNIST1D_TEST_SEED; MNIST1D_EXTRA_SEEDS: 20 further test sets of 10,000, so that
# variance over the data distribution can be measured directly. Each generated set is standardised
# by the package with the mean and std of that whole set (train and test of the canonical set
# together; each test set with its own), so a set's scale differs from another's by that much.
MNIST1D_TRAIN_SEED = 42  # the package's default: its canonical 4,000 / 1,000 split
MNIST1D_TEST_SEED = 1  # the main test set (ours: another seed than the training set's)
MNIST1D_EXTRA_SEEDS = tuple(range(101, 121))  # 20 further test sets, one generator seed each
MNIST1D_TEST_SIZE = 10_000  # examples per test set (1,000 per class: the generator balances classes)
MNIST1D_CACHE = "cache"  # under the data root, else under the checkout's data/ (git-ignored)


def mnist1d_cache_dir(root=None) -> Path:
    """Where generated MNIST-1D arrays are cached: ``<data root>/cache`` when a data root is given
    (argument or $NNRANDOMNESS_DATA), else ``data/cache`` of the checkout this package runs from."""
    base = data_root(root)
    return (base if base is not None else Path(__file__).resolve().parents[2] / "data") / MNIST1D_CACHE


def _mnist1d_args(seed: int, num_samples: int, train_split: float) -> dict:
    """The generator's full argument set: the package's defaults with seed, size and split replaced."""
    from mnist1d.data import get_dataset_args

    return {**get_dataset_args(as_dict=True), "seed": seed, "num_samples": num_samples, "train_split": train_split}


def _arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def generate_mnist1d(args: dict) -> tuple[np.ndarray, np.ndarray]:
    """All examples of `make_dataset(args)` (its train part, then its test part): x float32 (N, 1, L),
    y int64 (N,). The package seeds Python's and NumPy's *global* generators (`set_seed`); both
    states are saved before and restored after, so the caller's global randomness is untouched."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)[:, None, :]
    return x, np.concatenate([d["y"], d["y_test"]]).astype(np.int64)


def mnist1d_arrays(seed: int, num_samples: int, train_split: float, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """`generate_mnist1d` of these arguments, through the cache.

    The file is ``mnist1d-<SHA-256 of the arguments and the package version>.npz`` holding x, y and
    the SHA-256 of x and y; a file that does not load or fails its hash is regenerated with a warning.
    Written atomically (`files.write_atomic`), so a killed run leaves no half file.
    """
    from importlib.metadata import version

    args = _mnist1d_args(seed, num_samples, train_split)
    key = json.dumps({"args": args, "mnist1d": version("mnist1d")}, sort_keys=True)
    path = Path(cache_dir) / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:32]}.npz"
    if path.exists():
        try:
            # From bytes: np.load of a damaged file would leave its handle open when it fails.
            with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as f:
                x, y, stored = f["x"], f["y"], str(f["sha256"])
            if _arrays_sha256(x, y) == stored:
                return x, y
            reason = "its arrays fail their SHA-256"
        except Exception as e:  # a truncated or foreign file: regenerate, it is only a cache
            reason = f"it does not load ({type(e).__name__})"
        warnings.warn(
            f"MNIST-1D cache file {path} is damaged ({reason}); regenerating it", RuntimeWarning, stacklevel=2
        )
    x, y = generate_mnist1d(args)
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y, sha256=np.array(_arrays_sha256(x, y)), arguments=np.array(key))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue(), "nothing (a cache file: the next load generates it again)")
    return x, y


def load_mnist1d(root=None, **options) -> Dataset:
    """MNIST-1D: train on the canonical 4,000, test on 10,000 from another seed; 20 extra test sets.

    Options (for tests and small machines): train_pool=5000 (num_samples of the canonical set, of which
    the first 80 % train), test_size=10000 and extra_size=10000 (examples per test set; a multiple of 10
    keeps the classes balanced), extra_sets=20 (how many of MNIST1D_EXTRA_SEEDS), augment_pad=2 (time
    shift of the "aug" source, in steps). Measured cold (2 busy cores): 8 s for train + test, 82 s
    for the 20 extra sets (made only when a run evaluates them); cached: 0.01 s.
    """
    opts = _options(
        "mnist1d",
        options,
        {
            "train_pool": 5000,
            "test_size": MNIST1D_TEST_SIZE,
            "extra_size": MNIST1D_TEST_SIZE,
            "extra_sets": 20,
            "augment_pad": 2,
        },
    )
    for option in ("train_pool", "test_size", "extra_size"):
        _count("mnist1d", option, opts[option])
    if not 0 <= opts["extra_sets"] <= len(MNIST1D_EXTRA_SEEDS):
        raise ValueError(f"mnist1d: extra_sets must be in 0..{len(MNIST1D_EXTRA_SEEDS)}, got {opts['extra_sets']!r}")
    cache = mnist1d_cache_dir(root)
    x, y = mnist1d_arrays(MNIST1D_TRAIN_SEED, opts["train_pool"], 0.8, cache)
    n_train = int(opts["train_pool"] * 0.8)  # make_dataset's own split index
    x_test, y_test = mnist1d_arrays(MNIST1D_TEST_SEED, opts["test_size"], 0.0, cache)
    t = torch.from_numpy

    def extra(seed: int):
        return tuple(map(t, mnist1d_arrays(seed, opts["extra_size"], 0.0, cache)))

    return Dataset(
        name="mnist1d",
        x_train=t(x[:n_train]),
        y_train=t(y[:n_train]),
        x_test=t(x_test),
        y_test=t(y_test),
        classes=[str(i) for i in range(10)],
        normalization="none",  # already standardised by the generator
        augment_pad=opts["augment_pad"],
        info={
            "source": "mnist1d.data.make_dataset (generated offline, cached)",
            "split": f"train: seed {MNIST1D_TRAIN_SEED}, first {n_train} of {opts['train_pool']}; "
            f"test: seed {MNIST1D_TEST_SEED}, {opts['test_size']} examples",
            "extra_tests": f"seeds {MNIST1D_EXTRA_SEEDS[: opts['extra_sets']]}, {opts['extra_size']} examples each",
        },
        extra_tests=ExtraTests(MNIST1D_EXTRA_SEEDS[: opts["extra_sets"]], extra),
    )


# In mnist1d_groups the signal is shifted up by MNIST1D_OFFSET (one standard deviation of the
# standardised signals) with a class-dependent rate in training, as digits_groups inverts contrast:
# shifted is common for even digits and rare for odd ones, so a model can take the level as a
# shortcut to the label's parity. In every test set the rate is MNIST1D_TEST_GROUP_RATE for every
# class, so that each (label, shifted) subgroup holds about 500 of its class's 1,000 test examples
# (at least 300: tests/test_data.py checks the real set). Measured (cnn1d, 30 epochs, batch 128, Adam
# 0.01, two ALGO replicas): 90 % test accuracy, 85 % on the rare subgroups against 95 % on the common
# ones, 13 % churn. A polarity flip (x -> -x) was tried first and is too strong a shortcut (56 % test
# accuracy, 32 % on the rare subgroups); time reversal gave 78 % (64 % rare).
MNIST1D_OFFSET = 1.0
MNIST1D_TEST_GROUP_RATE = 0.5
MNIST1D_GROUP_SEED = 1  # the attribute's own generator: part of the data, not a noise source


def _shift(x: torch.Tensor, y: torch.Tensor, rate: dict[int, float], seed: int):
    """(x + MNIST1D_OFFSET where the attribute is drawn, the attribute) with P(shifted | label) =
    rate[label % 2], drawn from numpy's PCG64 seeded with (MNIST1D_GROUP_SEED, seed): isolated and the
    same on every machine."""
    p = np.where(y.numpy() % 2 == 0, rate[0], rate[1])
    g = torch.from_numpy((np.random.default_rng([MNIST1D_GROUP_SEED, seed]).random(len(p)) < p).astype(np.int64))
    return torch.where(g.view(-1, 1, 1).bool(), x + MNIST1D_OFFSET, x), g


def load_mnist1d_groups(root=None, **options) -> Dataset:
    """MNIST-1D plus a nuisance attribute "shifted" (x + 1, a constant offset), correlated with the label in training.

    Train (4,000): P(shifted | even) = 0.9, P(shifted | odd) = 0.1 (GROUP_RATE, as digits_groups), so
    (odd, shifted) and (even, plain) are rare, about 40 examples per class. Test (10,000) and every extra
    test set: P(shifted) = 0.5 for every class, so each of the 20 (label, shifted) subgroups has about
    500 examples (at least 300). Options as `load_mnist1d`.
    """
    d = load_mnist1d(root, **options)
    balanced = {0: MNIST1D_TEST_GROUP_RATE, 1: MNIST1D_TEST_GROUP_RATE}
    x_train, g_train = _shift(d.x_train, d.y_train, GROUP_RATE, MNIST1D_TRAIN_SEED)
    x_test, g_test = _shift(d.x_test, d.y_test, balanced, MNIST1D_TEST_SEED)
    make = d.extra_tests.make

    def extra(seed: int):
        x, y = make(seed)
        return _shift(x, y, balanced, seed)[0], y

    return replace(
        d,
        name="mnist1d_groups",
        x_train=x_train,
        x_test=x_test,
        g_train=g_train,
        g_test=g_test,
        group_name="shifted",
        info={
            **d.info,
            "attribute": f"constant offset x + {MNIST1D_OFFSET}; train P(shifted|even)=0.9, P(shifted|odd)=0.1; "
            f"test P(shifted)=0.5; default_rng([{MNIST1D_GROUP_SEED}, generator seed])",
        },
        extra_tests=ExtraTests(d.extra_tests.seeds, extra),
    )


# ----------------------------------------------------------------------------- real datasets
# Real datasets are read from the data root in their usual on-disk formats, checked cheaply
# first (file existence only, see CHECKERS) so a run fails before any work, and never downloaded.
# Each loader is `load_x(root=None, **options)`; an unknown option is a TypeError naming the
# valid ones. Images end up as uint8 (N, 3, H, W) like the embedded data.
NORMALIZATIONS = ("unit", "standardize")  # what `to_float` understands
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # as ImageFolder


def _options(name: str, given: dict, defaults: dict) -> dict:
    """Defaults overridden by `given`; an unknown option is an error that lists the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(
            f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(defaults)}"
        )
    return {**defaults, **given}


def _choice(name: str, option: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}: {option}={value!r} is not valid; valid values: {', '.join(map(repr, valid))}")


def _count(name: str, option: str, value, allow_none: bool = False) -> None:
    """A positive int (bools excluded), or None where allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        kind = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(f"{name}: {option} must be {kind}, got {value!r}")


def _require(name: str, root, subdir: str, files=(), dirs=(), what: str = "") -> Path:
    """The dataset folder `<root>/<subdir>`, or the `missing` error naming it and what is absent."""
    listing = ", ".join([*files, *(d + "/" for d in dirs)])
    expected = f"{subdir}/ under the data root holding {listing}" + (f" ({what})" if what else "")
    base = data_root(root)
    if base is None:
        raise not_found_error(name, None, expected)
    where = base / subdir
    absent = [f for f in files if not (where / f).is_file()] + [d + "/" for d in dirs if not (where / d).is_dir()]
    if absent:
        raise not_found_error(name, where, f"{expected}; missing there: {', '.join(absent)}")
    return where


def _read_images(name: str, paths: list[Path], size: int, transform) -> np.ndarray:
    """Decode image files with PIL (as RGB), `transform` each to size x size, stack as uint8 NCHW."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except FileNotFoundError:
            raise not_found_error(name, path.parent, f"the image file {path.name}") from None
        out[i] = np.asarray(transform(rgb)).transpose(2, 0, 1)
    return out


# CIFAR: the "CIFAR-10/100 python version" archives extracted into the data root. Recipes: the
# SmallCNN sees x/255 without augmentation, the ResNet-18 per-image standardisation with pad 4 +
# random crop 32 + flip; a plan picks the normalization, `augment_pad`/`augment_flip` hold the
# ResNet recipe's augmentation.
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CIFAR100_DIR = "cifar-100-python"
CIFAR100_FILES = ("train", "test", "meta")


def _unpickle(path: Path) -> dict:
    """One CIFAR pickle (written by Python 2, hence bytes keys). Only load files you trust."""
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_arrays(path: Path, batch: dict, label_key: bytes):
    """b'data' uint8 (N, 3072), each row the 1024 R, then G, then B values of a 32x32 image in
    row-major order -> (N, 3, 32, 32); labels -> int64. Copies, so the tensors own writable memory."""
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.array(batch[label_key], dtype=np.int64)
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    return np.array(data.reshape(-1, 3, 32, 32)), labels


def _cifar_dataset(name, train, test, classes, normalization, info) -> Dataset:
    for (_x, y), split in ((train, "train"), (test, "test")):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise ValueError(f"{name}: {split} labels outside 0..{len(classes) - 1}")
    t = torch.from_numpy
    return Dataset(
        name=name,
        x_train=t(train[0]),
        y_train=t(train[1]),
        x_test=t(test[0]),
        y_test=t(test[1]),
        classes=classes,
        normalization=normalization,
        augment_pad=4,  # pad to 40, random crop 32
        augment_flip=True,
        info=info,
    )


def check_cifar10(root=None) -> Path:
    what = "the CIFAR-10 python version, cifar-10-python.tar.gz extracted"
    return _require("cifar10", root, CIFAR10_DIR, CIFAR10_FILES, what=what)


def load_cifar10(root=None, **options) -> Dataset:
    """CIFAR-10 from `<root>/cifar-10-batches-py/`: the official 50,000 / 10,000 split.

    Options: normalization="unit" (x/255, the SmallCNN recipe) or "standardize" (per-image
    standardisation, the ResNet-18 recipe).
    """
    opts = _options("cifar10", options, {"normalization": "unit"})
    _choice("cifar10", "normalization", opts["normalization"], NORMALIZATIONS)
    where = check_cifar10(root)
    parts = [_cifar_arrays(where / f, _unpickle(where / f), b"labels") for f in CIFAR10_FILES[:5]]
    train = np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
    test = _cifar_arrays(where / "test_batch", _unpickle(where / "test_batch"), b"labels")
    classes = [s.decode() for s in _unpickle(where / "batches.meta")[b"label_names"]]
    info = {
        "source": [str(where / f) for f in CIFAR10_FILES],
        "split": "official: data_batch_1..5 -> train, test_batch -> test",
    }
    return _cifar_dataset("cifar10", train, test, classes, opts["normalization"], info)


def check_cifar100(root=None) -> Path:
    what = "the CIFAR-100 python version, cifar-100-python.tar.gz extracted"
    return _require("cifar100", root, CIFAR100_DIR, CIFAR100_FILES, what=what)


def load_cifar100(root=None, **options) -> Dataset:
    """CIFAR-100 from `<root>/cifar-100-python/`: the official 50,000 / 10,000 split.

    Options: label="fine" (100 classes) or "coarse" (the 20 superclasses); normalization as
    for `load_cifar10`.
    """
    opts = _options("cifar100", options, {"label": "fine", "normalization": "unit"})
    _choice("cifar100", "label", opts["label"], ("fine", "coarse"))
    _choice("cifar100", "normalization", opts["normalization"], NORMALIZATIONS)
    where = check_cifar100(root)
    key = opts["label"].encode()
    train = _cifar_arrays(where / "train", _unpickle(where / "train"), key + b"_labels")
    test = _cifar_arrays(where / "test", _unpickle(where / "test"), key + b"_labels")
    classes = [s.decode() for s in _unpickle(where / "meta")[key + b"_label_names"]]
    info = {
        "source": [str(where / f) for f in CIFAR100_FILES],
        "split": "official: train -> train, test -> test",
        "label": f"{opts['label']} ({len(classes)} classes)",
    }
    return _cifar_dataset("cifar100", train, test, classes, opts["normalization"], info)


# CelebA: the aligned-and-cropped images (178x218 JPEGs) and the two annotation files as
# distributed. The target is one binary attribute (softmax over 2 classes), or "all": the paper's
# 40 sigmoid outputs, one per attribute (a multi-label `Dataset`); the group attribute is one.
CELEBA_DIR = "celeba"
CELEBA_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt")
CELEBA_IMAGES = "img_align_celeba"
CELEBA_ALL = "all"  # the target that predicts every attribute of list_attr_celeba.txt at once


def check_celeba(root=None) -> Path:
    return _require(
        "celeba", root, CELEBA_DIR, CELEBA_FILES, (CELEBA_IMAGES,), what=f"the aligned JPEGs in {CELEBA_IMAGES}/"
    )


def _celeba_attributes(path: Path, wanted: dict[str, str]):
    """list_attr_celeba.txt: a count, the attribute names, then `file v1 .. vK` with v = 1/-1.

    Returns the attribute names and, for each option in `wanted` (option -> attribute name, or
    "all" for the target), a dict filename -> 0/1 (a list of K of them, in file order, for "all").
    """
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and an attribute-name line")
    names = lines[1].split()
    for option, attr in wanted.items():
        if attr not in names and not (option == "target" and attr == CELEBA_ALL):
            also = f" or {CELEBA_ALL!r} (every attribute, one sigmoid output each)" if option == "target" else ""
            raise ValueError(
                f"celeba: {option}={attr!r} is not an attribute of {path.name}; valid: {', '.join(names)}{also}"
            )
    every = list(range(1, len(names) + 1))
    cols = {option: every if attr == CELEBA_ALL else [names.index(attr) + 1] for option, attr in wanted.items()}
    rows = [line.split() for line in lines[2:] if line.strip()]
    if int(lines[0]) != len(rows):
        raise ValueError(f"{path}: line 1 announces {int(lines[0])} images, the file lists {len(rows)}")
    values = {option: {} for option in wanted}
    for row in rows:
        if len(row) != len(names) + 1:
            raise ValueError(f"{path}: {row[0]} has {len(row) - 1} values, expected {len(names)}")
        for option, columns in cols.items():
            for col in columns:
                if row[col] not in ("1", "-1"):
                    raise ValueError(f"{path}: {row[0]} has value {row[col]!r}, expected 1 or -1")
            bits = [int(row[col] == "1") for col in columns]
            values[option][row[0]] = bits if wanted[option] == CELEBA_ALL else bits[0]
    return names, values


def load_celeba(root=None, **options) -> Dataset:
    """CelebA from `<root>/celeba/`: a binary target attribute (or all 40), one binary group attribute.

    Train = partition 0 of list_eval_partition.txt, test = partition 2; the validation
    partition (1) is unused. Options: target="Blond_Hair", group="Male" (any of the 40
    attribute names in list_attr_celeba.txt; target="all": the paper's head, labels (N, 40) of 0/1
    in the file's attribute order and `classes` the attribute names, a multi-label `Dataset`; the
    group may then be one of the targets, as Male is); image_size=64 (square PIL bilinear resize of
    the 178x218 images; the paper uses 128, about 8 GB of uint8 for the train split, so the
    default is smaller; pixel values differ from TensorFlow's resize either way);
    max_examples=None (keep the first K of each split in file order, for small machines);
    normalization="unit" (the paper does no normalisation or augmentation).
    """
    opts = _options(
        "celeba",
        options,
        {"target": "Blond_Hair", "group": "Male", "image_size": 64, "max_examples": None, "normalization": "unit"},
    )
    _count("celeba", "image_size", opts["image_size"])
    _count("celeba", "max_examples", opts["max_examples"], allow_none=True)
    _choice("celeba", "normalization", opts["normalization"], NORMALIZATIONS)
    where = check_celeba(root)
    target, group, size = opts["target"], opts["group"], int(opts["image_size"])
    names, values = _celeba_attributes(where / CELEBA_FILES[0], {"target": target, "group": group})

    splits: dict[int, list[str]] = {0: [], 1: [], 2: []}
    partition_file = where / CELEBA_FILES[1]
    for line in partition_file.read_text().splitlines():
        if not line.strip():
            continue
        filename, part = line.split()
        if part not in ("0", "1", "2"):
            raise ValueError(f"{partition_file}: {filename} has partition {part!r}, expected 0, 1 or 2")
        if filename not in values["target"]:
            raise ValueError(f"{partition_file}: {filename} has no attributes in {CELEBA_FILES[0]}")
        splits[int(part)].append(filename)
    if opts["max_examples"] is not None:
        splits = {k: v[: int(opts["max_examples"])] for k, v in splits.items()}

    from PIL import Image

    resize = lambda im: im.resize((size, size), Image.Resampling.BILINEAR)  # noqa: E731
    t = torch.from_numpy

    def split(files: list[str]):
        x = _read_images("celeba", [where / CELEBA_IMAGES / f for f in files], size, resize)
        y = np.array([values["target"][f] for f in files], dtype=np.int64)
        if target == CELEBA_ALL:  # (N, 40) even for an empty split
            y = y.reshape(len(files), len(names))
        g = np.array([values["group"][f] for f in files], dtype=np.int64)
        return t(x), t(y), t(g)

    x_train, y_train, g_train = split(splits[0])
    x_test, y_test, g_test = split(splits[2])
    return Dataset(
        name="celeba",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=list(names) if target == CELEBA_ALL else [f"not_{target}", target],
        g_train=g_train,
        g_test=g_test,
        group_name=group,
        normalization=opts["normalization"],
        augment_pad=0,  # the paper uses no augmentation for CelebA
        augment_flip=False,
        info={
            "source": [str(where / f) for f in CELEBA_FILES] + [str(where / CELEBA_IMAGES)],
            "split": "list_eval_partition.txt: 0 -> train, 2 -> test, 1 (validation) unused",
            "target": target,
            "group": group,
            "attributes": names,
            "image_size": f"{size}x{size}, PIL bilinear resize of the aligned images",
            "max_examples": opts["max_examples"],
        },
    )


# ImageNet: the ImageFolder layout (val/ reorganised into wnid folders as well). The real recipe
# (inception-style crop 224 + flip, mean/std) needs a streaming loader, which is out of scope for
# this in-memory uint8 path; this loader exists so plans and tests can run on small real-format
# folders. Full size is out of reach anyway: 1.28 M images at 64x64 are already ~16 GB of uint8.
IMAGENET_DIR = "imagenet"
IMAGENET_SPLITS = ("train", "val")


def check_imagenet(root=None) -> Path:
    what = "ImageFolder layout: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
    return _require("imagenet", root, IMAGENET_DIR, dirs=IMAGENET_SPLITS, what=what)


def _image_files(folder: Path, cap: int | None) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"imagenet: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files[:cap] if cap is not None else files


def _resize_center_crop(im, size: int):
    """Resize the shorter side to `size` (bilinear), then take the central size x size crop:
    torchvision's Resize(size) + CenterCrop(size) on PIL images."""
    from PIL import Image

    w, h = im.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return im.crop((left, top, left + size, top + size))


def _imagenet_files(where: Path, cap: int | None) -> tuple[list[str], dict[str, tuple[list[Path], list[int]]]]:
    """The classes (sorted wnid folders of train/, which val/ must match) and, per split, its image files
    (sorted by name within a class, the first `cap` if given) with their labels."""
    folders = {s: sorted(d.name for d in (where / s).iterdir() if d.is_dir()) for s in IMAGENET_SPLITS}
    classes = folders["train"]
    if not classes:
        raise ValueError(f"imagenet: no class folders in {where / 'train'}")
    if folders["val"] != classes:
        only_train = sorted(set(classes) - set(folders["val"]))
        only_val = sorted(set(folders["val"]) - set(classes))
        raise ValueError(
            f"imagenet: {where / 'val'} must have the same class folders as {where / 'train'}; "
            f"only in train: {only_train[:10]}{' ...' if len(only_train) > 10 else ''}, "
            f"only in val: {only_val[:10]}{' ...' if len(only_val) > 10 else ''}"
        )
    files = {}
    for name in IMAGENET_SPLITS:
        paths, labels = [], []
        for k, wnid in enumerate(classes):
            found = _image_files(where / name / wnid, cap)
            paths += found
            labels += [k] * len(found)
        files[name] = (paths, labels)
    return classes, files


def load_imagenet(root=None, **options) -> Dataset:
    """ImageNet in the ImageFolder layout `<root>/imagenet/{train,val}/<wnid>/*.JPEG`, in memory.

    classes = the sorted wnid folder names of train/; val/ must have the same folders.
    Files within a class are taken in sorted name order. Options: image_size=64 (shorter side
    resized to it, then centre crop), max_per_class=None (first K files per class and split),
    normalization="unit". Not the paper's recipe (inception crop 224 needs streaming).
    """
    opts = _options("imagenet", options, {"image_size": 64, "max_per_class": None, "normalization": "unit"})
    _count("imagenet", "image_size", opts["image_size"])
    _count("imagenet", "max_per_class", opts["max_per_class"], allow_none=True)
    _choice("imagenet", "normalization", opts["normalization"], NORMALIZATIONS)
    where = check_imagenet(root)
    size = int(opts["image_size"])
    cap = None if opts["max_per_class"] is None else int(opts["max_per_class"])
    classes, files = _imagenet_files(where, cap)
    t = torch.from_numpy

    def split(name: str):
        paths, labels = files[name]
        x = _read_images("imagenet", paths, size, lambda im: _resize_center_crop(im, size))
        return t(x), t(np.array(labels, dtype=np.int64))

    x_train, y_train = split("train")
    x_test, y_test = split("val")
    return Dataset(
        name="imagenet",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=classes,
        normalization=opts["normalization"],
        augment_pad=size // 8,
        augment_flip=True,
        info={
            "source": [str(where / s) for s in IMAGENET_SPLITS],
            "split": "train/<wnid>/ -> train, val/<wnid>/ -> test; classes = sorted wnid folders",
            "image_size": f"{size}x{size}: shorter side resized (PIL bilinear), centre crop",
            "max_per_class": cap,
            "note": "in-memory stand-in; the paper's inception crop 224 needs a streaming loader",
        },
    )


STREAM_NORMALIZATIONS = ("mean_std", *NORMALIZATIONS)  # imagenet_stream's; mean_std: ImageNet's channel mean/std


def load_imagenet_stream(root=None, **options) -> Dataset:
    """ImageNet as the paper trains it, streamed from the same folders as `load_imagenet` (`stream.ImageStream`).

    x_train and x_test are streams, not tensors: nothing is decoded until a pass. Training batches: the
    inception crop (scale 0.08-1, ratio 3/4-4/3) resized to image_size and a horizontal flip, both drawn from
    the replica's aug stream when the spec augments (else the evaluation view); evaluation: the shorter
    side resized to image_size * 256 / 224, the centre crop. Options: image_size=224, max_per_class=None
    (as `load_imagenet`), normalization="mean_std" (the paper's; also unit, standardize), workers (decoding
    processes, 0: this one; default $NNRANDOMNESS_STREAM_WORKERS, else up to 8), prefetch=2 (batches per
    worker), decode_device="cpu" ("cuda": nvJPEG on the GPU, JPEG files only; other bits than the CPU's).
    """
    defaults = {"image_size": 224, "max_per_class": None, "normalization": "mean_std", "workers": None}
    opts = _options("imagenet_stream", options, {**defaults, "prefetch": 2, "decode_device": "cpu"})
    _count("imagenet_stream", "image_size", opts["image_size"])
    _count("imagenet_stream", "max_per_class", opts["max_per_class"], allow_none=True)
    _choice("imagenet_stream", "normalization", opts["normalization"], STREAM_NORMALIZATIONS)
    workers = stream.default_workers() if opts["workers"] is None else opts["workers"]
    size, prefetch, decode_device = int(opts["image_size"]), opts["prefetch"], opts["decode_device"]

    def make(files, labels) -> stream.ImageStream:  # judges workers, prefetch and decode_device
        labels = torch.tensor(labels, dtype=torch.int64)
        return stream.ImageStream([str(f) for f in files], labels, size, workers, prefetch, decode_device)

    make([], [])  # every option judged before the folders are read
    where = check_imagenet(root)
    cap = None if opts["max_per_class"] is None else int(opts["max_per_class"])
    classes, files = _imagenet_files(where, cap)
    train, test = make(*files["train"]), make(*files["val"])
    return Dataset(
        name="imagenet_stream",
        x_train=train,
        y_train=train.labels,
        x_test=test,
        y_test=test.labels,
        classes=classes,
        normalization=opts["normalization"],
        info={
            "source": [str(where / s) for s in IMAGENET_SPLITS],
            "split": "train/<wnid>/ -> train, val/<wnid>/ -> test; classes = sorted wnid folders",
            "image_size": f"{train.size}x{train.size}",
            "max_per_class": cap,
            "stream": train.info(),
        },
    )


# ----------------------------------------------------------------------------- registry
def data_root(root=None) -> Path | None:
    """The data root: the argument, else $NNRANDOMNESS_DATA, else None."""
    root = root if root is not None else os.environ.get(DATA_ROOT_ENV)
    return Path(root) if root else None


def not_found_error(name: str, where: Path | None, expected: str) -> FileNotFoundError:
    """The error (for the caller to raise) of a dataset not on disk: where it was looked for, what goes there."""
    where_text = str(where) if where is not None else f"<no data root: pass data_root or set ${DATA_ROOT_ENV}>"
    return FileNotFoundError(
        f"dataset {name!r} not found at {where_text}. Expected: {expected}. "
        "Nothing is downloaded automatically; place the files there."
    )


LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "digits_groups": load_digits_groups,
    "mnist1d": load_mnist1d,
    "mnist1d_groups": load_mnist1d_groups,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "celeba": load_celeba,
    "imagenet": load_imagenet,
    "imagenet_stream": load_imagenet_stream,  # the paper's 224 px recipe, decoded a batch at a time
}
EMBEDDED = ("digits", "digits_groups", "mnist1d", "mnist1d_groups")  # need no data root
SIGNALS = ("mnist1d", "mnist1d_groups")  # 1D inputs (N, C, L); every other dataset holds images (N, C, H, W)


def input_dims(name: str) -> int:
    """Spatial dimensions of dataset `name`'s inputs (1: signals, 2: images), known without loading it."""
    return 1 if name in SIGNALS else 2


def check_dataset(name: str, root=None) -> None:
    """Fail before any work if `name` is unknown or its files are missing."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(LOADERS)}")
    checker = CHECKERS.get(name)
    if checker is not None:
        checker(root)


CHECKERS: dict[str, Callable] = {  # name -> function(root) raising when files are missing
    "cifar10": check_cifar10,
    "cifar100": check_cifar100,
    "celeba": check_celeba,
    "imagenet": check_imagenet,
    "imagenet_stream": check_imagenet,
}


def load_dataset(name: str, root=None, **options) -> Dataset:
    """Load a registered dataset (see `LOADERS`)."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(LOADERS)}")
    return LOADERS[name](root, **options)
