"""A streaming image split: JPEG files decoded, cropped and flipped a batch at a time in worker processes.

ImageNet at 224 px (1.28 M images, about 193 GB as uint8) cannot sit in memory as the other datasets
do; `ImageStream` stands where `data.Dataset` holds its image tensor (`x_train`, `x_test`) and yields
uint8 batches instead. The randomness stays in the main process: for each training batch it draws
DRAWS uniforms per image from the replica's *aug* generator (the inception crop's ten tries and the
flip), in batch order, so the bits depend on the seed and the order only, never on how many workers
decode. The workers turn the draws into a crop with torchvision's `RandomResizedCrop.get_params` rule
(`inception_crop`), decode with `torchvision.io` and resize with `torchvision.transforms.v2.functional`
on uint8 tensors. Host memory is bounded by batch size x prefetch x workers, whatever the number of
files: the stream holds file names and labels, and at most `workers * prefetch` batches are in flight.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

INCEPTION_SCALE = (0.08, 1.0)  # fraction of the image's area a training crop covers
INCEPTION_RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height), drawn log-uniformly
CROP_TRIES = 10  # torchvision's tries before the centre-crop fallback
DRAWS = 4 * CROP_TRIES + 1  # uniforms per training image: (area, log ratio, top, left) per try, then the flip
EVAL_RESIZE = 256 / 224  # evaluation: the shorter side resized to size * 256 / 224, then the centre crop
# The paper's per-channel statistics (TF official ResNet: ImageNet's mean and std, RGB, on 0..255).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
DECODE_DEVICES = ("cpu", "cuda")  # cuda: workers read bytes, torchvision.io.decode_jpeg decodes on the GPU
WORKERS_ENV = "NNRANDOMNESS_STREAM_WORKERS"  # decoding processes per stream where the loader is not told
MAX_WORKERS = 8  # the default's cap (with the CPUs available)


def default_workers() -> int:
    """$NNRANDOMNESS_STREAM_WORKERS, else min(MAX_WORKERS, CPUs available to this process)."""
    value = os.environ.get(WORKERS_ENV, "")
    if value:
        if not value.isdigit():
            raise ValueError(f"${WORKERS_ENV} must be an integer >= 0 (0: decode in this process), got {value!r}")
        return int(value)
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def inception_crop(height: int, width: int, u: list[float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the training crop of a height x width image from the uniforms `u` in [0, 1).

    torchvision's `RandomResizedCrop.get_params` rule with scale INCEPTION_SCALE and ratio INCEPTION_RATIO,
    its random numbers replaced by u (4 per try: area, log ratio, top, left): the first of CROP_TRIES
    crops that fits, else the centre crop of the largest window whose ratio is within bounds.
    """
    area = height * width
    lo, hi = math.log(INCEPTION_RATIO[0]), math.log(INCEPTION_RATIO[1])
    for t in range(CROP_TRIES):
        a, r, i, j = u[4 * t : 4 * t + 4]
        target = area * (INCEPTION_SCALE[0] + a * (INCEPTION_SCALE[1] - INCEPTION_SCALE[0]))
        aspect = math.exp(lo + r * (hi - lo))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return min(int(i * (height - h + 1)), height - h), min(int(j * (width - w + 1)), width - w), h, w
    ratio = width / height
    if ratio < INCEPTION_RATIO[0]:
        w, h = width, int(round(width / INCEPTION_RATIO[0]))
    elif ratio > INCEPTION_RATIO[1]:
        w, h = int(round(height * INCEPTION_RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def transform(image: torch.Tensor, size: int, u: list[float] | None) -> torch.Tensor:
    """A decoded uint8 (3, H, W) image as the model sees it, size x size: with draws `u`, the inception crop
    resized to size (bilinear, antialiased) and flipped when the last draw is < 0.5; without, the evaluation
    view (shorter side resized to size * EVAL_RESIZE, the centre crop)."""
    from torchvision.transforms.v2 import functional as TF

    if u is None:
        return TF.center_crop(TF.resize(image, [round(size * EVAL_RESIZE)], antialias=True), [size, size])
    top, left, h, w = inception_crop(image.shape[-2], image.shape[-1], u)
    image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(image) if u[-1] < 0.5 else image


def decode(path: str) -> torch.Tensor:
    """An image file as uint8 (3, H, W) RGB (grey and CMYK JPEGs converted), by torchvision.io on the CPU."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    with _torchvision_io():
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError as e:  # torchvision's message does not name the file
            raise ValueError(f"cannot decode the image file {path}: {e}") from None


def decode_on_gpu(data: list[torch.Tensor], device) -> list[torch.Tensor]:
    """JPEG files' bytes decoded to uint8 (3, H, W) RGB images by nvJPEG on `device` (a CUDA device)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with _torchvision_io():
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


@contextlib.contextmanager
def _torchvision_io():
    """torchvision 0.29 warns on every decode that its decoders are deprecated for TorchCodec's (not a
    dependency here): that one warning is silenced, any other still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding and encoding capabilities", DeprecationWarning)
        yield


class _Reader(torch.utils.data.Dataset):
    """What a worker does with one key (indices, draws or None): the batch's images, decoded and transformed
    (uint8 (B, 3, size, size)), or on a GPU-decoding stream the files' bytes, for the main process."""

    def __init__(self, paths: list[str], size: int, decode_device: str):
        # One numpy array of bytes, not a list of str: a forked worker reading a Python object writes its
        # reference count, which copies the page (1.28 M names would end up copied into every worker).
        self.paths = np.array([os.fsencode(p) for p in paths], dtype=bytes)
        self.size, self.decode_device = size, decode_device

    def __getitem__(self, key):
        idx, draws = key
        paths = [os.fsdecode(self.paths[i]) for i in idx.tolist()]
        if self.decode_device != "cpu":
            from torchvision.io import read_file

            return [read_file(p) for p in paths], draws
        out = torch.empty((len(idx), 3, self.size, self.size), dtype=torch.uint8)
        for k, path in enumerate(paths):
            out[k] = transform(decode(path), self.size, None if draws is None else draws[k].tolist())
        return out, None


class _Keys(torch.utils.data.Sampler):
    """The stream's plan for one pass, set before each: batches of `order`, with their draws from `generator`
    taken here, in the main process, batch after batch (the DataLoader asks for keys in order, whatever the
    number of workers). Counts the keys handed out (`sent`)."""

    def __init__(self):
        self.order, self.batch_size, self.generator, self.sent = torch.zeros(0, dtype=torch.int64), 1, None, 0

    def __iter__(self):
        g = self.generator
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start : start + self.batch_size]
            draws = None
            if g is not None:
                draws = torch.rand((len(idx), DRAWS), generator=g, device=g.device, dtype=torch.float64).cpu()
            self.sent += 1
            yield idx, draws

    def __len__(self):
        return math.ceil(len(self.order) / self.batch_size)


@dataclass(eq=False)
class ImageStream:
    """One split of image files, streamed: `data.Dataset` holds it where it holds an image tensor.

    It answers what the dataset asks of its images (len, shape, dtype, dim, `to`) without decoding any;
    `epoch` yields a training pass's (x, y) batches, `batches` the evaluation batches in file order.
    `to(device)` moves nothing: it names the device the batches are moved to as they come.
    """

    paths: list[str]
    labels: torch.Tensor  # int64 (N,), on the CPU
    size: int  # square side of every image the stream yields
    workers: int = 0  # decoding processes (0: in this process)
    prefetch: int = 2  # batches each worker prepares ahead
    decode_device: str = "cpu"
    device: str = "cpu"
    max_in_flight: int = field(default=0, repr=False)  # most batches handed to the workers and not yet yielded
    _loader: torch.utils.data.DataLoader | None = field(default=None, repr=False)

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: decode in this process), got {self.workers!r}")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ValueError(f"prefetch must be an integer >= 1 (batches per worker), got {self.prefetch!r}")
        if self.decode_device not in DECODE_DEVICES:
            valid = ", ".join(map(repr, DECODE_DEVICES))
            raise ValueError(f"decode_device {self.decode_device!r} is not valid; valid values: {valid}")
        if self.decode_device == "cuda" and not torch.cuda.is_available():
            raise ValueError("decode_device 'cuda' needs a CUDA device; this machine has none (use 'cpu')")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8

    def dim(self) -> int:
        return 4

    def to(self, device) -> ImageStream:
        """This stream (its workers kept) when the device is its own, else a copy that yields to `device`."""
        device = str(torch.device(device))
        return self if device == str(torch.device(self.device)) else replace(self, device=device, _loader=None)

    def __getstate__(self):  # sent to another process: without its running workers
        return {**self.__dict__, "_loader": None}

    def info(self) -> dict:
        """What the stream does, for the dataset's provenance (`Dataset.info`)."""
        return {
            "workers": self.workers,
            "prefetch": self.prefetch,
            "decode_device": self.decode_device,
            "train_crop": f"inception: scale {INCEPTION_SCALE}, ratio (3/4, 4/3), {CROP_TRIES} tries then centre, "
            f"resize to {self.size} (bilinear, antialiased), flip p=0.5; draws from the aug stream",
            "eval_view": f"shorter side resized to {round(self.size * EVAL_RESIZE)}, centre crop {self.size}",
        }

    def epoch(self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None) -> Iterator:
        """(x uint8 (B, 3, size, size), y) batches of `order` on the stream's device: the inception crop and
        flips drawn from `generator` (None: the evaluation view, no draws)."""
        for x, idx in self._pass(order.cpu(), batch_size, generator):
            yield x, self.labels[idx].to(self.device)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The evaluation view of every image, in file order, batch_size at a time, on the stream's device."""
        for x, _ in self._pass(torch.arange(len(self.paths)), batch_size, None):
            yield x

    def close(self) -> None:
        """Stop the workers (they stop too with the stream, or with this process)."""
        self._loader = None

    def _pass(self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None):
        if self._loader is None:
            extra = dict(persistent_workers=True, prefetch_factor=self.prefetch) if self.workers else {}
            self._loader = torch.utils.data.DataLoader(
                _Reader(self.paths, self.size, self.decode_device),
                sampler=_Keys(),
                batch_size=None,  # a key is a whole batch: one worker decodes it
                num_workers=self.workers,
                pin_memory=torch.device(self.device).type == "cuda" and self.decode_device == "cpu",
                **extra,
            )
        keys: _Keys = self._loader.sampler
        keys.order, keys.batch_size, keys.generator, keys.sent = order, batch_size, generator, 0
        for received, (x, draws) in enumerate(self._loader):
            self.max_in_flight = max(self.max_in_flight, keys.sent - received)
            start = received * batch_size
            idx = order[start : start + batch_size]
            if self.decode_device != "cpu":  # x holds the files' bytes
                u = [None] * len(x) if draws is None else draws.tolist()
                gpu = self.device if torch.device(self.device).type == "cuda" else "cuda"
                x = torch.stack([transform(im, self.size, d) for im, d in zip(decode_on_gpu(x, gpu), u)])
            yield x.to(self.device, non_blocking=True), idx


def is_stream(x) -> bool:
    """Whether a dataset's images `x` stream (`ImageStream`) instead of sitting in a tensor."""
    return isinstance(x, ImageStream)
