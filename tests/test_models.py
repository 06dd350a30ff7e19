"""Tests for nnrandomness.models: architectures, registry, seeded init and SeededDropout.

Every registered model (torchvision zoo included) is built once, by `_model`, and kept for the
module: the big ones (VGG, ResNet-152, DenseNet-201) dominate the run time.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnrandomness.models import (
    BN_EPS,
    BN_MOMENTUM,
    CNN1D,
    MIN_IMAGE_SIZE,
    MODELS,
    SIGNAL_LENGTH,
    SIGNAL_MODELS,
    MediumCNN,
    PairMaxPool1d,
    ResNet18,
    SeededDropout,
    SmallCNN,
    adapt_in_channels,
    build_model,
    check_input_dims,
    check_input_size,
    count_parameters,
    glorot_init,
    set_dropout_generator,
)

NUM_CLASSES, IN_CHANNELS, SEED = 10, 3, 1234
TORCHVISION = [
    "vgg16",
    "vgg19",
    "resnet50",
    "resnet152",
    "densenet121",
    "densenet201",
    "inception_v3",
    "mobilenet_v2",
    "efficientnet_b0",
]
OWN = ["smallcnn", "smallcnn_bn", "resnet18", "mediumcnn_k1", "mediumcnn_k3", "mediumcnn_k5", "mediumcnn_k7"]
SIGNAL = ["cnn1d", "cnn1d_bn", "mlp1d"]  # MNIST-1D: signals (N, C, 40)
IMAGE_MODELS = [n for n in MODELS if n not in SIGNAL]
# cheap to build several times (< 0.3 s each); the others are built once, by the cache
CHEAP = OWN + SIGNAL + ["resnet50", "densenet121", "inception_v3", "mobilenet_v2", "efficientnet_b0"]
INIT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)

_CACHE: dict[str, nn.Module] = {}
_RNG_UNCHANGED: dict[str, bool] = {}


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(name: str) -> nn.Module:
    """build_model(name, 10 classes, 3 channels, seed SEED), built once per module.

    Also records whether the build left torch's global RNG state untouched.
    Callers must not modify the model's parameters or buffers (eval-mode forwards only).
    """
    if name not in _CACHE:
        before = torch.get_rng_state()
        _CACHE[name] = build_model(name, NUM_CLASSES, IN_CHANNELS, generator=_gen())
        _RNG_UNCHANGED[name] = torch.equal(before, torch.get_rng_state())
    return _CACHE[name]


@pytest.fixture(scope="module", autouse=True)
def _free_cache():
    yield
    _CACHE.clear()
    _RNG_UNCHANGED.clear()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _bitwise_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


# ----------------------------------------------------------------------------- architectures
def test_smallcnn_parameter_count():
    # conv 3->16: 3*3*3*16+16 = 448; conv 16->32: 3*3*16*32+32 = 4640; conv 32->32: 3*3*32*32+32 = 9248;
    # dense 32->32: 32*32+32 = 1056; dense 32->10: 32*10+10 = 330.  Total 448+4640+9248+1056+330 = 15,722.
    assert 448 + 4640 + 9248 + 1056 + 330 == 15_722
    assert count_parameters(SmallCNN(10, 3)) == 15_722
    assert count_parameters(_model("smallcnn")) == 15_722


def test_smallcnn_bn_parameter_count_and_keras_constants():
    model = _model("smallcnn_bn")
    # each BatchNorm adds gamma and beta per channel
    assert count_parameters(model) == 15_722 + 2 * (16 + 32 + 32)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 3
    for bn in bns:
        assert bn.momentum == pytest.approx(0.01) and bn.momentum == BN_MOMENTUM
        assert bn.eps == pytest.approx(1e-3) and bn.eps == BN_EPS


def test_resnet18_cifar10_parameter_count():
    # the usual CIFAR ResNet-18 (3x3 stem, no max-pool, 1x1 projection shortcuts)
    assert count_parameters(_model("resnet18")) == 11_173_962
    assert count_parameters(ResNet18(10, 3)) == 11_173_962


def test_resnet18_structure():
    model = _model("resnet18")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    stem = model.stem[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.bias) == (
        3,
        64,
        (3, 3),
        (1, 1),
        None,
    )
    blocks = list(model.layers)
    assert len(blocks) == 8
    assert [b.conv1.out_channels for b in blocks] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    shortcuts = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(shortcuts) == 3
    for b in shortcuts:
        conv, bn = b.shortcut
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 8 * 2 + 3
    assert all(bn.momentum == BN_MOMENTUM and bn.eps == BN_EPS for bn in bns)
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))


def test_resnet18_digits_and_dropout():
    model = build_model("resnet18", 10, 1, generator=_gen(), dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, SeededDropout)]
    assert len(drops) == 1 and drops[0].p == 0.3
    assert model.head[-2] is drops[0] and isinstance(model.head[-1], nn.Linear)  # just before the dense
    set_dropout_generator(model, _gen(7))
    model.train()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # 8 -> 4 -> 2 -> 1


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_mediumcnn_structure(k):
    model = _model(f"mediumcnn_k{k}")
    assert isinstance(model, MediumCNN)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 256, 512]
    assert all(c.kernel_size == (k, k) and c.padding == (k // 2, k // 2) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6
    assert sum(isinstance(m, nn.MaxPool2d) and m.ceil_mode for m in model.modules()) == 6


def test_mediumcnn_k3_forward_shape():
    model = MediumCNN(num_classes=100, in_channels=3, kernel_size=3)
    glorot_init(model, _gen())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 100)
    with pytest.raises(ValueError, match="kernel_size"):
        MediumCNN(10, 3, kernel_size=4)


# ----------------------------------------------------------------------------- MNIST-1D models
def test_signal_model_parameter_counts():
    # cnn1d: convs 1*16*5+16 + 2 * (16*16*5+16) = 2,688, head 16*5*10+10 = 810 (length 40 pooled to 5)
    assert count_parameters(build_model("cnn1d", 10, 1, generator=_gen())) == 3498
    assert count_parameters(build_model("cnn1d_bn", 10, 1, generator=_gen())) == 3498 + 3 * 2 * 16
    # mlp1d: 40*100+100 + 100*100+100 + 100*10+10
    assert count_parameters(build_model("mlp1d", 10, 1, generator=_gen())) == 15210


@pytest.mark.parametrize("name", SIGNAL)
def test_signal_models_forward_shapes_and_dropout(name):
    model = build_model(name, 10, 1, generator=_gen(), dropout=0.5)
    set_dropout_generator(model, _gen(7))
    x = torch.randn(4, 1, SIGNAL_LENGTH, generator=_gen(0))
    model.train()
    a, b = model(x), model(x)
    assert a.shape == (4, 10) and not torch.equal(a, b)  # dropout draws a fresh mask (so DROPOUT varies something)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert [m.p for m in model.modules() if isinstance(m, SeededDropout)] == [0.5]


def test_cnn1d_structure():
    bn = CNN1D(10, 1, batchnorm=True)
    assert [type(m).__name__ for m in bn.features][:4] == ["Conv1d", "BatchNorm1d", "ReLU", "PairMaxPool1d"]
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3 and all(m.eps == BN_EPS and m.momentum == BN_MOMENTUM for m in norms)
    convs = [m for m in CNN1D().modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(16, (5,), (2,))] * 3


def test_input_dims_refuse_the_wrong_kind_of_model():
    check_input_dims("cnn1d", 1)
    check_input_dims("smallcnn", 2)
    with pytest.raises(
        ValueError, match=r"'smallcnn' cannot take 1D signals.*valid models for them: cnn1d, cnn1d_bn, mlp1d"
    ):
        check_input_dims("smallcnn", 1)
    with pytest.raises(ValueError, match=r"'mlp1d' cannot take 2D images.*smallcnn"):
        check_input_dims("mlp1d", 2)
    check_input_size("cnn1d", SIGNAL_LENGTH, dims=1)
    with pytest.raises(ValueError, match="length 40, got 32"):
        check_input_size("cnn1d", 32, dims=1)
    with pytest.raises(ValueError, match="cannot take 2D images"):
        check_input_size("cnn1d", 32)


# ----------------------------------------------------------------------------- registry and sizes
def test_registry_names():
    assert set(OWN + TORCHVISION + SIGNAL) == set(MODELS)
    assert set(SIGNAL_MODELS) == set(SIGNAL)
    assert set(MIN_IMAGE_SIZE) == set(IMAGE_MODELS)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_at_min_image_size(name):
    model = _model(name)
    size = MIN_IMAGE_SIZE.get(name, 32)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, IN_CHANNELS, size, size, generator=_gen(0)))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in MIN_IMAGE_SIZE if MIN_IMAGE_SIZE[n] > 1])
def test_min_image_size_is_tight(name):
    # one pixel below the minimum the forward pass fails, so the minimum is not overly cautious
    size = MIN_IMAGE_SIZE[name] - 1
    model = _model(name)
    model.eval()
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(torch.randn(2, IN_CHANNELS, size, size))


@pytest.mark.parametrize("name", OWN)
def test_own_models_train_mode_on_digits_and_cifar(name):
    # 8x8 single-channel digits and 32x32 CIFAR, batch 2, training mode
    for channels, size in ((1, 8), (3, 32)):
        model = build_model(name, 10, channels, generator=_gen())
        model.train()
        assert model(torch.randn(2, channels, size, size)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "inception_v3", "mobilenet_v2", "efficientnet_b0"])
def test_torchvision_in_channels_adapted(name):
    model = build_model(name, 5, 1, generator=_gen())
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    reference = next(m for m in _model(name).modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    for attr in ("out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(first, attr) == getattr(reference, attr)
    assert (first.bias is None) == (reference.bias is None)
    size = MIN_IMAGE_SIZE[name]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 5)


def test_adapt_in_channels_errors():
    import torchvision

    with pytest.raises(ValueError, match="no Conv2d"):
        adapt_in_channels(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), 1, "mlp")
    grouped = nn.Sequential(nn.Conv2d(3, 6, 3, groups=3))
    with pytest.raises(ValueError, match="groups=3"):
        adapt_in_channels(grouped, 1, "grouped")
    inception_rgb = torchvision.models.inception_v3(
        weights=None, aux_logits=False, init_weights=False, transform_input=True
    )
    with pytest.raises(ValueError, match="transform_input"):
        adapt_in_channels(inception_rgb, 1, "inception_v3")
    with pytest.raises(ValueError, match="in_channels"):
        adapt_in_channels(nn.Sequential(nn.Conv2d(3, 4, 3)), 0, "tiny")
    same = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert adapt_in_channels(same, 3) is same


def test_torchvision_randomness_routed_through_seeded_dropout():
    from torchvision.ops import StochasticDepth

    for name in TORCHVISION:
        model = _model(name)
        assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules()), name
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, StochasticDepth)), name
        assert all(m.p == 0.0 for m in model.modules() if isinstance(m, SeededDropout)), name
    model = build_model("mobilenet_v2", 10, 3, generator=_gen(), dropout=0.2)
    assert [m.p for m in model.modules() if isinstance(m, SeededDropout)] == [0.2]


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'nope'") as info:
        build_model("nope", 10, 3, generator=_gen())
    for name in MODELS:
        assert name in str(info.value)


def test_check_input_size():
    for name, minimum in MIN_IMAGE_SIZE.items():
        check_input_size(name, minimum)
        check_input_size(name, 224)
    check_input_size("resnet18", 8)
    with pytest.raises(ValueError) as info:
        check_input_size("inception_v3", 32)
    assert "inception_v3" in str(info.value) and "32" in str(info.value) and "75" in str(info.value)
    with pytest.raises(ValueError, match=r"'vgg16'.*at least 32x32.*got 28x28"):
        check_input_size("vgg16", 28)
    with pytest.raises(ValueError, match="unknown model"):
        check_input_size("nope", 32)


# ----------------------------------------------------------------------------- seeded init
@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_is_initialised_by_glorot_init(name):
    # Parameters outside these module types would keep torchvision's (forked-RNG) default init.
    for module_name, module in _model(name).named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            assert isinstance(module, INIT_TYPES), f"{name}.{module_name}: {type(module).__name__}"


@pytest.mark.parametrize("name", [n for n in MODELS if not n.startswith("vgg")])
def test_build_is_deterministic(name):
    # Rebuilt under a different global RNG state, bitwise equal to the cached build (eval-mode
    # forwards leave that unchanged). VGG16/19 (about 3 s a build) are left to
    # test_every_parameter_is_initialised_by_glorot_init: build_model's fork_rng + glorot_init
    # make any model whose parameters it covers deterministic.
    torch.manual_seed(len(name))
    again = build_model(name, NUM_CLASSES, IN_CHANNELS, generator=_gen())
    assert _bitwise_equal(_model(name).state_dict(), again.state_dict())


@pytest.mark.parametrize("name", CHEAP)
def test_different_seeds_give_different_weights(name):
    reference = _model(name).state_dict()
    other = build_model(name, NUM_CLASSES, IN_CHANNELS, generator=_gen(SEED + 1)).state_dict()
    weights = [k for k, v in reference.items() if k.endswith("weight") and v.dim() > 1]
    assert weights and all(not torch.equal(reference[k], other[k]) for k in weights)


@pytest.mark.parametrize("name", list(MODELS))
def test_build_does_not_consume_global_rng(name):
    _model(name)
    assert _RNG_UNCHANGED[name]
    before = torch.get_rng_state()
    build_model("smallcnn", 10, 3, generator=_gen(), dropout=0.5)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("name", list(MODELS))
def test_glorot_bounds_and_zero_biases(name):
    model = _model(name)
    for module_name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            receptive = w[0][0].numel()
            fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            low, high = (v.item() for v in torch.aminmax(w))
            assert -bound * (1 + 1e-6) <= low and high <= bound * (1 + 1e-6), f"{name}.{module_name}"
            if w.numel() >= 64:  # really drawn from U(-bound, bound), not zero or constant
                assert low < -0.5 * bound and high > 0.5 * bound, f"{name}.{module_name}"
            if m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0, f"{name}.{module_name}"
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0, f"{name}.{module_name}"


def test_same_shaped_kernels_get_their_own_draws():
    # unlike the Keras code's stateless seeded initialisers (see PAPER-PROTOCOL.md)
    blocks = list(_model("resnet18").layers)
    assert not torch.equal(blocks[0].conv1.weight, blocks[0].conv2.weight)
    assert not torch.equal(blocks[0].conv1.weight, blocks[1].conv1.weight)


# ----------------------------------------------------------------------------- SeededDropout
def test_seeded_dropout_identity_in_eval_and_at_zero():
    x = torch.randn(4, 8)
    drop = SeededDropout(0.5).eval()
    assert drop(x) is x  # no generator needed in eval mode
    zero = SeededDropout(0.0).train()
    assert zero(x) is x


def test_seeded_dropout_masks_are_deterministic():
    x = torch.ones(64, 32)
    drop = SeededDropout(0.25).train()
    drop.generator = _gen(3)
    first = drop(x)
    drop.generator = _gen(3)
    state = torch.get_rng_state()
    second = drop(x)
    assert torch.equal(torch.get_rng_state(), state)  # masks never touch the global RNG
    assert torch.equal(first, second)
    drop.generator = _gen(4)
    assert not torch.equal(first, drop(x))
    # inverted dropout: kept units scaled by 1/(1-p), about p dropped
    kept = first[first != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75))
    assert 0.15 < (first == 0).float().mean().item() < 0.35


def test_seeded_dropout_via_model_generator():
    model = build_model("smallcnn", 10, 3, generator=_gen(), dropout=0.5).train()
    x = torch.randn(8, 3, 16, 16, generator=_gen(0))
    set_dropout_generator(model, _gen(9))
    a = model(x)
    set_dropout_generator(model, _gen(9))
    assert torch.equal(a, model(x))


def test_seeded_dropout_errors():
    drop = SeededDropout(0.5).train()
    with pytest.raises(RuntimeError, match="generator"):
        drop(torch.ones(2, 2))
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            SeededDropout(p)
    with pytest.raises(ValueError):
        build_model("resnet18", 10, 3, generator=_gen(), dropout=1.0)


def test_pair_max_pool_equals_torch_max_pool_in_values_and_gradients():
    """PairMaxPool1d is only a faster path: the same outputs and the same gradients as F.max_pool1d(x, 2),
    ties included (ReLU zeros and equal positive values: the first of a pair gets the gradient)."""
    x = torch.tensor([[[0.0, 0.0, 3.0, 1.0, 2.0, 2.0, -1.0, 5.0]]])  # a zero tie, a positive tie, the max second
    upstream = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    grads = []
    for pool in (PairMaxPool1d(), lambda t: F.max_pool1d(t, 2)):
        leaf = x.clone().requires_grad_()
        out = pool(leaf)
        out.backward(upstream)
        grads.append((out.detach(), leaf.grad))
    (ours, g_ours), (torchs, g_torch) = grads
    assert torch.equal(ours, torch.tensor([[[0.0, 3.0, 2.0, 5.0]]])) and torch.equal(ours, torchs)
    assert torch.equal(g_ours, torch.tensor([[[1.0, 0.0, 2.0, 0.0, 3.0, 0.0, 0.0, 4.0]]])) and torch.equal(
        g_ours, g_torch
    )
    # A random batch through ReLU, as in CNN1D: bit-equal gradients.
    r = torch.relu(torch.randn(16, 4, 10, generator=torch.Generator().manual_seed(0)))
    up = torch.randn(16, 4, 5, generator=torch.Generator().manual_seed(1))
    a, b = r.clone().requires_grad_(), r.clone().requires_grad_()
    PairMaxPool1d()(a).backward(up)
    F.max_pool1d(b, 2).backward(up)
    assert torch.equal(a.grad, b.grad)
    with torch.no_grad():  # evaluation takes torch's own kernel; an odd length too
        assert torch.equal(PairMaxPool1d()(r), F.max_pool1d(r, 2))
    odd = torch.randn(2, 3, 7)
    assert torch.equal(PairMaxPool1d()(odd), F.max_pool1d(odd, 2))
