"""How fast is the training loop? Ratios against two references, measured in one process.

    .venv/bin/python benchmarks/bench_train.py [--epochs 20] [--repeats 3] [--threads 1] [--suite all]

Like-for-like comparisons, same model, optimiser, batch size and thread count (suite "digits"):

* ours (augmented) against a plain `torch.utils.data.DataLoader` with per-sample torchvision
  transforms doing the same pad-and-crop (the usual tutorial pipeline): goal >= 3x;
* ours (no augmentation, the paper's SmallCNN recipe) against a bare loop over pre-loaded float
  tensors (the floor: nothing but the steps): goal >= 0.9x. Both run with torch's default
  kernels (the IMPL setting: no deterministic flag, which costs ~10 % on its own here).

Suite "mnist1d": the MNIST-1D models (cnn1d, cnn1d_bn, mlp1d; 4,000 training signals, lr 0.01)
the same way, ours (no augmentation) against the bare loop: goal >= 0.9x, and the training seconds of
one replica of `--epochs` epochs.

Each variant runs `--repeats` times, interleaved, after a warm-up; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2

from nnrandomness.data import load_dataset, to_float
from nnrandomness.models import SIGNAL_MODELS, build_model
from nnrandomness.train import ReplicaSpec, cross_entropy, make_optimizer, train_replica


def make_model(ds, lr, name="smallcnn"):
    model = build_model(name, ds.num_classes, ds.in_channels, generator=torch.Generator().manual_seed(0))
    return model, make_optimizer(ReplicaSpec(lr=lr), model)  # the same (fused) Adam as ours


def step(model, opt, x, y):
    loss = cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_ours(ds, epochs, batch, lr, augment, name="smallcnn"):
    # threads=None: keep the count main() pinned; IMPL: the same kernels as the references. MNIST-1D trains as
    # plans/default.yaml does, without a test evaluation after every epoch: its 10,000 test signals are outside
    # the clock but evict the training data from the caches, which cost the MLP's ~1 ms steps ~5 % (measured).
    spec = ReplicaSpec(
        dataset=ds.name,
        model=name,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        augment=augment,
        threads=None,
        setting="IMPL",
        keep_probabilities=False,
        test_every_epoch=ds.name != "mnist1d",
    )
    return len(ds.y_train) * epochs / train_replica(spec, ds).timings["train_seconds"]


def run_ours_augmented(ds, epochs, batch, lr):
    return run_ours(ds, epochs, batch, lr, augment=True)


def run_ours_plain(ds, epochs, batch, lr):
    return run_ours(ds, epochs, batch, lr, augment=False)


class UInt8Images(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def run_dataloader(ds, epochs, batch, lr):
    transform = v2.Compose(
        [v2.RandomCrop(ds.image_size, padding=ds.augment_pad), v2.ToDtype(torch.float32, scale=True)]
    )
    loader = torch.utils.data.DataLoader(
        UInt8Images(ds.x_train, ds.y_train, transform),
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    model, opt = make_model(ds, lr)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            step(model, opt, x, y)
    return len(ds.y_train) * epochs / (time.perf_counter() - t0)


def run_bare(ds, epochs, batch, lr, name="smallcnn"):
    x, y = to_float(ds.x_train, ds.normalization), ds.y_train  # converted once, before the clock
    model, opt = make_model(ds, lr, name)
    model.train()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            step(model, opt, x[idx], y[idx])
    return len(y) * epochs / (time.perf_counter() - t0)


def medians(variants: dict, ds, args, lr: float) -> dict[str, float]:
    """Median examples/s of each variant `fn(ds, epochs, batch, lr)`, over interleaved repeats after a warm-up."""
    for fn in variants.values():  # warm-up: allocator, oneDNN primitive caches
        fn(ds, 1, args.batch_size, lr)
    speeds = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, fn in variants.items():
            speeds[name].append(fn(ds, args.epochs, args.batch_size, lr))
    return {name: statistics.median(v) for name, v in speeds.items()}


def bench_digits(args):
    ds = load_dataset("digits")
    variants = {
        "ours, augmented": run_ours_augmented,
        "dataloader": run_dataloader,
        "ours, plain": run_ours_plain,
        "bare": run_bare,
    }
    med = medians(variants, ds, args, 2e-3)
    print(
        f"SmallCNN on digits, {args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s), "
        f"median of {args.repeats}"
    )
    for name, v in med.items():
        print(f"  {name:<16} {v:10,.0f} examples/s")
    seconds = len(ds.y_train) * args.epochs / med["ours, plain"]
    print(f"  one default replica ({args.epochs} epochs of {len(ds.y_train)} examples): {seconds:.2f} s of training")
    print(f"  ours, augmented / dataloader = {med['ours, augmented'] / med['dataloader']:.2f}x  (goal >= 3)")
    print(f"  ours, plain / bare           = {med['ours, plain'] / med['bare']:.2f}x  (goal >= 0.9)")


def bench_mnist1d(args):
    ds = load_dataset("mnist1d", extra_sets=0)  # the extra test sets are evaluated after the clock stops
    print(
        f"MNIST-1D models, {args.epochs} epochs, batch {args.batch_size}, {args.threads} thread(s), "
        f"median of {args.repeats}"
    )
    for name in SIGNAL_MODELS:
        variants = {
            "ours": lambda d, e, b, lr, name=name: run_ours(d, e, b, lr, augment=False, name=name),
            "bare": lambda d, e, b, lr, name=name: run_bare(d, e, b, lr, name),
        }
        med = medians(variants, ds, args, 0.01)
        seconds = len(ds.y_train) * args.epochs / med["ours"]
        print(
            f"  {name:<9} ours {med['ours']:9,.0f} /s, bare {med['bare']:9,.0f} /s, "
            f"ours / bare = {med['ours'] / med['bare']:.2f}x (goal >= 0.9); one replica: {seconds:.2f} s of training"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--suite", choices=("digits", "mnist1d", "all"), default="all")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.suite in ("digits", "all"):
        bench_digits(args)
    if args.suite in ("mnist1d", "all"):
        bench_mnist1d(args)


if __name__ == "__main__":
    main()
