"""The paper's recipes as parameters (issue 10, item 3): optimiser, weight decay, warm-up, label
smoothing, initialisation, input options, the paper's settings and plans/paper.yaml.

Expectations are computed by hand in the comments; the defaults are checked to take today's code path."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_data import write_celeba, write_cifar10
from torch import nn

from nnrandomness import data, models, noise, params, store
from nnrandomness.data import load_dataset
from nnrandomness.plan import load_plan
from nnrandomness.train import (
    LATER_FIELDS,
    KerasSGD,
    Replica,
    ReplicaSpec,
    cross_entropy,
    lr_at,
    make_optimizer,
    train_replica,
    train_step,
    validate_spec,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ReplicaSpec(dataset="digits", model="smallcnn", epochs=2, lr=2e-3, threads=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(optimizer="adamw"), r"unknown optimizer 'adamw'; valid optimizers: adam, sgd"),
        (dict(optimizer="sgd", momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
        (dict(momentum=0.9), r"momentum=0.9: momentum and nesterov apply to optimizer 'sgd' only, .* is 'adam'"),
        (dict(optimizer="sgd", nesterov=True), r"nesterov=True needs a momentum > 0"),
        (dict(weight_decay=-1e-4), r"weight_decay must be a number >= 0, got -0.0001"),
        (dict(warmup_epochs=3), r"warmup_epochs \(3\) must be at most epochs \(2\)"),
        (dict(warmup_epochs=-1), r"warmup_epochs must be an integer >= 0, got -1"),
        (dict(label_smoothing=1.0), r"label_smoothing must be in \[0, 1\), got 1.0"),
        (dict(init="kaiming"), r"unknown init 'kaiming'; valid inits: glorot_uniform, he_normal, torch"),
        (dict(normalization="imagenet"), r"unknown normalization 'imagenet'; valid normalizations: '', 'unit'"),
        (
            dict(normalization="standardize"),
            r"dataset .digits. has no normalization option; datasets with one: cifar10",
        ),
        (dict(image_size=128), r"dataset 'digits' has no image_size option; datasets with one: celeba, imagenet"),
        (dict(image_size=-1), r"image_size must be an integer >= 0, got -1"),
        (dict(image_size=100_000), r"image_size must be at most 4096 \(params.MAX_IMAGE_SIZE\)"),
    ],
)
def test_every_recipe_option_is_refused_with_the_value_and_the_choices(changes, message):
    with pytest.raises(ValueError, match=message):
        validate_spec(dataclasses.replace(TINY, **changes))


def test_a_plan_key_is_judged_by_the_same_rules():
    assert params.value_error("optimizer", "SGD") == "unknown optimizer 'SGD'; valid optimizers: adam, sgd"
    assert params.value_error("nesterov", "yes") == "must be true/false, got 'yes'"


# ----------------------------------------------------------------------------- learning rate
def test_warm_up_is_a_ramp_per_step_from_zero():
    # lr 0.1, warm-up 2 epochs of 4 steps: step s (counted over epochs) gets 0.1 * s / 8, then 0.1; x0.1 at epoch 3.
    spec = ReplicaSpec(lr=0.1, warmup_epochs=2, epochs=4, lr_milestones=(3,))
    got = [lr_at(spec, e, s, 4) for e in range(4) for s in range(4)]
    want = [0.1 * s / 8 for s in range(8)] + [0.1] * 4 + [0.1 * 0.1] * 4
    assert got == pytest.approx(want, rel=1e-12, abs=0)
    assert got[0] == 0.0  # the paper's first step (TF's step 0) has lr 0
    assert lr_at(spec, 1) == 0.1 * 1 / 2  # per epoch (the history's value): the epoch's first step


def test_without_warm_up_the_schedule_is_todays():
    spec = ReplicaSpec()  # 4e-4 for epochs 0-49, 4e-5 for 50-99, 4e-6 after, whatever the step
    got = [lr_at(spec, e, s, 7) for e, s in ((0, 0), (49, 6), (50, 3), (100, 0))]
    assert got == [4e-4, 4e-4, 4e-4 * 0.1, 4e-4 * 0.1**2]  # the expression of the stored runs, bit for bit


def tiny_images(n=10, side=2, seed=0):
    """A Dataset of n random 1-channel side x side uint8 images, 2 classes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 2
    return data.Dataset("tiny", x, y, x[:2], y[:2], ["a", "b"])


def hand_replica(spec, model):
    seeds = noise.replica_seeds(spec.base_seed, spec.replica, spec.noise)
    return Replica(spec, seeds, noise.make_generators(seeds), model, make_optimizer(spec, model), None)


def linear_model(weight, bias):
    model = nn.Sequential(nn.Flatten(), nn.Linear(len(weight[0]), len(weight)))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(weight))
        model[1].bias.copy_(torch.tensor(bias))
    return model


def test_train_step_warms_up_per_step_and_the_count_survives_a_checkpoint():
    # 10 examples, batch 4: 3 steps per epoch; warm-up 2 epochs: lr 0.3 * s / 6 for s = 0..5, then 0.3.
    ds = tiny_images()
    spec = ReplicaSpec(optimizer="sgd", lr=0.3, warmup_epochs=2, epochs=3, batch_size=4, lr_milestones=())
    replica = hand_replica(spec, linear_model([[0.01] * 4, [0.02] * 4], [0.0, 0.0]))
    before = replica.model[1].weight.detach().clone()
    lrs = []
    for s in range(7):
        train_step(replica, ds, torch.arange(4 * (s % 3), min(4 * (s % 3) + 4, 10)))
        lrs.append(replica.opt.param_groups[0]["lr"])
        if s == 0:  # plain SGD at lr 0 moves nothing
            assert torch.equal(replica.model[1].weight, before)
    assert lrs == pytest.approx([0.3 * s / 6 for s in range(6)] + [0.3], rel=1e-12, abs=0)
    # The count lives in the optimiser's state_dict, which checkpoints save and resume.
    resumed = hand_replica(spec, replica.model)
    resumed.opt.load_state_dict(replica.opt.state_dict())
    assert resumed.opt.param_groups[0]["warmup_step"] == 7


# ----------------------------------------------------------------------------- optimisers
def test_keras_sgd_keeps_the_old_learning_rate_in_its_velocity():
    # w = 1, gradient 1 each step, momentum 0.9; lr 0.1 then 0.2.
    # Keras: v = -0.1, w = 0.9; v = 0.9 * -0.1 - 0.2 = -0.29, w = 0.61.
    # Nesterov: w = 1 + 0.9 * -0.1 - 0.1 = 0.81; w = 0.81 + 0.9 * -0.29 - 0.2 = 0.349.
    # (torch.optim.SGD would give 0.9, then 0.9 - 0.2 * 1.9 = 0.52.)
    for nesterov, want in ((False, [0.9, 0.61]), (True, [0.81, 0.349])):
        w = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = KerasSGD([w], lr=0.1, momentum=0.9, nesterov=nesterov)
        got = []
        for lr in (0.1, 0.2):
            opt.param_groups[0]["lr"] = lr
            w.grad = torch.ones_like(w)
            opt.step()
            got.append(float(w.detach()))
        assert got == pytest.approx(want, abs=1e-15)


def test_make_optimizer_builds_the_recipes_optimiser():
    model = models.build_model("smallcnn", 10, 1, generator=torch.Generator().manual_seed(0))
    adam = make_optimizer(TINY, model)  # today's: fused Adam with Keras' epsilon
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["eps"] == 1e-7 and adam.defaults["fused"]
    sgd = make_optimizer(dataclasses.replace(TINY, optimizer="sgd", momentum=0.9, nesterov=True), model)
    assert isinstance(sgd, KerasSGD) and sgd.defaults == {"lr": 2e-3, "momentum": 0.9, "nesterov": True}
    with pytest.raises(ValueError, match=r"initialised with 'glorot_uniform' but the spec asks for init='he_normal'"):
        make_optimizer(dataclasses.replace(TINY, init="he_normal"), model)


# ----------------------------------------------------------------------------- loss
def test_label_smoothing_on_a_two_class_hand_case():
    # logits (0, ln 3): p = (1/4, 3/4); label 1, smoothing 0.2: target (0.1, 0.9).
    logits, labels = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1])
    want = -(0.1 * math.log(1 / 4) + 0.9 * math.log(3 / 4))
    assert float(cross_entropy(logits, labels, 0.2)) == pytest.approx(want, rel=1e-6)
    assert float(cross_entropy(logits, labels)) == pytest.approx(-math.log(3 / 4), rel=1e-6)
    many = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    assert float(cross_entropy(many, y, 0.1)) == pytest.approx(float(F.cross_entropy(many, y, label_smoothing=0.1)))


def test_weight_decay_is_keras_l2_on_kernels_only():
    # Kernel (1; 3), bias (5, 6): Keras l2(0.01) adds 0.01 * (1 + 9) = 0.1 to the loss and a gradient
    # 2 * 0.01 * w on the kernel only. With plain SGD at lr 1, the decayed step differs by -0.02 * w.
    ds = tiny_images(n=4, side=1)
    kernel, steps = torch.tensor([[1.0], [3.0]]), {}
    for wd in (0.0, 0.01):
        spec = ReplicaSpec(optimizer="sgd", lr=1.0, weight_decay=wd, batch_size=4)
        replica = hand_replica(spec, linear_model(kernel.tolist(), [5.0, 6.0]))
        step = train_step(replica, ds, torch.arange(4))
        layer = replica.model[1]
        steps[wd] = (float(step.loss), layer.weight.detach().clone(), layer.bias.detach().clone())
    (loss0, w0, b0), (loss1, w1, b1) = steps[0.0], steps[0.01]
    assert loss1 - loss0 == pytest.approx(0.1, rel=1e-5)
    assert torch.allclose(w1 - w0, -0.02 * kernel, rtol=0, atol=1e-6)
    assert torch.equal(b1, b0)


# ----------------------------------------------------------------------------- initialisation
def test_glorot_uniform_kernels_lie_within_the_keras_bound_and_biases_are_zero():
    model = models.build_model("smallcnn", 10, 3, generator=torch.Generator().manual_seed(0)).requires_grad_(False)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    # Conv 3 -> 16, 3x3: fan_in 27, fan_out 144, bound sqrt(6 / 171) = 0.18731...
    bound, largest = math.sqrt(6 / (27 + 144)), float(conv.weight.abs().max())
    assert 0.95 * bound < largest <= bound
    assert all(float(m.bias.abs().max()) == 0 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert model.init_scheme == "glorot_uniform"


def test_he_normal_is_kerass_truncated_normal_with_the_papers_head():
    model = models.build_model("resnet18", 10, 3, generator=torch.Generator().manual_seed(0), init="he_normal")
    model.requires_grad_(False)  # the values are read as numbers
    w = model.layers[0].conv1.weight  # 64 -> 64, 3x3: fan_in 576, std sqrt(2 / 576) = 0.05893
    std = math.sqrt(2 / 576)
    assert float(w.abs().max()) <= 2 * std / models.TRUNCATED_NORMAL_STD
    assert float(w.std()) == pytest.approx(std, rel=0.03)  # the kept draws have the asked std (36,864 draws)
    head = model.head[-1]
    assert float(head.weight.std()) == pytest.approx(0.01, rel=0.1) and float(head.bias.abs().max()) == 0


def test_torch_init_is_pytorchs_default_drawn_from_the_init_stream():
    a = models.build_model("mlp1d", 10, 1, generator=torch.Generator().manual_seed(3), init="torch")
    b = models.build_model("mlp1d", 10, 1, generator=torch.Generator().manual_seed(3), init="torch")
    c = models.build_model("mlp1d", 10, 1, generator=torch.Generator().manual_seed(4), init="torch")
    assert store.weights_hash(a.state_dict()) == store.weights_hash(b.state_dict())
    assert store.weights_hash(a.state_dict()) != store.weights_hash(c.state_dict())
    first = a.net[1].requires_grad_(False)  # Linear 40 -> 100: weights and biases in (-1/sqrt(40), 1/sqrt(40))
    assert float(first.weight.abs().max()) <= 1 / math.sqrt(40) and float(first.bias.abs().max()) > 0
    with pytest.raises(ValueError, match=r"unknown init 'xavier'; valid inits: glorot_uniform, he_normal, torch"):
        models.build_model("mlp1d", 10, 1, generator=torch.Generator(), init="xavier")


# ----------------------------------------------------------------------------- inputs
def test_per_image_standardisation_of_a_tiny_image_by_hand():
    # (0, 2; 4, 6): mean 3, population variance (9 + 1 + 1 + 9) / 4 = 5. A constant image has std 0:
    # TF divides by 1 / sqrt(4 pixels) instead, giving zeros.
    x = torch.tensor([[[[0, 2], [4, 6]]], [[[7, 7], [7, 7]]]], dtype=torch.uint8)
    got = data.to_float(x, "standardize")
    s5 = math.sqrt(5)
    assert torch.allclose(got[0, 0], torch.tensor([[-3 / s5, -1 / s5], [1 / s5, 3 / s5]]), atol=1e-6)
    assert torch.equal(got[1], torch.zeros(1, 2, 2))


def test_standardisation_comes_before_the_pad_and_crop():
    # Padded after standardising, the border is 0 (each image's mean) and the other values are the
    # whole image's standardised ones; the crop is never re-standardised.
    x = torch.tensor([[[[0, 2], [4, 6]]]] * 32, dtype=torch.uint8)
    whole = set(data.to_float(x[:1], "standardize").flatten().tolist())
    out = data.training_inputs(x, "standardize", 1, False, torch.Generator().manual_seed(0))
    assert set(out.flatten().tolist()) <= whole | {0.0} and (out == 0).any()
    # x/255 keeps today's order (augment the uint8 batch, then convert): the same bits.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    today = data.to_float(data.augment(x, 1, True, g1), "unit")
    assert torch.equal(data.training_inputs(x, "unit", 1, True, g2), today)


def test_input_options_reach_the_loaders_of_real_files(tmp_path):
    write_cifar10(tmp_path)
    write_celeba(tmp_path)
    spec = ReplicaSpec(dataset="cifar10", normalization="standardize", data_root=str(tmp_path))
    assert spec.dataset_options() == {"normalization": "standardize"}
    assert ReplicaSpec().dataset_options() == {}
    cifar = load_dataset("cifar10", tmp_path, **spec.dataset_options())
    assert cifar.normalization == "standardize"
    celeba = load_dataset("celeba", tmp_path, **data.input_options("celeba", "", 128))
    assert celeba.x_train.shape[-2:] == (128, 128)  # the aligned 8x8 test faces resized
    # A dataset loaded without the spec's options is refused at the first step, not trained silently.
    model = models.build_model("smallcnn", 10, 3, generator=torch.Generator().manual_seed(0))
    replica = hand_replica(spec, model)
    train_step(replica, cifar, torch.arange(4))
    with pytest.raises(ValueError, match=r"holds 'unit' inputs.*spec.dataset_options\(\)"):
        train_step(replica, load_dataset("cifar10", tmp_path), torch.arange(4))


# ----------------------------------------------------------------------------- settings
def test_the_papers_algo_varies_initialisation_and_order_only():
    for name, deterministic in (("ALGO-PAPER", True), ("ALGO+IMPL-PAPER", False)):
        s = noise.get_setting(name)
        assert s.varied == {"init", "order"} and s.deterministic is deterministic
        a, b = noise.replica_seeds(0, 0, s), noise.replica_seeds(0, 1, s)
        assert [k for k in a if a[k] != b[k]] == ["init", "order"]  # augmentation and dropout seeds fixed


# ----------------------------------------------------------------------------- the store and the plan
def test_new_fields_are_stored_only_when_they_leave_their_default():
    assert not set(LATER_FIELDS) & set(ReplicaSpec().to_dict())  # the dict stored before the fields existed
    sgd = dataclasses.replace(TINY, optimizer="sgd", momentum=0.9)
    assert {"optimizer": "sgd", "momentum": 0.9}.items() <= sgd.to_dict().items()
    assert ReplicaSpec(**sgd.to_dict()).to_dict() == sgd.to_dict()


def test_a_committed_manifest_without_the_new_fields_still_loads():
    manifest = next(iter(sorted((ROOT / "data" / "runs").glob("*/*/*/*/replica-*/manifest.json"))), None)
    assert manifest is not None, "the committed store holds no manifest"
    stored = store.read_manifest(manifest.parent)["spec"]
    assert not set(LATER_FIELDS) & set(stored)
    spec = ReplicaSpec(**stored)
    assert (spec.optimizer, spec.init, spec.warmup_epochs, spec.normalization) == ("adam", "glorot_uniform", 0, "")
    assert spec.to_dict() == stored  # the runner's store check finds the same recipe


def test_the_paper_plan_uses_each_recipe(monkeypatch):
    monkeypatch.chdir(ROOT)
    jobs = load_plan(ROOT / "plans" / "paper.yaml", check_data=False).jobs
    by = {(j.dataset, j.model, j.setting): j for j in jobs}
    settings = {"ALGO+IMPL-PAPER", "ALGO-PAPER", "IMPL", "CONTROL"}
    assert {j.setting for j in jobs} == settings
    assert len(by) == len(jobs) == 4 * (2 * 2 + 2 + 1 + 1)  # smallcnn and smallcnn_bn on two CIFARs
    assert {j.replicas for j in jobs if j.setting == "CONTROL"} == {2}
    assert by["cifar100", "smallcnn_bn", "ALGO-PAPER"].replicas == 10
    resnet = by["cifar10", "resnet18", "IMPL"].parameters
    assert resnet["normalization"] == "standardize" and resnet["augment"]
    assert by["celeba", "resnet18", "CONTROL"].parameters["image_size"] == 128
    r50 = by["imagenet_stream", "resnet50", "ALGO-PAPER"]
    want = dict(optimizer="sgd", momentum=0.9, lr=0.1, batch_size=256, warmup_epochs=5, label_smoothing=0.1)
    want.update(
        weight_decay=1e-4, init="he_normal", lr_milestones=[30, 60, 80], epochs=90, image_size=224, augment=True
    )
    assert {k: r50.parameters[k] for k in want} == want and r50.replicas == 5


# ----------------------------------------------------------------------------- a whole replica
def test_a_paper_like_recipe_trains_deterministically(digits):
    spec = dataclasses.replace(
        TINY, optimizer="sgd", momentum=0.9, nesterov=True, lr=0.05, warmup_epochs=1, label_smoothing=0.1
    )
    spec = dataclasses.replace(spec, weight_decay=1e-4, setting="ALGO-PAPER", replica=1, augment=True)
    a, b = train_replica(spec, digits), train_replica(spec, digits)
    assert store.weights_hash(a.weights) == store.weights_hash(b.weights)
    assert a.history["lr"].tolist() == [0.0, 0.05]  # each epoch's first step: 0 in the warm-up, then 0.05
    assert a.history["train_loss"].iloc[1] < a.history["train_loss"].iloc[0]  # it learns
    assert store.weights_hash(a.weights) != store.weights_hash(train_replica(TINY, digits).weights)
