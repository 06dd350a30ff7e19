"""The streaming ImageNet loader (imagenet_stream) on tiny real JPEG folders written here.

Images of 10-40 px are streamed at 16 px (the option that is 224 for the paper), so that workers,
crops, training and resumption run in seconds on the CPU.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nnrandomness import data, store, stream
from nnrandomness.cell import run_cell
from nnrandomness.train import KernelRecorder, ReplicaSpec, train_replica

WNIDS = ("n01440764", "n01443537", "n01484850")
SIZES = ((10, 14), (40, 23), (17, 31), (25, 25), (12, 36))  # (width, height): portrait, landscape, square


def write_folder(root, per_class: int = 3, val_per_class: int = 2):
    """<root>/imagenet/{train,val}/<wnid>/*.JPEG: noise images of the SIZES in turn, a smooth gradient per
    class (so that a model can learn something) plus noise."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for k, wnid in enumerate(WNIDS):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for j in range(count):
                w, h = SIZES[j % len(SIZES)]
                base = np.zeros((h, w, 3), np.int64) + np.linspace(0, 200, w, dtype=np.int64)[None, :, None]
                base[..., k] = 255 - base[..., k]
                pixels = np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if split == "val" and k == 2 and j == 1:  # ImageNet holds a few greyscale JPEGs: made RGB
                    image = image.convert("L")
                image.save(folder / f"{wnid}_{j}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("stream"))


def load(root, **options):
    return data.load_dataset("imagenet_stream", root, **{"image_size": 16, "workers": 0, **options})


def one_pass(ds, seed: int | None, batch_size: int = 4):
    """Every training batch of one epoch in a fixed order (the aug draws from `seed`; None: no draws)."""
    g = None if seed is None else torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(1))
    return [(x.clone(), y.clone()) for x, y in ds.x_train.epoch(order, batch_size, g)], order, g


# ----------------------------------------------------------------------------- the crop, by hand
def test_inception_crop_follows_torchvision_rule_by_hand():
    # 10 high, 20 wide (area 200). Try 1: the whole area at ratio 1 is 14x14, taller than 10: refused.
    # Try 2: 8 % of it (16) at ratio 1 is 4x4; top = floor(0.5 * 7) = 3, left = min(floor(0.999 * 17), 16) = 16.
    u = [1.0, 0.5, 0.0, 0.0, 0.0, 0.5, 0.5, 0.999] + [0.0] * 32
    assert stream.inception_crop(10, 20, u) == (3, 16, 4, 4)
    # Ten refused tries: the fallback is the centre crop at the largest ratio allowed (2 > 4/3):
    # height 10, width round(10 * 4/3) = 13, left (20 - 13) // 2 = 3.
    assert stream.inception_crop(10, 20, [1.0, 0.5, 0.0, 0.0] * 10) == (0, 3, 10, 13)
    assert stream.inception_crop(20, 10, [1.0, 0.5, 0.0, 0.0] * 10) == (3, 0, 13, 10)  # ratio 1/2 < 3/4
    # A ratio draw of 1 is 4/3; an area draw of 0.5 is 0.54 of 240 = 129.6: width round(sqrt(172.8)) = 13,
    # height round(sqrt(97.2)) = 10; left = floor(0.99 * 8) = 7.
    assert stream.inception_crop(12, 20, [0.5, 1.0, 0.0, 0.99]) == (0, 7, 10, 13)


def test_mean_std_normalization_by_hand():
    x = torch.tensor(stream.MEAN_RGB).round().to(torch.uint8).view(1, 3, 1, 1)
    out = data.to_float(x, "mean_std")
    expected = (torch.tensor(stream.MEAN_RGB).round() - torch.tensor(stream.MEAN_RGB)) / torch.tensor(stream.STD_RGB)
    assert torch.allclose(out.view(3), expected) and out.abs().max() < 0.01
    assert data.to_float(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), "mean_std")[0, 0, 0, 0] == pytest.approx(
        (1 - 0.485) / 0.229
    )


# ----------------------------------------------------------------------------- the stream
def test_a_stream_is_a_split_that_decodes_nothing_until_a_pass(root):
    ds = load(root)
    assert ds.name == "imagenet_stream" and ds.classes == list(WNIDS) and ds.normalization == "mean_std"
    assert stream.is_stream(ds.x_train) and ds.x_train.shape == (9, 3, 16, 16) and len(ds.x_test) == 6
    assert (ds.in_channels, ds.image_size, ds.input_dims) == (3, 16, 2)
    assert ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.info["stream"]["workers"] == 0 and "scale (0.08, 1.0)" in ds.info["stream"]["train_crop"]
    moved = ds.to("cpu")  # moves the labels, names the stream's device: the stream is the same object
    assert moved.x_train is ds.x_train
    # The evaluation view: shorter side to round(16 * 256 / 224) = 18, centre crop 16, as torchvision does it.
    from torchvision.transforms.v2 import functional as TF

    first = stream.decode(str(root / "imagenet/val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"))
    batch = next(ds.x_test.batches(4))
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.uint8
    assert torch.equal(batch[0], TF.center_crop(TF.resize(first, [18], antialias=True), [16, 16]))
    grey = torch.cat(list(ds.x_test.batches(4)))[5]  # the greyscale JPEG: three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_same_bits_with_zero_and_two_workers(root):
    inline, threads = load(root), load(root, workers=2, prefetch=1)
    (a, order, ga), (b, _, gb) = one_pass(inline, 7), one_pass(threads, 7)
    assert len(a) == 3 and [x.shape for x, _ in a] == [(4, 3, 16, 16), (4, 3, 16, 16), (1, 3, 16, 16)]
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert torch.cat([y for _, y in a]).tolist() == inline.y_train[order].tolist()
    assert torch.equal(ga.get_state(), gb.get_state())
    evaluated = [torch.cat(list(s.x_test.batches(4))) for s in (inline, threads)]
    assert torch.equal(*evaluated)
    threads.x_train.close()
    threads.x_test.close()


def test_crops_and_flips_come_from_the_aug_seed_in_the_main_process(root):
    ds = load(root)
    (a, _, g), (again, _, _), (other, _, _) = one_pass(ds, 7), one_pass(ds, 7), one_pass(ds, 8)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, again))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, other))
    # The generator moved by exactly DRAWS float64 uniforms per image, one batch after another.
    expected = torch.Generator().manual_seed(7)
    for n in (4, 4, 1):
        torch.rand((n, stream.DRAWS), generator=expected, dtype=torch.float64)
    assert torch.equal(g.get_state(), expected.get_state())
    # Without a generator (a spec that does not augment) a training batch is the evaluation view.
    plain, order, _ = one_pass(ds, None)
    views = torch.cat([ds.x_train.batches(9).__next__()])
    assert torch.equal(torch.cat([x for x, _ in plain]), views[order])


def test_images_in_flight_do_not_grow_with_the_number_of_files(tmp_path):
    """What the stream holds decoded at once, for 21 files as for 201: the batch just yielded and the
    workers x prefetch batches the DataLoader keeps asked for (it asks for the next one as it yields)."""
    held = {}
    for per_class in (7, 67):  # 21 and 201 training images
        folder = write_folder(tmp_path / str(per_class), per_class=per_class, val_per_class=1)
        ds = load(folder, workers=2, prefetch=2)
        batches = sum(1 for _ in ds.x_train.epoch(torch.arange(len(ds.y_train)), 4, None))
        assert batches == math.ceil(3 * per_class / 4)
        held[per_class] = ds.x_train.max_in_flight * 4  # images decoded and not yet consumed, at most
        ds.x_train.close()
    assert held[7] == held[67] == (2 * 2 + 1) * 4


# ----------------------------------------------------------------------------- training
class StopAfter(KernelRecorder):
    """Interrupts training just before step `step` (as a kill would, mid-epoch), recording nothing."""

    def __init__(self, step: int):
        super().__init__("cpu")
        self.stop = step

    def before_step(self, step: int) -> None:
        if step == self.stop:
            raise KeyboardInterrupt


def test_a_replica_trains_from_the_stream_and_resumes_to_the_same_bits(root, tmp_path):
    spec = ReplicaSpec(
        dataset="imagenet_stream",
        model="smallcnn",
        setting="CONTROL",
        epochs=3,
        batch_size=4,
        lr=0.01,
        image_size=16,
        augment=True,
        threads=1,
        data_root=str(root),
        eval_batch_size=4,
    )
    ds = load(root, workers=2, prefetch=1)
    rows = run_cell(spec, 2, tmp_path / "a", "cpu-1t", progress=False, dataset=ds)  # CONTROL: checked identical
    assert len(rows) == 2 and rows["weights_hash"].nunique() == 1
    whole = train_replica(spec, ds)
    assert whole.history["train_loss"].notna().all() and whole.predictions.shape == (6,)
    # Killed in epoch 2 (step 4 of 3 steps per epoch), then run_cell resumes from the epoch-1 checkpoint.
    path = store.replica_dir(tmp_path / "b", "cpu-1t", spec.dataset, spec.model, spec.setting, 0)
    with pytest.raises(KeyboardInterrupt):
        train_replica(spec, ds, checkpoint_dir=path, kernels=StopAfter(4))
    row = run_cell(spec, 1, tmp_path / "b", "cpu-1t", progress=False, dataset=ds).iloc[0]
    assert json.loads((path / store.MANIFEST).read_text())["resumed_from_epoch"] == 1
    assert row["weights_hash"] == rows["weights_hash"].iloc[0] == store.weights_hash(whole.weights)
    ds.x_train.close()
    ds.x_test.close()


def test_an_undecodable_file_is_named(tmp_path):
    folder = write_folder(tmp_path, per_class=1, val_per_class=1)
    bad = folder / "imagenet" / "train" / WNIDS[1] / "zz_truncated.JPEG"
    bad.write_bytes((folder / "imagenet" / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG").read_bytes()[:50])
    ds = load(folder)
    with pytest.raises(ValueError, match=r"cannot decode the image file .*zz_truncated\.JPEG"):
        list(ds.x_train.epoch(torch.arange(4), 4, None))


# ----------------------------------------------------------------------------- bad options
@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(workers=-1), ValueError, r"workers must be an integer >= 0 \(0: decode in this process\), got -1"),
        (dict(workers="2"), ValueError, r"workers must be an integer >= 0.*got '2'"),
        (dict(prefetch=0), ValueError, r"prefetch must be an integer >= 1 \(batches per worker\), got 0"),
        (dict(decode_device="gpu"), ValueError, r"decode_device 'gpu' is not valid; valid values: 'cpu', 'cuda'"),
        (dict(normalization="imagenet"), ValueError, r"normalization='imagenet' is not valid.*'mean_std', 'unit'"),
        (dict(image_size=0), ValueError, r"imagenet_stream: image_size must be a positive integer, got 0"),
        (dict(crop="center"), TypeError, r"unknown option\(s\) 'crop'; valid options: image_size, .*decode_device"),
    ],
)
def test_bad_options_are_refused_before_any_work(options, error, message, tmp_path):
    with pytest.raises(error, match=message):  # tmp_path holds no ImageNet: the option is judged first
        load(tmp_path, **options)


def test_bad_worker_count_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(stream.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match=r"\$NNRANDOMNESS_STREAM_WORKERS must be an integer >= 0.*'many'"):
        data.load_dataset("imagenet_stream", tmp_path)
    monkeypatch.setenv(stream.WORKERS_ENV, "3")
    assert stream.default_workers() == 3


def test_gpu_decoding_without_cuda_is_refused(root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU host checks the refusal too
    with pytest.raises(ValueError, match=r"decode_device 'cuda' needs a CUDA device; this machine has none"):
        load(root, decode_device="cuda")


@pytest.mark.requires_gpu
def test_gpu_decoding_yields_the_same_shapes(root):
    ds = load(root, decode_device="cuda").to("cuda")
    batches, _, _ = one_pass(ds, 7)
    assert [x.shape for x, _ in batches] == [(4, 3, 16, 16), (4, 3, 16, 16), (1, 3, 16, 16)]
    assert all(x.device.type == "cuda" and x.dtype == torch.uint8 for x, _ in batches)
    assert next(ds.x_test.batches(6)).shape == (6, 3, 16, 16)
