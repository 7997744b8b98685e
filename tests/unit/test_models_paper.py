"""The paper's networks: conv-weight counts of REFERENCE.md 4, output sizes, init, names."""

import pytest
import torch
from torch import nn

from adapmtl_cli.config import load_config
from adapmtl_cli.models.backbones import build_backbone
from adapmtl_cli.builders import build_model
from adapmtl_cli.models.heads import ASPPHead


def conv_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d))


def conv_biases(module: nn.Module) -> int:
    return sum(m.bias.numel() for m in module.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


@pytest.fixture(scope="module")
def backbones():
    torch.manual_seed(0)
    return {"resnet34": build_backbone("resnet34"), "mobilenetv2": build_backbone("mobilenetv2")}


def test_backbone_counts(backbones):
    assert conv_weights(backbones["resnet34"]) == 21_267_648
    assert conv_weights(backbones["mobilenetv2"]) == 2_189_760


@pytest.mark.parametrize("channels,expected", [(40, 23_232_512), (3, 23_080_960), (1, 23_072_768), (17, 23_068_672 + 4096 * 17)])
def test_resnet34_head_counts(channels, expected):
    head = ASPPHead(512, channels)
    assert conv_weights(head) == expected == 23_068_672 + 4096 * channels
    assert conv_biases(head) == 8192 + 4 * channels


@pytest.mark.parametrize("channels,expected", [(40, 51_544_064), (3, 51_392_512), (1, 51_384_320), (5, 51_380_224 + 4096 * 5)])
def test_mobilenetv2_head_counts(channels, expected):
    assert conv_weights(ASPPHead(1280, channels)) == expected


@pytest.mark.parametrize("preset,total", [("nyuv2-resnet34", 90_653_888), ("nyuv2-mnv2", 156_510_656)])
def test_nyuv2_totals_are_what_sparsity_is_counted_over(preset, total):
    model = build_model(load_config(preset), {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1})
    assert sum(layer.numel for layer in model.sparsifier.layers) == total


def test_output_sizes_for_a_321_input(backbones):
    with torch.no_grad():
        x = torch.zeros(1, 3, 321, 321)
        assert backbones["resnet34"](x).shape == (1, 512, 41, 41)
        assert backbones["mobilenetv2"](x).shape == (1, 1280, 11, 11)
    head = ASPPHead(512, 40, hidden=8).eval()
    with torch.no_grad():
        assert head(torch.zeros(1, 512, 41, 41)).shape == (1, 40, 41, 41)


def test_aspp_sums_its_four_branches():
    head = ASPPHead(4, 2, hidden=3, dropout=0.0).eval()
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        assert torch.allclose(head(x), sum(getattr(head, f"fc{i}")(x) for i in range(1, 5)), atol=1e-6)
    assert [getattr(head, f"fc{i}").conv1.dilation for i in range(1, 5)] == [(6, 6), (12, 12), (18, 18), (24, 24)]


def test_initialisation(backbones):
    resnet = backbones["resnet34"]
    assert float(resnet.blocks[2][0].conv1.weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    assert torch.equal(resnet.bn1.weight, torch.ones(64)) and torch.equal(resnet.bn1.bias, torch.zeros(64))
    final = backbones["mobilenetv2"].conv[0]  # 1x1, 1280 out: std sqrt(2 / 1280)
    assert float(final.weight.detach().std()) == pytest.approx((2 / 1280) ** 0.5, rel=0.02)


def test_module_names_follow_the_reference_checkpoint():
    model = build_model(load_config("nyuv2-resnet34", ["model.head_hidden=8"]), {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1},
                        sparse=False)
    keys = set(model.state_dict())
    for key in ["backbone.conv1.weight", "backbone.bn1.running_var", "backbone.blocks.0.0.conv1.weight",
                "backbone.blocks.3.2.bn2.weight", "backbone.ds.1.0.weight", "backbone.ds.3.1.bias",
                "heads.normal.fc4.conv3.weight", "heads.segment_semantic.fc1.conv1.bias"]:
        assert key in keys, key
    mnv2 = build_model(load_config("nyuv2-mnv2", ["model.head_hidden=8"]), {"normal": 3, "segment_semantic": 40, "depth_zbuffer": 1}, sparse=False)
    keys = set(mnv2.state_dict())
    for key in ["backbone.features.0.0.weight", "backbone.features.1.conv.3.weight", "backbone.features.17.conv.7.bias",
                "backbone.conv.0.weight", "backbone.conv.1.running_mean"]:
        assert key in keys, key
    assert "backbone.features.1.conv.6.weight" not in keys  # expansion 1: no expand conv
