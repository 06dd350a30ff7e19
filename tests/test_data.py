"""Tests for nnrandomness.data: embedded digits, the real-format loaders (on tiny files written
in each real on-disk format), the missing-data errors and the on-device augmentation."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nnrandomness import data
from nnrandomness.data import augment, check_dataset, load_dataset

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REAL = ("cifar10", "cifar100", "celeba", "imagenet", "imagenet_stream")


# ----------------------------------------------------------------------------- fake real files
def cifar_image(i: int) -> np.ndarray:
    """Image i as (3, 32, 32): every plane distinct and position-dependent."""
    pos = np.arange(32 * 32).reshape(32, 32)
    return np.stack([(i * 7 + c * 85 + pos) % 256 for c in range(3)]).astype(np.uint8)


def cifar_rows(images) -> np.ndarray:
    """The CIFAR row layout: 1024 R, then 1024 G, then 1024 B values, each plane row-major."""
    return np.stack([img.reshape(3072) for img in images])


def dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # as the originals


def write_cifar10(root):
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True)
    train = [cifar_image(i) for i in range(10)]
    train[0] = np.stack([np.full((32, 32), v, np.uint8) for v in (200, 100, 50)])  # R, G, B
    y_train = [i % 10 for i in range(10)]
    for b in range(5):
        dump(
            where / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": y_train[2 * b : 2 * b + 2],
                b"data": cifar_rows(train[2 * b : 2 * b + 2]),
                b"filenames": [b"a.png", b"b.png"],
            },
        )
    test = [cifar_image(100 + i) for i in range(3)]
    y_test = [9, 0, 4]
    dump(
        where / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": y_test,
            b"data": cifar_rows(test),
            b"filenames": [b"t"] * 3,
        },
    )
    dump(where / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
    return np.stack(train), np.array(y_train), np.stack(test), np.array(y_test)


def write_cifar100(root):
    where = root / "cifar-100-python"
    where.mkdir(parents=True)
    train, test = [cifar_image(i) for i in range(4)], [cifar_image(50 + i) for i in range(2)]
    labels = {"train": ([0, 99, 5, 42], [0, 19, 3, 7]), "test": ([1, 98], [2, 18])}
    for split, images in (("train", train), ("test", test)):
        fine, coarse = labels[split]
        dump(
            where / split,
            {
                b"filenames": [b"x"] * len(images),
                b"batch_label": split.encode(),
                b"fine_labels": fine,
                b"coarse_labels": coarse,
                b"data": cifar_rows(images),
            },
        )
    dump(
        where / "meta",
        {
            b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
        },
    )
    return np.stack(train), labels, np.stack(test)


# CelebA: file, partition, Blond_Hair, Male, solid colour
CELEBA_ROWS = [
    ("000001.jpg", 0, 1, 0, (250, 10, 10)),
    ("000002.jpg", 0, 0, 1, (10, 250, 10)),
    ("000003.jpg", 1, 1, 1, (10, 10, 250)),
    ("000004.jpg", 2, 1, 1, (200, 200, 10)),
    ("000005.jpg", 0, 1, 1, (10, 200, 200)),
    ("000006.jpg", 2, 0, 0, (128, 128, 128)),
]


def write_celeba(root):
    where = root / "celeba"
    (where / "img_align_celeba").mkdir(parents=True)
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    lines = [str(len(CELEBA_ROWS)), " ".join(CELEBA_ATTRIBUTES) + " "]  # trailing space as in the original
    for filename, _part, b, m, colour in CELEBA_ROWS:
        values = [-1] * len(CELEBA_ATTRIBUTES)
        values[blond], values[male] = 2 * b - 1, 2 * m - 1
        lines.append(filename + " " + " ".join(f"{v:2d}" for v in values))
        Image.new("RGB", (8, 8), colour).save(where / "img_align_celeba" / filename, quality=95)
    (where / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (where / "list_eval_partition.txt").write_text("".join(f"{r[0]} {r[1]}\n" for r in CELEBA_ROWS))
    return where


def imagenet_image(seed: int, w: int = 10, h: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_imagenet(root):
    """Two wnids, two PNGs (10x6, exact pixels) per class and split; plus a .JPEG and a stray file."""
    where = root / "imagenet"
    arrays = {}
    for s, split in enumerate(("train", "val")):
        for k, wnid in enumerate(("n01443537", "n01440764")):  # written unsorted on purpose
            folder = where / split / wnid
            folder.mkdir(parents=True)
            for j in range(2):
                arr = imagenet_image(100 * s + 10 * k + j)
                Image.fromarray(arr).save(folder / f"{wnid}_{j}.png")
                arrays[split, wnid, j] = arr
            (folder / "notes.txt").write_text("not an image")
    return where, arrays


# ----------------------------------------------------------------------------- digits
def test_digits_sizes_dtype_and_fixed_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert len(a.y_train) + len(a.y_test) == 1797
    assert (len(a.y_train), len(a.y_test)) == (1438, 359)
    assert a.x_train.shape == (1438, 1, 8, 8) and a.x_train.dtype == torch.uint8
    assert a.y_train.dtype == torch.int64
    assert int(a.x_train.min()) == 0 and int(a.x_train.max()) == 255
    assert a.num_classes == 10 and a.in_channels == 1 and a.image_size == 8
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_digits_groups_attribute_correlated_with_rare_subgroup():
    d = load_dataset("digits_groups")
    assert d.group_name == "inverted" and d.g_train.dtype == torch.int64
    even = d.y_train % 2 == 0
    assert d.g_train[even].float().mean() > 0.8 and d.g_train[~even].float().mean() < 0.2
    counts = torch.zeros(10, 2)
    counts.index_put_((d.y_train, d.g_train), torch.ones(len(d.y_train)), accumulate=True)
    assert counts.min() / len(d.y_train) <= 0.05
    # inverted images are 255 - digit
    plain = load_dataset("digits")
    g = d.g_train.bool()
    assert torch.equal(d.x_train[g], 255 - plain.x_train[g]) and torch.equal(d.x_train[~g], plain.x_train[~g])


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_layout_labels_classes(tmp_path):
    x_train, y_train, x_test, y_test = write_cifar10(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.x_train.dtype == torch.uint8 and d.y_train.dtype == torch.int64
    assert torch.equal(d.x_train, torch.from_numpy(x_train)) and torch.equal(d.x_test, torch.from_numpy(x_test))
    # the R, G, B planes of image 0 decode to 200, 100, 50
    assert [int(d.x_train[0, c].unique()) for c in range(3)] == [200, 100, 50]
    # a position-dependent plane: row-major order within the plane
    assert int(d.x_train[1, 0, 0, 1]) == (7 + 1) % 256 and int(d.x_train[1, 2, 1, 0]) == (7 + 170 + 32) % 256
    assert d.y_train.tolist() == y_train.tolist() and d.y_test.tolist() == y_test.tolist()
    assert d.classes == CIFAR10_NAMES and d.num_classes == 10
    assert (d.normalization, d.augment_pad, d.augment_flip) == ("unit", 4, True)
    assert d.g_train is None and "test_batch" in d.info["split"]
    assert load_dataset("cifar10", tmp_path, normalization="standardize").normalization == "standardize"
    with pytest.raises(ValueError, match="'unit', 'standardize'"):
        load_dataset("cifar10", tmp_path, normalization="imagenet")


def test_cifar100_fine_and_coarse(tmp_path):
    x_train, labels, x_test = write_cifar100(tmp_path)
    fine = load_dataset("cifar100", tmp_path)
    assert torch.equal(fine.x_train, torch.from_numpy(x_train)) and torch.equal(fine.x_test, torch.from_numpy(x_test))
    assert fine.y_train.tolist() == labels["train"][0] and fine.y_test.tolist() == labels["test"][0]
    assert fine.num_classes == 100 and fine.classes[99] == "fine99"
    coarse = load_dataset("cifar100", tmp_path, label="coarse")
    assert coarse.y_train.tolist() == labels["train"][1] and coarse.y_test.tolist() == labels["test"][1]
    assert coarse.num_classes == 20 and coarse.classes[19] == "coarse19"
    with pytest.raises(ValueError, match="'fine', 'coarse'"):
        load_dataset("cifar100", tmp_path, label="superclass")


# ----------------------------------------------------------------------------- CelebA
def test_celeba_labels_groups_and_pixels(tmp_path):
    where = write_celeba(tmp_path)
    d = load_dataset("celeba", tmp_path, image_size=8)
    train = [r for r in CELEBA_ROWS if r[1] == 0]
    test = [r for r in CELEBA_ROWS if r[1] == 2]
    assert d.x_train.shape == (3, 3, 8, 8) and d.x_test.shape == (2, 3, 8, 8) and d.x_train.dtype == torch.uint8
    assert d.y_train.tolist() == [r[2] for r in train] and d.y_test.tolist() == [r[2] for r in test]
    assert d.g_train.tolist() == [r[3] for r in train] and d.g_test.tolist() == [r[3] for r in test]
    assert d.y_train.dtype == torch.int64 and d.g_train.dtype == torch.int64
    assert d.classes == ["not_Blond_Hair", "Blond_Hair"] and d.group_name == "Male"
    assert (d.augment_pad, d.augment_flip) == (0, False)
    assert d.info["attributes"] == CELEBA_ATTRIBUTES and "unused" in d.info["split"]
    # exactly what PIL decodes, channels first, and close to the colour that was saved
    for i, row in enumerate(train):
        with Image.open(where / "img_align_celeba" / row[0]) as im:
            expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(d.x_train[i].numpy(), expected)
        assert np.abs(d.x_train[i].numpy().astype(int) - np.array(row[4]).reshape(3, 1, 1)).max() <= 8


def test_celeba_options(tmp_path):
    write_celeba(tmp_path)
    d = load_dataset("celeba", tmp_path, target="Male", group="Blond_Hair", image_size=4, max_examples=2)
    assert d.x_train.shape == (2, 3, 4, 4) and d.x_test.shape == (2, 3, 4, 4)
    assert d.y_train.tolist() == [0, 1] and d.g_train.tolist() == [1, 0]
    assert d.classes == ["not_Male", "Male"] and d.group_name == "Blond_Hair"
    assert load_dataset("celeba", tmp_path, image_size=5).x_train.shape == (3, 3, 5, 5)  # default 64 is a resize
    for option in ("target", "group"):
        with pytest.raises(ValueError, match=f"{option}='Blonde'.*Blond_Hair.*Wearing_Necktie, Young"):
            load_dataset("celeba", tmp_path, **{option: "Blonde"})
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("celeba", tmp_path, image_size=0)


# ----------------------------------------------------------------------------- ImageNet
def test_imagenet_folders_resize_and_crop(tmp_path):
    where, arrays = write_imagenet(tmp_path)
    wnids = ["n01440764", "n01443537"]
    d = load_dataset("imagenet", tmp_path, image_size=6)
    assert d.classes == wnids
    assert d.x_train.shape == (4, 3, 6, 6) and d.x_test.shape == (4, 3, 6, 6) and d.x_train.dtype == torch.uint8
    assert d.y_train.tolist() == [0, 0, 1, 1] and d.y_test.tolist() == [0, 0, 1, 1]
    # the shorter side is already 6: no resampling, just the centre crop of columns 2..7
    for split, x in (("train", d.x_train), ("val", d.x_test)):
        for i, (wnid, j) in enumerate((w, j) for w in wnids for j in range(2)):
            assert np.array_equal(x[i].numpy(), arrays[split, wnid, j][:, 2:8].transpose(2, 0, 1))
    assert (d.augment_pad, d.augment_flip) == (0, True) and d.g_train is None
    small = load_dataset("imagenet", tmp_path, image_size=3, max_per_class=1)
    assert small.x_train.shape == (2, 3, 3, 3) and small.y_train.tolist() == [0, 1]
    assert load_dataset("imagenet", tmp_path, image_size=16).augment_pad == 2
    # a JPEG counts as well (extension matched case-insensitively)
    Image.fromarray(imagenet_image(7)).save(where / "train" / wnids[0] / "extra.JPEG")
    assert load_dataset("imagenet", tmp_path, image_size=6).y_train.tolist() == [0, 0, 0, 1, 1]


def test_imagenet_val_must_match_train(tmp_path):
    where, _ = write_imagenet(tmp_path)
    shutil.rmtree(where / "val" / "n01440764")
    with pytest.raises(ValueError, match=r"same class folders.*only in train: \['n01440764'\]"):
        load_dataset("imagenet", tmp_path)


# ----------------------------------------------------------------------------- missing data, root, options
EXPECTED = {
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
    "celeba": ("celeba", ["img_align_celeba/", "list_attr_celeba.txt", "list_eval_partition.txt"]),
    "imagenet": ("imagenet", ["train/", "val/"]),
    "imagenet_stream": ("imagenet", ["train/", "val/"]),
}
WRITERS = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "celeba": write_celeba,
    "imagenet": write_imagenet,
    "imagenet_stream": write_imagenet,
}


@pytest.mark.parametrize("name", REAL)
def test_missing_dataset_names_path_and_files(name, tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    subdir, files = EXPECTED[name]
    for call in (lambda: check_dataset(name, tmp_path), lambda: load_dataset(name, tmp_path)):
        with pytest.raises(FileNotFoundError) as err:
            call()
        message = str(err.value)
        assert str(tmp_path / subdir) in message and "Nothing is downloaded" in message
        for f in files:
            assert f in message
    with pytest.raises(FileNotFoundError, match=data.DATA_ROOT_ENV):
        check_dataset(name)


def test_missing_single_file_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing there: data_batch_3\."):
        check_dataset("cifar10", tmp_path)


def test_celeba_missing_image_is_named(tmp_path):
    where = write_celeba(tmp_path)
    (where / "img_align_celeba" / "000005.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img_align_celeba.*000005.jpg"):
        load_dataset("celeba", tmp_path)


@pytest.mark.parametrize("name", REAL)
def test_check_and_root_from_env(name, tmp_path, monkeypatch):
    WRITERS[name](tmp_path)
    check_dataset(name, tmp_path)
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path))
    check_dataset(name)
    options = {} if name.startswith("cifar") else {"image_size": 4}
    d = load_dataset(name, **options)
    assert d.name == name and d.x_train.dtype == torch.uint8 and len(d.y_train) > 0
    assert str(tmp_path) in " ".join(d.info["source"])


@pytest.mark.parametrize("name", REAL)
def test_unknown_option_lists_valid_ones(name, tmp_path):
    with pytest.raises(TypeError, match="'colour'.*valid options: .*normalization"):
        load_dataset(name, tmp_path, colour=True)


def test_check_dataset_embedded_and_unknown():
    for name in data.EMBEDDED:
        check_dataset(name)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*cifar10"):
        check_dataset("mnist")
    assert set(data.CHECKERS) == set(REAL) and set(data.LOADERS) == set(data.EMBEDDED) | set(REAL)


# ----------------------------------------------------------------------------- augmentation
def batch(n: int = 16, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)


def test_augment_identity_without_pad_and_flip():
    x = batch()
    assert torch.equal(augment(x, 0, False, torch.Generator().manual_seed(0)), x)


def test_augment_deterministic_given_generator():
    x = batch()
    a = augment(x, 2, True, torch.Generator().manual_seed(3))
    b = augment(x, 2, True, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert not torch.equal(a, augment(x, 2, True, torch.Generator().manual_seed(4)))


def test_augment_flip_only():
    x = batch()
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(len(x), generator=torch.Generator().set_state(g.get_state())) < 0.5
    out = augment(x, 0, True, g)
    assert mask.any() and (~mask).any()
    for i in range(len(x)):
        assert torch.equal(out[i], x[i].flip(-1) if mask[i] else x[i])


def test_augment_matches_naive_crop_and_flip():
    x, pad = batch(), 2
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(11)
    replay = torch.Generator().set_state(g.get_state())  # the same draws, in the same order
    shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=replay)
    flips = torch.rand(n, generator=replay) < 0.5
    out = augment(x, pad, True, g)
    assert flips.any() and (~flips).any() and (shifts != pad).any()  # crops and flips both visible
    for i in range(n):
        padded = torch.nn.functional.pad(x[i], (pad, pad, pad, pad))
        crop = padded[:, shifts[0, i] : shifts[0, i] + h, shifts[1, i] : shifts[1, i] + w]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)


# ----------------------------------------------------------------------------- MNIST-1D
# Small sets (100 examples) for speed, through the loader's own size options; the cache in tmp_path.
SMALL = {"train_pool": 100, "test_size": 100, "extra_size": 100, "extra_sets": 2}


def test_mnist1d_small_shapes_split_and_extra_sets(tmp_path):
    d = load_dataset("mnist1d", tmp_path, **SMALL)
    assert d.x_train.shape == (80, 1, 40) and d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_test.shape == (100, 1, 40) and d.in_channels == 1 and d.input_dims == 1 and d.image_size == 40
    assert d.normalization == "none" and d.g_train is None and d.num_classes == 10
    assert torch.equal(data.to_float(d.x_test, d.normalization), d.x_test)  # real-valued: used as they are
    # train: the package's canonical split (first 80 % of seed 42); test: another seed
    x, y = data.generate_mnist1d(data._mnist1d_args(data.MNIST1D_TRAIN_SEED, 100, 0.8))
    assert np.array_equal(d.x_train.numpy(), x[:80]) and np.array_equal(d.y_train.numpy(), y[:80])
    assert not np.array_equal(d.x_test.numpy()[:80], x[:80])
    assert sorted(np.bincount(d.y_test.numpy())) == [10] * 10  # the generator balances classes
    sets = list(d.extra_tests)
    assert [s for s, _, _ in sets] == list(data.MNIST1D_EXTRA_SEEDS[:2]) and len(d.extra_tests) == 2
    assert all(xe.shape == (100, 1, 40) and ye.shape == (100,) for _, xe, ye in sets)
    assert not torch.equal(sets[0][1], sets[1][1]) and not torch.equal(sets[0][1], d.x_test)
    with pytest.raises(TypeError, match="'colour'.*valid options: train_pool"):
        load_dataset("mnist1d", tmp_path, colour=True)


def test_mnist1d_generation_leaves_global_rngs_alone():
    import random

    random.seed(123)
    np.random.seed(456)
    expected = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(456)
    data.generate_mnist1d(data._mnist1d_args(7, 20, 0.0))  # make_dataset seeds both global generators
    assert (random.random(), np.random.random()) == expected


def test_mnist1d_cache_hit_miss_and_damage(tmp_path, monkeypatch):
    x, y = data.mnist1d_arrays(3, 50, 0.0, tmp_path)  # miss: generated and written
    (path,) = tmp_path.glob("mnist1d-*.npz")
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically, no temporary left
    data.mnist1d_arrays(4, 50, 0.0, tmp_path)  # other arguments, another file
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2

    def fail(args):
        raise AssertionError("a cache hit must not generate")

    with monkeypatch.context() as m:
        m.setattr(data, "generate_mnist1d", fail)
        hx, hy = data.mnist1d_arrays(3, 50, 0.0, tmp_path)  # hit
    assert np.array_equal(hx, x) and np.array_equal(hy, y)

    # arrays that fail their stored hash: regenerated with a warning
    with np.load(path) as f:
        fields = dict(f)
    fields["x"] = fields["x"] + 1
    np.savez(path, **fields)
    with pytest.warns(RuntimeWarning, match=r"fail their SHA-256\); regenerating"):
        rx, _ = data.mnist1d_arrays(3, 50, 0.0, tmp_path)
    assert np.array_equal(rx, x)
    # a truncated file: regenerated with a warning, then a hit again
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="does not load"):
        rx, _ = data.mnist1d_arrays(3, 50, 0.0, tmp_path)
    assert np.array_equal(rx, x)
    with monkeypatch.context() as m:
        m.setattr(data, "generate_mnist1d", fail)
        data.mnist1d_arrays(3, 50, 0.0, tmp_path)


def test_mnist1d_cache_dir_follows_the_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_ROOT_ENV, raising=False)
    assert data.mnist1d_cache_dir(tmp_path) == tmp_path / "cache"
    assert data.mnist1d_cache_dir().parts[-2:] == ("data", "cache")  # the checkout's, git-ignored
    monkeypatch.setenv(data.DATA_ROOT_ENV, str(tmp_path / "env"))
    assert data.mnist1d_cache_dir() == tmp_path / "env" / "cache"


def test_mnist1d_groups_small(tmp_path):
    plain = load_dataset("mnist1d", tmp_path, **SMALL)
    d = load_dataset("mnist1d_groups", tmp_path, **SMALL)
    assert d.group_name == "shifted" and d.g_train.dtype == torch.int64
    for x, x0, g in ((d.x_train, plain.x_train, d.g_train), (d.x_test, plain.x_test, d.g_test)):
        shifted = g.bool()
        assert torch.equal(x[shifted], x0[shifted] + 1.0) and torch.equal(x[~shifted], x0[~shifted])
    assert torch.equal(d.y_train, plain.y_train)
    even = d.y_train % 2 == 0
    assert d.g_train[even].float().mean() > 0.7 and d.g_train[~even].float().mean() < 0.3
    (seed, x, _y), (_, x0, _) = next(iter(d.extra_tests)), next(iter(plain.extra_tests))
    assert seed == data.MNIST1D_EXTRA_SEEDS[0]
    assert ((x == x0 + 1.0).all(dim=(1, 2)) | (x == x0).all(dim=(1, 2))).all() and not torch.equal(x, x0)
    again = load_dataset("mnist1d_groups", tmp_path, **SMALL)  # the attribute is part of the data: fixed
    assert torch.equal(again.g_train, d.g_train) and torch.equal(again.g_test, d.g_test)


def test_mnist1d_groups_real_sizes():
    """The real sets (generated once into data/cache, ~8 s cold): every (label, shifted) test subgroup holds
    at least 300 examples; in training the rare ones hold about 10 % of their class."""
    d = load_dataset("mnist1d_groups")
    assert len(d.y_train) == 4000 and len(d.y_test) == data.MNIST1D_TEST_SIZE
    test = np.bincount(d.y_test.numpy() * 2 + d.g_test.numpy(), minlength=20)
    assert test.min() >= 300, test
    train = np.bincount(d.y_train.numpy() * 2 + d.g_train.numpy(), minlength=20).reshape(10, 2)
    rare = np.where(np.arange(10) % 2 == 0, train[:, 0], train[:, 1]) / train.sum(1)
    assert (rare > 0.05).all() and (rare < 0.15).all(), rare
    assert len(d.extra_tests) == 20 and d.extra_tests.seeds == data.MNIST1D_EXTRA_SEEDS


def signals(n: int = 16, length: int = 10) -> torch.Tensor:
    return torch.randn(n, 2, length, generator=torch.Generator().manual_seed(5))


def test_augment_signal_matches_naive_shift_and_reversal():
    x, pad = signals(), 2
    n, _, length = x.shape
    g = torch.Generator().manual_seed(11)
    replay = torch.Generator().set_state(g.get_state())
    shifts = torch.randint(0, 2 * pad + 1, (n,), generator=replay)
    flips = torch.rand(n, generator=replay) < 0.5
    out = augment(x, pad, True, g)  # a (N, C, L) batch goes to augment_signal
    assert flips.any() and (~flips).any() and (shifts != pad).any()
    for i in range(n):
        crop = torch.nn.functional.pad(x[i], (pad, pad))[:, shifts[i] : shifts[i] + length]
        assert torch.equal(out[i], crop.flip(-1) if flips[i] else crop)
    assert torch.equal(augment(x, 0, False, g), x)
    again = augment(x, pad, True, torch.Generator().manual_seed(11))
    assert torch.equal(again, out)


# ----------------------------------------------------------------------------- CelebA's 40 attributes
def test_celeba_all_attributes_is_a_multilabel_dataset(tmp_path):
    write_celeba(tmp_path)
    d = load_dataset("celeba", tmp_path, target="all", image_size=4)
    assert d.multilabel and not load_dataset("celeba", tmp_path, image_size=4).multilabel
    assert d.classes == CELEBA_ATTRIBUTES and d.num_classes == 40 and d.group_name == "Male"
    assert d.y_train.shape == (3, 40) and d.y_test.shape == (2, 40) and d.y_train.dtype == torch.int64
    # In the file's attribute order: the written rows set Blond_Hair and Male, every other attribute is -1.
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    for y, rows in (
        (d.y_train, [r for r in CELEBA_ROWS if r[1] == 0]),
        (d.y_test, [r for r in CELEBA_ROWS if r[1] == 2]),
    ):
        expected = torch.zeros(len(rows), 40, dtype=torch.int64)
        expected[:, blond] = torch.tensor([r[2] for r in rows])
        expected[:, male] = torch.tensor([r[3] for r in rows])
        assert torch.equal(y, expected)
    assert d.g_train.tolist() == [r[3] for r in CELEBA_ROWS if r[1] == 0]  # a group that is also a target
    assert d.info["target"] == "all"


def test_celeba_all_is_a_target_only(tmp_path):
    write_celeba(tmp_path)
    with pytest.raises(ValueError, match=r"group='all' is not an attribute.*Wearing_Necktie, Young$"):
        load_dataset("celeba", tmp_path, group="all")
    with pytest.raises(ValueError, match=r"target='Al'.*Young or 'all' \(every attribute"):
        load_dataset("celeba", tmp_path, target="Al")
