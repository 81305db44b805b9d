"""The zoo (ResNet-18/50, DenseNet-121 with torchvision's names), checkpoints adapted to a network, and the
input normalisation every network of a model applies."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from clreg.learner.checkpoints import adapt_checkpoint, load_checkpoint
from clreg.learner.errors import ModelFactoryError, WeightsError
from clreg.learner.ewc import EWCState, state_from_bytes
from clreg.learner.models import build_model, last_linear, load_weights, network_for, weights_to_bytes
from clreg.learner.sitebn import bank_from_bytes, bn_layers, route, site_model
from clreg.learner.train import TrainConfig, train_site
from clreg.learner.zoo import DENSENET_MIN_SIDE, densenet121, resnet18, resnet50
from clreg.registry.records import InputSpec, Model, Normalisation

ZOO = "clreg.learner.models:"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads make these nets ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("factory", "params", "keys"), [
    (resnet18, 11_689_512, ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                            "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight"]),
    (resnet50, 25_557_032, ["layer1.0.conv3.weight", "layer1.0.bn3.running_mean", "layer1.0.downsample.0.weight",
                            "layer4.2.conv2.weight", "fc.bias"]),
    (densenet121, 7_978_856, ["features.conv0.weight", "features.norm0.running_mean",
                              "features.denseblock1.denselayer1.norm1.weight",
                              "features.denseblock1.denselayer1.conv2.weight", "features.transition1.norm.bias",
                              "features.transition3.conv.weight", "features.denseblock4.denselayer16.norm2.weight",
                              "features.norm5.weight", "classifier.weight"]),
])
def test_imagenet_shapes_have_torchvision_parameter_counts_and_names(factory, params: int, keys: list[str]) -> None:
    net = factory(3, 224, 224, 1000)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == params
    assert set(keys) <= set(state)
    assert last_linear(net).out_features == 1000


def test_densenet_layer_shapes_follow_growth_and_transitions() -> None:
    state = densenet121(3, 224, 224, 1000).state_dict()
    assert state["features.denseblock1.denselayer6.norm1.weight"].shape == (64 + 5 * 32,)
    assert state["features.denseblock1.denselayer1.conv1.weight"].shape == (128, 64, 1, 1)  # bn_size 4 x growth
    assert state["features.transition1.conv.weight"].shape == (128, 256, 1, 1)
    assert state["features.norm5.weight"].shape == (1024,)
    assert state["classifier.weight"].shape == (1000, 1024)
    assert len(state) == 727


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_grey_factories_build_by_name_with_the_model_spec(name: str) -> None:
    net = build_model(ZOO + name, {}, 1, 32, 32, 2).eval()
    stem = net.conv1 if name.startswith("resnet") else net.features.conv0
    assert stem.in_channels == 1 and last_linear(net).out_features == 2
    assert net(torch.rand(3, 1, 32, 32)).shape == (3, 2)


def test_densenet_refuses_images_it_would_pool_to_nothing() -> None:
    with pytest.raises(ModelFactoryError, match=f"at least {DENSENET_MIN_SIDE}x{DENSENET_MIN_SIDE}"):
        build_model(ZOO + "densenet121", {}, 1, 16, 16, 2)
    assert densenet121(1, DENSENET_MIN_SIDE, DENSENET_MIN_SIDE, 2).eval()(torch.rand(1, 1, 29, 29)).shape == (1, 2)


def _pth(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def imagenet() -> dict[str, torch.Tensor]:
    """A resnet18 state dict shaped as torchvision's ImageNet checkpoint (RGB stem, 1000 classes)."""
    torch.manual_seed(1)
    return resnet18(3, 224, 224, 1000).state_dict()


def test_safetensors_and_pth_checkpoints_load_the_same(imagenet: dict[str, torch.Tensor]) -> None:
    state = imagenet
    from_st = load_checkpoint(st_save(state))
    for data in (_pth(state), _pth({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}),
                 _pth({"model": state, "optimizer": {}})):
        loaded = load_checkpoint(data)
        assert list(loaded) == list(state) and set(from_st) == set(state)
        assert all(torch.equal(loaded[k], state[k]) and torch.equal(from_st[k], state[k]) for k in state)


def test_legacy_densenet_names_are_rewritten() -> None:
    state = densenet121(3, 32, 32, 1000).state_dict()
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in state.items()
              if not k.endswith("num_batches_tracked")}  # torchvision's file predates the batch counters
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    loaded = load_checkpoint(_pth(legacy))
    assert set(loaded) == {k for k in state if not k.endswith("num_batches_tracked")}
    net = densenet121(1, 32, 32, 2)
    adapt_checkpoint(net, loaded, seed=0)  # the missing counters keep the network's own
    assert torch.equal(net.features.denseblock2.denselayer3.norm1.weight,
                       state["features.denseblock2.denselayer3.norm1.weight"])


class _Payload:
    """Anything but tensors and plain containers: weights_only must refuse to build it."""


@pytest.mark.parametrize(("data", "words"), [
    (_pth({"conv1.weight": torch.zeros(1), "evil": _Payload()}), "weights_only"),
    (pickle.dumps({"conv1.weight": 1}, protocol=2), "neither safetensors nor a torch file"),
    (b"not a checkpoint", "neither safetensors nor a torch file"),
    (_pth({"conv1.weight": torch.zeros(1), "lr": 0.1}), "1 entries that are not tensors: lr"),
    (_pth([torch.zeros(1)]), "holds list, not a state dict"),
])
def test_unusable_checkpoints_are_refused(data: bytes, words: str) -> None:
    with pytest.raises(WeightsError, match=words):
        load_checkpoint(data)


def test_adapting_sums_rgb_filters_and_keeps_a_seeded_fresh_head(imagenet: dict[str, torch.Tensor]) -> None:
    state = imagenet
    net = resnet18(1, 32, 32, 2)
    data = adapt_checkpoint(net, load_checkpoint(_pth(state)), seed=5)
    adapted = st_load(data)
    assert set(adapted) == set(resnet18(1, 32, 32, 2).state_dict())
    assert torch.equal(adapted["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(adapted["layer3.1.bn2.running_var"], state["layer3.1.bn2.running_var"])
    assert adapted["fc.weight"].shape == (2, 512)
    assert adapt_checkpoint(resnet18(1, 32, 32, 2), state, seed=5) == data  # the same upload, the same weights
    assert not torch.equal(st_load(adapt_checkpoint(resnet18(1, 32, 32, 2), state, seed=6))["fc.weight"],
                           adapted["fc.weight"])
    load_weights(resnet18(1, 32, 32, 2), data)  # strict: every key of the network, nothing else


def test_a_checkpoint_of_another_network_is_refused_naming_keys(imagenet: dict[str, torch.Tensor]) -> None:
    with pytest.raises(WeightsError) as err:
        adapt_checkpoint(densenet121(1, 32, 32, 2), imagenet, seed=0)
    message = str(err.value)
    assert "missing 604: features.conv0.weight" in message and "unexpected 122: bn1.bias" in message
    state = {**imagenet, "conv1.weight": imagenet["conv1.weight"][:, :2]}
    with pytest.raises(WeightsError, match=r"mismatched 1: conv1.weight \(64, 2, 7, 7\) \(the network: "
                                           r"\(64, 1, 7, 7\)\)"):
        adapt_checkpoint(resnet18(1, 32, 32, 2), state, seed=0)


def _model(mean: list[float], std: list[float], factory: str = "resnet18", channels: int = 1) -> Model:
    return Model(name="m", factory=ZOO + factory, input=InputSpec(channels=channels, height=32, width=32, classes=2),
                 normalisation=Normalisation(mean=mean, std=std))


@pytest.mark.parametrize(("mean", "std", "channels"), [([0.449], [0.226], 1), ([0.485, 0.456, 0.406],
                                                                                [0.229, 0.224, 0.225], 3)])
def test_networks_of_a_model_normalise_their_input(mean: list[float], std: list[float], channels: int) -> None:
    torch.manual_seed(0)
    net = network_for(_model(mean, std, channels=channels)).eval()
    raw = resnet18(channels, 32, 32, 2).eval()
    assert list(net.state_dict()) == list(raw.state_dict())  # the normalisation adds no checkpoint key
    raw.load_state_dict(net.state_dict(), strict=True)
    x = torch.rand(4, channels, 32, 32)
    expected = raw((x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1))
    with torch.no_grad():
        assert torch.equal(net(x), expected.detach())
        assert not torch.allclose(raw(x), net(x))
    reloaded = network_for(_model(mean, std, channels=channels)).eval()
    load_weights(reloaded, weights_to_bytes(net))
    assert torch.equal(reloaded(x), net(x))


def test_a_normalisation_that_does_not_fit_the_channels_is_refused() -> None:
    with pytest.raises(ModelFactoryError, match="finite positive std for each of the 1 channels"):
        network_for(_model([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    with pytest.raises(ModelFactoryError, match="finite mean"):
        build_model(ZOO + "resnet18", {}, 1, 32, 32, 2, ((float("nan"),), (0.2,)))


def test_per_site_batchnorm_trains_and_routes_a_zoo_network() -> None:
    """Two sites through resnet18 (1x32x32, normalised): each keeps all 20 BatchNorm layers' state in the bank."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 1, 32, 32), dtype=np.uint8)
    y = np.arange(8) % 2
    cfg = TrainConfig(epochs=1, batch_size=4, fisher_samples=4)
    net = network_for(_model([0.449], [0.226]))
    first = train_site(net, x, y, "a", EWCState(), cfg)
    bright = np.clip(x.astype(int) // 4 + 190, 0, 255).astype(np.uint8)
    second = train_site(net, bright, y, "b", state_from_bytes(first.ewc_state), cfg, bn_bank=first.bn_bank)
    bank = bank_from_bytes(second.bn_bank)
    assert sorted(bank) == ["a", "b"] and len(bn_layers(net)) == 20
    assert set(bank["a"]) == {k for k in net.state_dict() if k.split(".")[-1] in
                              ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                              and k.rsplit(".", 1)[0] in bn_layers(net)}
    assert state_from_bytes(second.ewc_state).sites == ["a", "b"]
    net.eval()
    assert route(net, bank, torch.from_numpy(bright).float() / 255) == "b"
    assert route(net, bank, torch.from_numpy(x).float() / 255) == "a"
    assert site_model(net, bank, "b")(torch.rand(2, 1, 32, 32)).shape == (2, 2)


@pytest.mark.integration
def test_the_ray_task_normalises_as_the_model_does(ray_session: None) -> None:
    """Training in a Ray task with the model's normalisation gives the weights in-process training of
    network_for(model) gives, and not those of the same training without it."""
    from tests.learner.one_candidate import train_on_ray

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 1, 16, 16), dtype=np.float32), rng.integers(0, 3, 16)
    cfg = TrainConfig(epochs=1, batch_size=8, fisher_samples=8)
    spec, norm = (1, 16, 16, 3), ((0.3,), (0.2,))
    remote = train_on_ray("clreg.learner.models:small_cnn", {}, spec, None, None, x, y, "a", cfg, normalisation=norm)
    plain = train_on_ray("clreg.learner.models:small_cnn", {}, spec, None, None, x, y, "a", cfg)
    torch.manual_seed(cfg.seed)  # the task seeds a fresh model the same way
    model = Model(name="m", input=InputSpec(channels=1, height=16, width=16, classes=3),
                  factory="clreg.learner.models:small_cnn", normalisation=Normalisation(mean=[0.3], std=[0.2]))
    local = train_site(network_for(model), x, y, "a", EWCState(), cfg)
    assert remote.weights == local.weights and plain.weights != local.weights
