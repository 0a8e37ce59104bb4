"""Models: timm classifiers with our head, the layers CAM reads, and a short training that must really learn."""

import pytest
import torch
from torch import nn

from eurosat.config import PRESETS
from eurosat.engine import Runtime, evaluate, make_optimizer, make_scheduler, train_one_epoch
from eurosat.model import build_model, cam_target_layer, features_and_logits, linear_head
from eurosat.transforms import DataConfig, eval_transform, train_transform

NARROW = PRESETS["cpu-quick"]["model_args"]  # the quarter-width ResNet-18 the CPU recipe trains


@pytest.fixture(scope="module")
def batch(mini_tensors) -> torch.Tensor:
    """Four real tiles, normalised as the ResNets expect them, at their native 64 px."""
    images = mini_tensors["test"][0][:4]
    return eval_transform(DataConfig((64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))(images)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet50", 10).eval()


@pytest.mark.parametrize("name, args, width", [("test_resnet", None, 96), ("resnet18", NARROW, 128),
                                               ("resnet18", None, 512)])
def test_build_model_gives_a_fresh_head_with_one_output_per_class(batch, name, args, width):
    torch.manual_seed(0)
    model = build_model(name, 10, model_args=args).eval()
    assert isinstance(model.fc, nn.Linear) and (model.fc.in_features, model.fc.out_features) == (width, 10)
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    assert logits.std(dim=0).max() > 0  # different tiles, different outputs
    assert build_model(name, 3, model_args=args).fc.out_features == 3


def test_cam_target_layer_is_the_last_stage(resnet50, batch):
    layer = cam_target_layer(resnet50)
    assert layer is resnet50.layer4
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, key=key: seen.__setitem__(key, out))
             for key, m in (("stage", layer), ("block", resnet50.layer4[-1]))]
    with torch.no_grad():
        resnet50(batch)
    for hook in hooks:
        hook.remove()
    assert seen["stage"].shape == (4, 2048, 2, 2)  # 64 px / 32: still a spatial map
    assert torch.equal(seen["stage"], seen["block"])
    small = build_model("test_resnet", 10)
    assert cam_target_layer(small) is small.layer4


def test_linear_head_is_the_fc_only_where_the_cam_shortcut_is_exact(resnet50):
    assert linear_head(resnet50) is resnet50.fc
    assert linear_head(build_model("test_resnet", 10)).out_features == 10
    assert linear_head(build_model("vit_tiny_patch16_224", 10)) is None  # class-token pooling
    assert linear_head(build_model("resnet18", 10, model_args=dict(global_pool="max"))) is None
    assert linear_head(build_model("resnet18", 10, model_args=dict(drop_rate=0.2))) is None


def test_features_and_logits_is_one_ordinary_forward(resnet50, batch):
    with torch.no_grad():
        features, logits = features_and_logits(resnet50, batch)
        assert torch.equal(logits, resnet50(batch))
    assert features.shape == (4, 2048, 2, 2)
    # With a linear head, the logits are the head applied to the spatial mean of those features.
    direct = resnet50.fc(features.mean(dim=(2, 3)))
    assert torch.allclose(logits, direct, atol=1e-5)


# --- a short training that must learn -----------------------------------------------------------------------------

# Measured on the mini splits (seeds 0-3): a normal run scores 0.55-0.61 on the 100 test tiles; with shuffled
# labels or frozen weights 0.08-0.18 (chance is 0.10). The threshold sits between, with room on both sides.
THRESHOLD = 0.35


def train_briefly(train, test, control: str, seed: int = 0, epochs: int = 10) -> float:
    """The narrow ResNet-18 trained with the engine's own epoch and evaluation; returns test accuracy."""
    torch.manual_seed(seed)
    model = build_model("resnet18", 10, model_args=NARROW)
    cfg = DataConfig.for_model(model, 64)
    images, labels = train
    if control == "shuffled labels":
        labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))]
    runtime = Runtime(torch.device("cpu"))
    batch_size = 32
    steps = len(labels) // batch_size
    lr = 0.0 if control == "frozen weights" else 5e-3
    optimizer = make_optimizer(model, "adamw", lr, 0.01)
    scheduler = make_scheduler(optimizer, steps * epochs, steps)
    generator = torch.Generator().manual_seed(seed)
    augment = train_transform(cfg, generator)
    for _ in range(epochs):
        train_one_epoch(model, images, labels, transform=augment, optimizer=optimizer, scheduler=scheduler,
                        batch_size=batch_size, generator=generator, runtime=runtime)
    return evaluate(model, *test, transform=eval_transform(cfg), runtime=runtime)["accuracy"]


@pytest.mark.parametrize("control", ["none", "shuffled labels", "frozen weights"])
def test_a_short_training_beats_chance_and_broken_pipelines_do_not(mini_tensors, control):
    accuracy = train_briefly(mini_tensors["train"], mini_tensors["test"], control)
    if control == "none":
        assert accuracy > THRESHOLD, f"test accuracy {accuracy:.2f} after training (chance is 0.10)"
    else:
        assert accuracy < THRESHOLD, f"test accuracy {accuracy:.2f} with {control}: the threshold does not discriminate"
