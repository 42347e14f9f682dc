"""The network: layer table [3.5], parameter counts, torchvision compatibility, LRN [3.3], init [5]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet_server.train.model import alexnet, count_parameters, local_response_norm


def test_paper_layer_table():
    model = alexnet("paper", 1000)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    table = [(c.out_channels, c.kernel_size, c.stride, c.padding, c.groups) for c in convs]
    assert table == [
        (96, (11, 11), (4, 4), (2, 2), 1),
        (256, (5, 5), (1, 1), (2, 2), 2),
        (384, (3, 3), (1, 1), (1, 1), 1),
        (384, (3, 3), (1, 1), (1, 1), 2),
        (256, (3, 3), (1, 1), (1, 1), 2),
    ], table
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3, "overlapping pooling z=3, s=2 [3.4]"
    kinds = [type(m).__name__ for m in model.features]
    assert kinds[:4] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"], "LRN after conv1's ReLU"
    assert kinds[4:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"], "LRN after conv2's ReLU"
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(9216, 4096), (4096, 4096), (4096, 1000)]
    kinds = [type(m).__name__ for m in model.classifier]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"], "dropout on fc6/fc7 outputs [4.2]"


def test_paper_feature_map_sizes():
    model = alexnet("paper", 10).eval()
    x = torch.zeros(1, 3, 224, 224)
    x = model.features[0](x)
    assert x.shape[-2:] == (55, 55), "conv1 with pad 2 on 224 gives the paper's 55x55"
    assert model.features(torch.zeros(1, 3, 224, 224)).shape == (1, 256, 6, 6)


@pytest.mark.parametrize("arch, classes, expected", [("paper", 1000, 60_965_224), ("torchvision", 1000, 61_100_840), ("paper", 10, 60_965_224 - 990 * 4097)])
def test_parameter_counts(arch, classes, expected):
    assert count_parameters(alexnet(arch, classes)) == expected


def test_torchvision_state_dict_loads_strictly():
    import torchvision

    reference = torchvision.models.alexnet(weights=None)
    ours = alexnet("torchvision", 1000)
    theirs = reference.state_dict()
    assert list(ours.state_dict()) == list(theirs), "keys must match torchvision's"
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.items())
    ours.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x))


def lrn_as_printed(a: torch.Tensor, k=2.0, n=5, alpha=1e-4, beta=0.75) -> torch.Tensor:
    """[3.3] b^i = a^i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} (a^j)^2)^beta, looped."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


def test_lrn_matches_the_printed_formula():
    torch.manual_seed(0)
    a = torch.relu(torch.randn(2, 12, 7, 7, dtype=torch.float64) * 40)  # large activations make alpha matter
    ours = local_response_norm().double()(a)
    torch.testing.assert_close(ours, lrn_as_printed(a), rtol=1e-10, atol=1e-10)
    # PyTorch's own alpha=1e-4 would be the wrong layer (it divides alpha by n):
    wrong = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0).double()(a)
    assert not torch.allclose(wrong, lrn_as_printed(a)), "the test must be able to tell alpha from alpha/n"


def test_paper_init_statistics():
    torch.manual_seed(0)
    model = alexnet("paper", 1000)
    named = dict(model.named_modules())
    for name in ("features.0", "features.4", "features.8", "features.10", "features.12", "classifier.0", "classifier.3", "classifier.6"):
        w = named[name].weight
        assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.01) < 5e-4, f"{name}: N(0, 0.01) expected, got {w.mean():.4g} {w.std():.4g}"
    for name, value in {"features.0": 0, "features.4": 1, "features.8": 0, "features.10": 1, "features.12": 1, "classifier.0": 1, "classifier.3": 1, "classifier.6": 0}.items():
        assert torch.all(named[name].bias == value), f"{name}: bias {value} expected [5]"


def test_init_bias_is_a_setting_and_kaiming_zeroes_biases():
    model = alexnet("paper", 10, init_bias=0.1)
    assert torch.all(model.features[4].bias == 0.1)
    model = alexnet("paper", 10, init="kaiming")
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_bad_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        alexnet("vgg")
