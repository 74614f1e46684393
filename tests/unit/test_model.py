import numpy as np
import pytest
import torch

from qadwh_ray.model import ModelConfig, build_model, encode, load_checkpoint, save_checkpoint
from qadwh_ray.model.backbones import build_backbone
from qadwh_ray.model.checkpoint import load_payload


def test_compact_network_shapes_and_W_initialised_to_one():
    model = build_model(ModelConfig(nbits=24, num_classes=10))
    out = model(torch.randn(5, 1, 28, 28))
    assert out.h.shape == (5, 24) and out.logits.shape == (5, 10)
    assert ((out.h > 0) & (out.h < 1)).all()
    assert torch.equal(model.W.detach(), torch.ones(10, 24))
    assert "W" in dict(model.named_parameters())  # inside the module, so DDP syncs it


def test_query_weights_are_softmax_times_W():
    model = build_model(ModelConfig(nbits=16, num_classes=3))
    with torch.no_grad():
        model.W.copy_(torch.rand(3, 16))
    z = torch.randn(4, 3, dtype=torch.float32)
    expected = torch.stack([sum(torch.softmax(z[i], 0)[c] * model.W[c] for c in range(3)) for i in range(4)])
    torch.testing.assert_close(model.query_weights(z), expected)
    torch.testing.assert_close(model.dwh_weights(), model.W.mean(0))


def test_classifier_on_codes_reads_h_and_round_trips(tmp_path):
    model = build_model(ModelConfig(nbits=16, num_classes=10, class_input="codes")).eval()
    assert model.class_head.in_features == 16
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out.logits, model.class_head(out.h))  # z = C h + c, not C f + c
    uri = str(tmp_path / "model.pt")
    save_checkpoint(uri, model)
    again = load_checkpoint(uri)
    assert again.config.class_input == "codes"
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, out.logits)
    with pytest.raises(ValueError, match="unknown class_input 'pixels'"):
        ModelConfig(class_input="pixels")


def test_checkpoints_without_class_input_load_as_features():
    cfg = ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items() if k != "class_input"})
    assert cfg.class_input == "features"


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("vgg19", 4096)])
def test_torchvision_backbones_give_their_feature_width(name, dim):
    net, width = build_backbone(name, in_channels=1)
    assert width == dim
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32)).shape == (1, dim)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'alexnet'"):
        ModelConfig(backbone="alexnet")
    with pytest.raises(ValueError, match="between 1 and 4096 bits"):
        ModelConfig(nbits=0)


def test_pretrained_weights_load_from_a_path_and_missing_file_is_named(tmp_path):
    from torchvision import models

    ref = models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net, _ = build_backbone("resnet18", in_channels=3, pretrained=str(path))
    torch.testing.assert_close(net.conv1.weight, ref.conv1.weight)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_checkpoint_round_trip_rebuilds_the_exact_network(tmp_path):
    model = build_model(ModelConfig(nbits=32, num_classes=10))
    with torch.no_grad():
        model.W.copy_(torch.rand_like(model.W))
    model.eval()
    uri = str(tmp_path / "ck" / "model.pt")
    digest = save_checkpoint(uri, model, step=7)
    again = load_checkpoint(uri)
    assert again.config == model.config
    # loaded for inference in the faster channels-last layout: same network, same outputs
    convs = [m.weight for m in again.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(again(x).h, model(x).h)
    payload = load_payload(str(tmp_path / "ck"))  # a directory holding model.pt works too
    assert payload["step"] == 7 and payload["sha256"] == digest


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(str(bad))


def test_encode_packs_h_threshold_and_is_batch_size_independent():
    model = build_model(ModelConfig(nbits=16, num_classes=10)).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(37, 28, 28), dtype=np.uint8)
    a = encode(model, images, batch_size=8, with_features=True)
    b = encode(model, images, batch_size=64)
    assert a.codes.shape == (37, 2) and a.codes.dtype == np.uint8
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_allclose(a.qadwh_weights, b.qadwh_weights, rtol=1e-5)
    assert a.features.shape == (37, 512)
    with pytest.raises(TypeError, match="uint8"):
        encode(model, images.astype(np.float32))


def test_encode_default_chunk_matches_explicit_chunks_and_rejects_bad_sizes():
    from qadwh_ray.model.encode import CPU_CHUNK, GPU_CHUNK, default_chunk

    assert default_chunk("cpu") == CPU_CHUNK and default_chunk("cuda") == GPU_CHUNK
    model = build_model(ModelConfig(nbits=8, num_classes=10)).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(CPU_CHUNK + 3, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(encode(model, images).codes, encode(model, images, batch_size=1000).codes)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        encode(model, images, batch_size=0)


def test_flip_average_encodes_the_mean_over_image_and_mirror_and_round_trips(tmp_path):
    from qadwh_ray.core.bits import pack_bits
    from qadwh_ray.model.encode import preprocess

    torch.manual_seed(0)
    plain = build_model(ModelConfig(nbits=16, num_classes=10)).eval()
    uri = str(tmp_path / "model.pt")
    save_checkpoint(uri, build_model(ModelConfig(nbits=16, num_classes=10, flip_average=True)))
    flipping = load_checkpoint(uri)
    assert flipping.config.flip_average
    flipping.load_state_dict(plain.state_dict())
    images = np.random.default_rng(2).integers(0, 256, size=(9, 28, 28), dtype=np.uint8)
    got = encode(flipping, images, batch_size=4, with_features=True)
    with torch.no_grad():  # brute force: two separate forward passes, averaged by hand
        x = preprocess(plain, images)
        a, b = plain(x), plain(torch.flip(x, dims=[3]))
        h = ((a.h + b.h) / 2).numpy()
        probs = ((torch.softmax(a.logits, 1) + torch.softmax(b.logits, 1)) / 2).numpy()
    np.testing.assert_array_equal(got.codes, pack_bits(h >= 0.5))
    np.testing.assert_allclose(got.qadwh_weights, probs @ plain.W.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.features, ((a.features + b.features) / 2).numpy(), rtol=1e-5, atol=1e-6)
    # an explicit flip_average=False (validation MAP's screen) overrides the config
    np.testing.assert_array_equal(encode(flipping, images, flip_average=False).codes, encode(plain, images).codes)
    # a mirror-symmetric image encodes as it does without averaging
    sym = np.concatenate([images[:, :, :14], images[:, :, :14][:, :, ::-1]], axis=2)
    np.testing.assert_array_equal(encode(flipping, sym).codes, encode(plain, sym).codes)
    with pytest.raises(ValueError, match="flip_average must be true or false"):
        ModelConfig(flip_average="yes")
