"""Models: the paper's SmallCNN, CIFAR ResNet-18, MediumCNN(k), the torchvision zoo, and the 1D
models of the MNIST-1D testbed (CNN1D with and without BatchNorm, MLP1D).

Every model is built by `build_model`, which initialises every parameter from the *init*
generator only (by default Glorot uniform, zero bias, as the paper's Keras code; `INITS` holds
the paper's ResNet-50 He-normal scheme and PyTorch's own), so weight init is an independent
noise source. Dropout draws its masks from the *dropout* generator
(`SeededDropout`), never from torch's global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

# Keras BatchNormalization defaults: momentum 0.99 (torch momentum = 1 - 0.99), eps 1e-3.
BN_MOMENTUM, BN_EPS = 0.01, 1e-3

# What the divergence locator and the overhead timer accept instead of a registered name:
# (classes, input channels, init generator) -> an initialised model.
ModelFactory = Callable[[int, int, torch.Generator], nn.Module]


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from an explicit generator (set by the trainer)."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p!r}")
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError("SeededDropout needs a generator: call set_dropout_generator(model, g)")
        keep = torch.rand(x.shape, generator=self.generator, device=self.generator.device).to(x.device) >= self.p
        return x * keep / (1.0 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


def set_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.generator = generator


# ----------------------------------------------------------------------------- SmallCNN
class SmallCNN(nn.Module):
    """The paper's SmallCNN: conv16-conv32-conv32 (3x3, same, ReLU, max-pool 2), GAP, dense 32, dense.

    15,722 parameters for 3-channel input and 10 classes, as in the paper. Optional BatchNorm
    after each convolution (Keras momentum/eps), optional dropout before the last layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, batchnorm: bool = False, dropout: float = 0.0):
        super().__init__()
        layers, c = [], in_channels
        for width in (16, 32, 32):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width, eps=BN_EPS, momentum=BN_MOMENTUM))
            layers += [nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(c, 32),
            nn.ReLU(),
            SeededDropout(dropout),
            nn.Linear(32, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- ResNet-18 (CIFAR)
def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN (no bias), identity shortcut or 1x1 conv+BN when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = _bn(out_channels)
        self.relu = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _bn(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """The paper's CIFAR ResNet-18: 3x3 stem 64 + BN + ReLU (no max-pool), 4 stages x 2 BasicBlocks
    (64/128/256/512, stride 2 at stages 2-4), global average pool, dense.

    11,173,962 parameters for 3 channels and 10 classes. Padding 1 at stride 2 is PyTorch's
    symmetric padding (TF "same" pads asymmetrically there). The global average pool replaces
    the Keras code's fixed 4x4 pool, identical at 32x32 input and valid for any input size.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False), _bn(64), nn.ReLU())
        blocks, c = [], 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c, width, stride), BasicBlock(width, width, 1)]
            c = width
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), SeededDropout(dropout), nn.Linear(c, num_classes)
        )

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


# ----------------------------------------------------------------------------- MediumCNN(k)
class MediumCNN(nn.Module):
    """The overhead study's MediumCNN(k): six blocks of k x k conv (same padding, with bias as Keras'
    Conv2D) + BN + ReLU + max-pool 2, channels 16..512, GAP, dense.

    The pools use ceil_mode=True (Keras pools with floor) so that inputs smaller than 64 still work;
    at 224x224 the two differ only in the last pool (7 -> 4 instead of 3), before the GAP.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MediumCNN kernel_size must be a positive odd integer, got {kernel_size!r}")
        layers, c = [], in_channels
        for width in (16, 32, 64, 128, 256, 512):
            layers += [
                nn.Conv2d(c, width, kernel_size, padding=kernel_size // 2),
                _bn(width),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), SeededDropout(dropout), nn.Linear(c, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- MNIST-1D models
class PairMaxPool1d(nn.MaxPool1d):
    """MaxPool1d(2) that trains faster on the CPU, with the same bits.

    With autograd on, torch's CPU max_pool1d computes indices through max_pool2d_with_indices, which
    took ~22 % of a CNN1D training step (measured: 334 us of ~3.7 ms per step at 1 thread); the max over
    the last dim of the (..., L/2, 2) view takes ~8 % less time per step. Both return the same values and
    send the gradient to the first maximal element of each pair, so the trained weights are identical
    (tests/test_models.py). Without autograd (evaluation) and on CUDA, torch's own kernel runs.
    """

    def __init__(self):
        super().__init__(2)

    def forward(self, x):
        if x.is_cuda or not torch.is_grad_enabled() or x.shape[-1] % 2:
            return super().forward(x)
        return x.unflatten(-1, (-1, 2)).max(-1).values


class CNN1D(nn.Module):
    """The MNIST-1D testbed's 1D CNN: three blocks of Conv1d(width, 5, padding 2) [+ BatchNorm1d] + ReLU
    + MaxPool1d(2), flatten, dropout, a linear head.

    Signals of length 40 leave the features as width x 5; at width 16, 1 channel and 10 classes that
    is 3,498 parameters (3,594 with BatchNorm). Dropout before the head as in the other models.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        batchnorm: bool = False,
        dropout: float = 0.0,
        width: int = 16,
        length: int = 40,
    ):
        super().__init__()
        layers, c = [], in_channels
        for _ in range(3):
            layers.append(nn.Conv1d(c, width, 5, padding=2))
            if batchnorm:
                layers.append(nn.BatchNorm1d(width, eps=BN_EPS, momentum=BN_MOMENTUM))
            layers += [nn.ReLU(), PairMaxPool1d()]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), SeededDropout(dropout), nn.Linear(width * (length // 8), num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class MLP1D(nn.Module):
    """The MNIST-1D MLP: flatten, 40-100-100 with ReLU, dropout, a linear head (15,210 parameters at
    1 channel of length 40 and 10 classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0, length: int = 40):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * length, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            SeededDropout(dropout),
            nn.Linear(100, num_classes),
        )

    def forward(self, x):
        return self.net(x)


# ----------------------------------------------------------------------------- torchvision zoo
# For the overhead study (determinism cost, timing only). Built with weights=None (never
# downloads) and then, like every model here, re-initialised from the init generator by the
# recipe's scheme (`INITS`; the default `glorot_init` for timing, where the scheme is irrelevant;
# the paper's ResNet-50 *training* recipe: `he_normal_init`). BatchNorm keeps torchvision's
# constants (the Keras applications differ per model anyway; torchvision's ResNet-50 momentum 0.1
# and eps 1e-5 are those of the paper's TF ResNet-50, decay 0.9).
#
# Randomness stays out of torch's global RNG: every nn.Dropout is replaced by
# SeededDropout(dropout) (registry default 0, i.e. no dropout, as Keras' VGG, ResNet, DenseNet,
# Inception and MobileNet tops), and EfficientNet-B0 is built without stochastic depth
# (torchvision's StochasticDepth draws from the global RNG). Keras' EfficientNetB0 has top
# dropout 0.2 and drop-connect 0.2; pass dropout=0.2 for the former.


def _replace_module(root: nn.Module, qualified_name: str, new: nn.Module) -> None:
    parent_name, _, child = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def adapt_in_channels(model: nn.Module, in_channels: int, name: str = "model") -> nn.Module:
    """Replace the first convolution of an RGB model by one with `in_channels` inputs.

    The new conv copies every other setting (out channels, kernel, stride, padding, dilation,
    bias, padding mode); its weights are left to the initialiser. Raises ValueError when the model
    cannot be adapted (no leading ungrouped 3-channel Conv2d, or an RGB-specific input transform).
    """
    if in_channels == 3:
        return model
    if in_channels < 1:
        raise ValueError(f"{name}: in_channels must be >= 1, got {in_channels}")
    if getattr(model, "transform_input", False):
        raise ValueError(f"{name}: cannot adapt to {in_channels} input channels: transform_input assumes RGB")
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{name}: cannot adapt to {in_channels} input channels: no Conv2d found")
    qname, conv = first
    if conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(
            f"{name}: cannot adapt to {in_channels} input channels: first conv {qname!r} has "
            f"in_channels={conv.in_channels}, groups={conv.groups} (expected 3, 1)"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=1,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    _replace_module(model, qname, new)
    return model


def _seed_dropouts(model: nn.Module, dropout: float) -> nn.Module:
    """Replace every torch dropout (global RNG) by SeededDropout(dropout)."""
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for qname in targets:
        _replace_module(model, qname, SeededDropout(dropout))
    return model


def _torchvision(factory_name: str, **kwargs) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
        import torchvision.models as tvm  # imported lazily: SmallCNN users need no torchvision

        model = getattr(tvm, factory_name)(weights=None, num_classes=num_classes, **kwargs)
        model = _seed_dropouts(model, dropout)
        return adapt_in_channels(model, in_channels, factory_name)

    build.__name__ = f"build_{factory_name}"
    return build


# VGG as Keras builds it. torchvision's VGG puts AdaptiveAvgPool2d((7, 7)) between the features and
# the classifier; Keras' VGG16/VGG19 flatten block5_pool directly. At the paper's 224 px the
# feature map is already 7x7 and the pool is an identity, but its backward
# (adaptive_avg_pool2d_backward) has no deterministic CUDA kernel: under the deterministic flag
# torchvision's VGG raises where Keras' runs. `KerasVGGPool` is the identity where the map is
# already the pool's size (same numbers, no pool op dispatched) and the pool elsewhere (then still
# not deterministic-capable on CUDA: a smaller input leaves a smaller map, which the pool enlarges).
class KerasVGGPool(nn.AdaptiveAvgPool2d):
    """torchvision VGG's avgpool, made an identity where it is one (a feature map of its output size)."""

    # Recorded with every overhead row of a VGG (overhead.timing reads it): what differs from torchvision.
    CHANGE = "avgpool: AdaptiveAvgPool2d((7, 7)) is an identity on a 7x7 feature map (as Keras' VGG, which has none)"

    def is_identity(self, shape) -> bool:
        return tuple(shape[-2:]) == nn.modules.utils._pair(self.output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.is_identity(x.shape) else super().forward(x)


def _vgg(factory_name: str) -> Callable[..., nn.Module]:
    torchvision_build = _torchvision(factory_name)

    def build(num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
        model = torchvision_build(num_classes, in_channels, dropout)
        model.avgpool = KerasVGGPool(model.avgpool.output_size)
        return model

    build.__name__ = f"build_{factory_name}"
    return build


# ----------------------------------------------------------------------------- init
@torch.no_grad()
def glorot_init(model: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights and zero biases for every conv/linear; BatchNorm to (1, 0).

    Modules are visited in registration order, so the draws are a fixed function of the seed.
    Unlike the paper's Keras code, every layer gets its own draws (its stateless seeded
    initialisers made same-shaped kernels identical in IMPL and CONTROL).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
# Keras' truncated normal (TF >= 2.0 VarianceScaling) cuts at two standard deviations and divides the
# standard deviation by the std of a unit normal truncated there, so that the kept draws have the asked std.
TRUNCATED_NORMAL_STD = 0.87962566103423978
HEAD_STD = 0.01  # the paper's ResNet-50 (TF official models): final dense layer N(0, 0.01)


def _reset_norms(m: nn.Module) -> None:
    if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


@torch.no_grad()
def he_normal_init(model: nn.Module, generator: torch.Generator) -> None:
    """The paper's ResNet-50 initialisation: Keras he_normal kernels, zero biases, the last Linear
    (the classifier) N(0, 0.01), BatchNorm to (1, 0).

    Keras' he_normal is a truncated normal: std sqrt(2 / fan_in) / TRUNCATED_NORMAL_STD, cut at two of
    those stds; fan_in = in_channels x kernel size, as torch counts it for a (out, in, k, k) weight.
    Modules are visited in registration order; every draw comes from `generator`.
    """
    layers = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    head = next((m for m in reversed(layers) if isinstance(m, nn.Linear)), None)
    for m in model.modules():
        if m is head:
            nn.init.normal_(m.weight, 0.0, HEAD_STD, generator=generator)
        elif isinstance(m, _WEIGHTED):
            fan_in = m.weight[0].numel()
            std = math.sqrt(2.0 / fan_in) / TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std, generator=generator)
        if isinstance(m, _WEIGHTED) and m.bias is not None:
            nn.init.zeros_(m.bias)
        _reset_norms(m)


@torch.no_grad()
def torch_init(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's own default initialisation of conv and linear layers, drawn from `generator`:
    kaiming_uniform(a=sqrt(5)) weights (U(-b, b), b = 1 / sqrt(fan_in)) and biases U(-1/sqrt(fan_in),
    1/sqrt(fan_in)); BatchNorm to (1, 0). For comparison with the Keras schemes; no recipe of the paper."""
    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        _reset_norms(m)


# name -> initialiser(model, init generator); the first is every recipe's default (today's bits).
INITS: dict[str, Callable[[nn.Module, torch.Generator], None]] = {
    "glorot_uniform": glorot_init,  # Keras' default: the paper's SmallCNN and ResNet-18
    "he_normal": he_normal_init,  # the paper's ResNet-50
    "torch": torch_init,  # PyTorch's module defaults
}


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")


# ----------------------------------------------------------------------------- registry
def _mediumcnn(kernel_size: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
        return MediumCNN(num_classes, in_channels, kernel_size, dropout)

    build.__name__ = f"build_mediumcnn_k{kernel_size}"
    return build


# name -> constructor(num_classes, in_channels, dropout) returning an uninitialised module
MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallcnn": lambda num_classes, in_channels, dropout=0.0: SmallCNN(num_classes, in_channels, False, dropout),
    "smallcnn_bn": lambda num_classes, in_channels, dropout=0.0: SmallCNN(num_classes, in_channels, True, dropout),
    "resnet18": lambda num_classes, in_channels, dropout=0.0: ResNet18(num_classes, in_channels, dropout),
    # MNIST-1D (signals of length 40)
    "cnn1d": lambda num_classes, in_channels, dropout=0.0: CNN1D(num_classes, in_channels, False, dropout),
    "cnn1d_bn": lambda num_classes, in_channels, dropout=0.0: CNN1D(num_classes, in_channels, True, dropout),
    "mlp1d": lambda num_classes, in_channels, dropout=0.0: MLP1D(num_classes, in_channels, dropout),
    **{f"mediumcnn_k{k}": _mediumcnn(k) for k in (1, 3, 5, 7)},
    # overhead study (torchvision, weights=None)
    "vgg16": _vgg("vgg16"),
    "vgg19": _vgg("vgg19"),
    "resnet50": _torchvision("resnet50"),
    "resnet152": _torchvision("resnet152"),
    "densenet121": _torchvision("densenet121"),
    "densenet201": _torchvision("densenet201"),
    "inception_v3": _torchvision("inception_v3", aux_logits=False, init_weights=False),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "efficientnet_b0": _torchvision("efficientnet_b0", stochastic_depth_prob=0.0),
}

# Smallest square input side each model accepts, found by running a forward pass (batch 2, train
# and eval mode) at every side from 1 to 80: every side from the value given up works, every side
# below it fails. VGG's five floor-mode max-pools need 32; DenseNet's stem (stride-2 conv, max-pool)
# and three floor-mode 2x2 average-pool transitions need 29; Inception-v3's unpadded stem needs 75.
# The others only shrink by padded stride-2 convolutions or ceil-mode pools (the SmallCNN,
# ResNet-18 and MediumCNN pools are ceil-mode on purpose), so they run at any side, down to 1x1
# (8x8 digits reach 1x1 in ResNet-18 and MediumCNN). Train-mode BatchNorm also needs batch >= 2.
MIN_IMAGE_SIZE: dict[str, int] = {
    "smallcnn": 1,
    "smallcnn_bn": 1,
    "resnet18": 1,
    **{f"mediumcnn_k{k}": 1 for k in (1, 3, 5, 7)},
    "vgg16": 32,
    "vgg19": 32,
    "resnet50": 1,
    "resnet152": 1,
    "densenet121": 29,
    "densenet201": 29,
    "inception_v3": 75,
    "mobilenet_v2": 1,
    "efficientnet_b0": 1,
}


# The models that take signals (N, C, 40) rather than images (N, C, H, W); their input length is fixed.
SIGNAL_MODELS = ("cnn1d", "cnn1d_bn", "mlp1d")
SIGNAL_LENGTH = 40  # MNIST-1D's final_seq_length: the flatten before each head is sized for it


def check_model(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")


def check_input_dims(name: str, dims: int) -> None:
    """Raise ValueError if `name` cannot take inputs of `dims` spatial dimensions (1: signals, 2: images),
    listing the models that can."""
    check_model(name)
    if (name in SIGNAL_MODELS) != (dims == 1):
        kind = "1D signals (N, C, L)" if dims == 1 else "2D images (N, C, H, W)"
        valid = [m for m in MODELS if (m in SIGNAL_MODELS) == (dims == 1)]
        raise ValueError(f"model {name!r} cannot take {kind}; valid models for them: {', '.join(valid)}")


def check_input_size(name: str, image_size: int, dims: int = 2) -> None:
    """Raise ValueError if `name` cannot take inputs of `dims` spatial dimensions and side (length)
    `image_size`: square images for the 2D models, signals of SIGNAL_LENGTH for the 1D ones."""
    check_input_dims(name, dims)
    if dims == 1:
        if image_size != SIGNAL_LENGTH:
            raise ValueError(f"model {name!r} needs signals of length {SIGNAL_LENGTH}, got {image_size}")
        return
    minimum = MIN_IMAGE_SIZE.get(name, 1)
    if image_size < minimum:
        raise ValueError(
            f"model {name!r} needs input images of at least {minimum}x{minimum}, got {image_size}x{image_size}"
        )


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    *,
    generator: torch.Generator,
    dropout: float = 0.0,
    init: str = "glorot_uniform",
) -> nn.Module:
    """Build `name` on the CPU and initialise it from `generator` alone, with the scheme `init` (`INITS`).

    Construction runs inside `fork_rng` so that torch's default initialisers (overwritten right
    after) neither depend on nor advance the global RNG. The model remembers its scheme
    (`model.init_scheme`), so that a trainer can check it is the one its recipe asked for.
    """
    check_model(name)
    check_init(init)
    with torch.random.fork_rng(devices=[]):
        model = MODELS[name](num_classes, in_channels, dropout=dropout)
    INITS[init](model, generator)
    model.init_scheme = init
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
