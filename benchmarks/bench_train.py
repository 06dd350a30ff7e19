"""How fast is the training loop? Ratios against two references, measured in one process.

    .venv/bin/python benchmarks/bench_train.py [--epochs 20] [--repeats 3] [--threads 1]

Two like-for-like comparisons, same model, optimiser, batch size and thread count:

* ours (augmented) against a plain `torch.utils.data.DataLoader` with per-sample torchvision
  transforms doing the same pad-and-crop (the usual tutorial pipeline): goal >= 3x;
* ours (no augmentation, the paper's SmallCNN recipe) against a bare loop over pre-loaded float
  tensors (the floor: nothing but the steps): goal >= 0.9x. Both run with torch's default
  kernels (the IMPL setting: no deterministic flag, which costs ~10 % on its own here).

Each variant runs `--repeats` times, interleaved, after a warm-up; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2

from nnrandomness.data import load_dataset
from nnrandomness.models import build_model
from nnrandomness.train import ReplicaSpec, cross_entropy, make_optimizer, train_replica


def make_model(ds, lr):
    model = build_model("smallcnn", ds.num_classes, ds.in_channels, generator=torch.Generator().manual_seed(0))
    return model, make_optimizer(ReplicaSpec(lr=lr), model)  # the same (fused) Adam as ours


def step(model, opt, x, y):
    loss = cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_ours(ds, epochs, batch, lr, augment):
    # threads=None: keep the count main() pinned; IMPL: the same kernels as the references.
    spec = ReplicaSpec(epochs=epochs, batch_size=batch, lr=lr, augment=augment, threads=None, setting="IMPL")
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


def run_bare(ds, epochs, batch, lr):
    x, y = ds.x_train.float() / 255.0, ds.y_train
    model, opt = make_model(ds, lr)
    model.train()
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            step(model, opt, x[idx], y[idx])
    return len(y) * epochs / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds = load_dataset("digits")
    variants = {
        "ours, augmented": run_ours_augmented,
        "dataloader": run_dataloader,
        "ours, plain": run_ours_plain,
        "bare": run_bare,
    }
    for fn in variants.values():  # warm-up: allocator, oneDNN primitive caches
        fn(ds, 1, args.batch_size, 2e-3)
    speeds = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so drift hits every variant alike
        for name, fn in variants.items():
            speeds[name].append(fn(ds, args.epochs, args.batch_size, 2e-3))
    med = {name: statistics.median(v) for name, v in speeds.items()}
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


if __name__ == "__main__":
    main()
