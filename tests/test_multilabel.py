"""CelebA's 40-attribute head (issue 10, item 3): the multi-label loss and predictions, the store's bit
masks, FPR/FNR pooled over attributes, and a tiny real-format CelebA trained end to end through
`cell.run_cell`. Expectations are computed by hand in the comments or from the stored files by a path
independent of the code under test (sigmoid probabilities instead of the stored bits)."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_data import CELEBA_ATTRIBUTES

from nnrandomness import analysis, metrics, store
from nnrandomness import stats as st
from nnrandomness.cell import run_cell
from nnrandomness.data import load_dataset
from nnrandomness.plan import load_plan
from nnrandomness.train import ReplicaSpec, binary_cross_entropy, criterion, predict, validate_spec

ROOT = Path(__file__).resolve().parents[1]
MALE = CELEBA_ATTRIBUTES.index("Male")


# ----------------------------------------------------------------------------- the loss and predictions
def test_binary_cross_entropy_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 30.0]])
    labels = torch.tensor([[1, 0], [0, 1]])
    # softplus(z) - y z per cell: log 2; log(1 + e^2) = 2.126928; log(1 + e^-1) = 0.313262; ~0 (softplus(30) = 30)
    cells = [math.log(2), math.log1p(math.e**2), math.log1p(math.e**-1), 0.0]
    assert binary_cross_entropy(logits, labels).item() == pytest.approx(sum(cells) / 4, rel=1e-6)
    # Keras' smoothing 0.2: targets 0.9 / 0.1, so the cells lose y z: 0, 0.1 * 2, 0.1 * -1, then 30 - 0.9 * 30
    smoothed = [math.log(2), math.log1p(math.e**2) - 0.2, math.log1p(math.e**-1) + 0.1, 30 - 27.0]
    assert binary_cross_entropy(logits, labels, 0.2).item() == pytest.approx(sum(smoothed) / 4, rel=1e-6)
    # torch's fused op agrees (the written-out form is a choice of kernels, not of values)
    reference = F.binary_cross_entropy_with_logits(logits, labels.float() * 0.8 + 0.1)
    assert binary_cross_entropy(logits, labels, 0.2).item() == pytest.approx(reference.item(), rel=1e-6)


def test_criterion_and_predictions_follow_the_labels_shape():
    logits = torch.tensor([[0.5, -0.25], [-2.0, 0.0]])
    assert criterion(logits, torch.tensor([[1, 0], [0, 1]])) == binary_cross_entropy(
        logits, torch.tensor([[1, 0], [0, 1]])
    )
    assert criterion(logits, torch.tensor([0, 1])) == F.cross_entropy(logits, torch.tensor([0, 1]))
    assert predict(logits, multilabel=True).tolist() == [[1, 0], [0, 0]]  # logit 0 is sigmoid 1/2: not predicted
    assert predict(logits, multilabel=False).tolist() == [0, 1]


# ----------------------------------------------------------------------------- the store's bit masks
def test_pack_and_unpack_bits_by_hand():
    bits = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]])
    assert store.pack_bits(bits).tolist() == [5, 0, 6]  # 1 + 4, 0, 2 + 4
    assert store.unpack_bits([5, 0, 6], 3).tolist() == bits.astype(bool).tolist()
    forty = np.zeros((1, 40), dtype=np.int64)
    forty[0, 39] = 1
    assert store.pack_bits(forty).tolist() == [2**39] and store.unpack_bits([2**39], 40)[0, 39]
    with pytest.raises(ValueError, match=r"0 \.\. 2\*\*3 - 1"):
        store.unpack_bits([8], 3)
    with pytest.raises(ValueError, match="0/1"):
        store.pack_bits([[2, 0]])
    with pytest.raises(ValueError, match="k must be an integer in 1 .. 63, got 0"):
        store.unpack_bits([1], 0)


# ----------------------------------------------------------------------------- metrics
def test_pooled_rates_by_hand():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # 4 positives, 8 negatives
    groups = np.array([0, 0, 1, 1])
    preds = np.array(
        [
            [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]],  # perfect
            [[1, 1, 0], [0, 0, 0], [0, 1, 1], [1, 0, 0]],  # FP at (0,1), (2,2), (3,0); FN at (1,1), (2,0)
        ]
    )
    r = metrics.pooled_rates(preds, labels, groups)
    assert r["subset"].tolist() == ["all", "group=0", "group=1"] * 2
    one = r[r["replica"] == 1].set_index("subset")
    assert (one.loc["all", "fp"], one.loc["all", "fn"]) == (3, 2)
    assert one.loc["all", "fpr"] == 3 / 8 and one.loc["all", "fnr"] == 2 / 4
    # group 0 (examples 0, 1): 2 positives, 4 negatives, FP (0,1), FN (1,1); group 1: 2 positives, 4 negatives
    assert (one.loc["group=0", "fpr"], one.loc["group=0", "fnr"]) == (1 / 4, 1 / 2)
    assert (one.loc["group=1", "fpr"], one.loc["group=1", "fnr"]) == (2 / 4, 1 / 2)
    assert (r[r["replica"] == 0][["fp", "fn"]] == 0).all().all()
    assert r[r["subset"] == "all"]["n"].tolist() == [4, 4]
    # No positives in a subset: its FNR is undefined, not 0.
    assert math.isnan(metrics.pooled_rates(preds[:, 3:], labels[3:])["fnr"][0])
    with pytest.raises(ValueError, match=r"labels has shape \(4, 2\)"):
        metrics.pooled_rates(preds, labels[:, :2])


def test_attribute_churn_and_class_churn_on_bit_masks():
    # 3 replicas, 2 examples, 2 attributes. Attribute 0: example 0 has m = 1 of 3 ones (2 differing pairs),
    # example 1 m = 3 (0 pairs): 2 / (2 * 3) = 1/3. Attribute 1: all zeros, churn 0.
    preds = np.array([[[1, 0], [1, 0]], [[0, 0], [1, 0]], [[0, 0], [1, 0]]])
    assert metrics.attribute_churn(preds).tolist() == [1 / 3, 0.0]
    # The store's churn reads bit masks as classes: any attribute differing is a disagreement. Masks up to
    # 2**39 (40 attributes) must not become 2**39 class columns: 2 of the 3 pairs differ on example 0.
    masks = np.array([[2**39 + 1, 5], [2**39, 5], [2**39, 5]])
    assert metrics.churn(masks) == 2 / (2 * 3)
    assert metrics.per_example_instability(masks, [2**39, 5])["n_distinct"].tolist() == [2, 1]


# ----------------------------------------------------------------------------- a tiny real-format CelebA
# file, partition; the 40 attributes are drawn per image from a fixed generator
PARTITIONS = [0] * 12 + [1] * 2 + [2] * 6


def write_random_celeba(root: Path) -> np.ndarray:
    """CelebA's on-disk format, 20 aligned 8x8 JPEGs with random attributes; returns the (20, 40) 0/1 matrix."""
    rng = np.random.default_rng(7)
    attributes = (rng.random((len(PARTITIONS), len(CELEBA_ATTRIBUTES))) < 0.4).astype(np.int64)
    where = root / "celeba"
    (where / "img_align_celeba").mkdir(parents=True)
    lines = [str(len(PARTITIONS)), " ".join(CELEBA_ATTRIBUTES) + " "]
    for i, row in enumerate(attributes):
        name = f"{i + 1:06d}.jpg"
        lines.append(name + " " + " ".join(f"{2 * v - 1:2d}" for v in row))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        Image.new("RGB", (8, 8), colour).save(where / "img_align_celeba" / name, quality=95)
    (where / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (where / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(PARTITIONS)))
    return attributes


def test_target_is_validated_where_it_enters(tmp_path):
    with pytest.raises(ValueError, match="dataset 'digits' has no target option; datasets with one: celeba"):
        validate_spec(ReplicaSpec(dataset="digits", target="all"))
    with pytest.raises(ValueError, match="target must be a string, got 5"):
        validate_spec(ReplicaSpec(dataset="celeba", target=5), check_data=False)
    write_random_celeba(tmp_path)
    with pytest.raises(ValueError, match=r"target='everything'.*Wearing_Necktie, Young or 'all'"):
        load_dataset("celeba", tmp_path, **ReplicaSpec(dataset="celeba", target="everything").dataset_options())
    assert "target" not in ReplicaSpec().to_dict()  # stored manifests and checkpoints stay valid
    assert ReplicaSpec(dataset="celeba", target="all").to_dict()["target"] == "all"


def test_the_paper_plan_trains_the_40_attribute_head(monkeypatch):
    monkeypatch.chdir(ROOT)
    jobs = load_plan(ROOT / "plans" / "paper.yaml", check_data=False).jobs
    assert {j.parameters["target"] for j in jobs if j.dataset == "celeba"} == {"all"}
    assert {j.parameters.get("target", "") for j in jobs if j.dataset != "celeba"} == {""}


def test_a_multilabel_cell_end_to_end(tmp_path):
    attributes = write_random_celeba(tmp_path)
    base = ReplicaSpec(
        dataset="celeba",
        model="smallcnn",
        setting="ALGO",
        target="all",
        image_size=8,
        epochs=2,
        batch_size=4,
        lr=1e-2,
        threads=1,
        snapshot_epochs=(1,),
        data_root=str(tmp_path),
    )
    ds = load_dataset("celeba", tmp_path, **base.dataset_options())
    assert ds.multilabel and ds.num_classes == 40 and ds.y_test.shape == (6, 40)
    root = tmp_path / "runs"
    run_cell(base, 2, root, "cpu-1t", progress=False, dataset=ds, process_per_replica="never")
    runs = store.load_runs(root, probabilities=True, snapshots=True)
    assert len(runs.replicas) == 2 and not runs.problems
    test = attributes[np.array(PARTITIONS) == 2]
    for rid, p in runs.predictions.groupby("replica"):
        assert len(p) == 6  # one row per test example
        assert p["label"].tolist() == store.pack_bits(test).tolist()
        assert p["group"].tolist() == test[:, MALE].tolist()
        bits = store.unpack_bits(p["prediction"], 40)
        probs = p[[f"prob_{k}" for k in range(40)]].to_numpy()
        assert np.array_equal(bits, probs > 0.5)  # logit > 0 is sigmoid > 1/2
        assert store.unpack_bits(p["prediction_epoch_1"], 40).shape == (6, 40)
        history = runs.history[runs.history["replica"] == rid]
        # accuracy over (example, attribute) cells
        assert history["test_accuracy"].iloc[-1] == pytest.approx((bits == test.astype(bool)).mean(), abs=1e-6)
        manifest = store.read_manifest(Path(runs.replicas["path"][rid]))
        assert manifest["labels"] == {"encoding": "bitmask", "names": CELEBA_ATTRIBUTES}

    table = analysis.multilabel_rates(runs).set_index("subset")
    assert table.index.tolist() == ["all", "group=0", "group=1"]
    assert (table["replicas"] == 2).all() and (table["attributes"] == 40).all()
    # FPR pooled over attributes from the stored probabilities, per replica, then mean and SD over the two
    for subset, mask in (("all", np.ones(6, bool)), ("group=1", test[:, MALE] == 1)):
        fpr = []
        for _, p in runs.predictions.groupby("replica"):
            pred = p[[f"prob_{k}" for k in range(40)]].to_numpy()[mask] > 0.5
            y = test[mask].astype(bool)
            fpr.append((pred & ~y).sum() / (~y).sum())
        assert table.loc[subset, "fpr_mean"] == pytest.approx(np.mean(fpr))
        assert table.loc[subset, "fpr_sd"] == pytest.approx(np.std(fpr, ddof=1))
    # The class-index view of the same store still works: churn over masks counts any attribute differing.
    cell = next(runs.iter_cells())
    differ = (cell.preds[0] != cell.preds[1]).mean()
    assert (
        metrics.churn(cell.preds) == differ
        and metrics.attribute_churn(np.stack([store.unpack_bits(p, 40) for p in cell.preds])).max() <= differ
    )
    assert st.churn_matrix(cell.preds)[0, 1] == differ  # bit masks re-coded, not one-hot over 2^40 values
    # The per-class views leave a multi-label cell out (its bit masks are no classes), a cell of class indices
    # is left out of the multi-label table.
    assert runs.replicas["multilabel"].all() and analysis.per_class(runs).empty
    assert analysis.per_class_spread(runs).empty
    assert analysis.multilabel_rates(store.Runs(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())).empty


def test_a_spec_and_a_dataset_of_another_target_are_refused(tmp_path):
    write_random_celeba(tmp_path)
    spec = ReplicaSpec(dataset="celeba", model="smallcnn", target="all", image_size=8, threads=1, epochs=1)
    one = load_dataset("celeba", tmp_path, image_size=8)  # Blond_Hair only
    with pytest.raises(ValueError, match=r"target 'Blond_Hair'.*target='all'"):
        run_cell(
            dataclasses.replace(spec, data_root=str(tmp_path)), 1, tmp_path / "r", "cpu-1t", progress=False, dataset=one
        )
