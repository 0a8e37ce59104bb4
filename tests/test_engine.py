"""Training loop pieces: the LR schedule, sharding, prediction with and without D4 test-time augmentation."""

import math

import pytest
import torch

from eurosat.engine import Runtime, evaluate, predict, shard, train_one_epoch, warmup_cosine, make_optimizer, make_scheduler
from eurosat.model import build_model
from eurosat.transforms import DataConfig, eval_transform, train_transform

CPU = Runtime(torch.device("cpu"))


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, total=100, warmup=10) for s in range(100)]
    assert values[0] == pytest.approx(0.1)
    assert values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0)
    assert values[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert values[-1] < 0.001
    assert all(a >= b for a, b in zip(values[9:], values[10:]))


def test_shard_gives_equal_disjoint_parts():
    order = torch.randperm(11)
    parts = [shard(order, Runtime(torch.device("cpu"), rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5
    assert not set(parts[0].tolist()) & set(parts[1].tolist())


def test_predict_gives_logits_and_tta_is_the_mean_of_the_eight_views(mini_tensors):
    torch.manual_seed(0)
    model = build_model("test_resnet", 10).eval()
    to_input = eval_transform(DataConfig.for_model(model, 64))
    images = mini_tensors["test"][0][:6]
    plain = predict(model, images, transform=to_input, runtime=CPU)
    tta = predict(model, images, transform=to_input, runtime=CPU, tta=True)
    assert plain.shape == tta.shape == (6, 10) and plain.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(plain, model(to_input(images)), atol=1e-5)
        views = [torch.rot90(images.flip(-1) if code >= 4 else images, code % 4, (-2, -1)) for code in range(8)]
        expected = torch.stack([model(to_input(v)) for v in views]).mean(0)
    assert torch.allclose(tta, expected, atol=1e-4)
    assert not torch.allclose(plain, tta, atol=1e-4)  # a random net is not D4-invariant


def test_one_epoch_learns_the_mini_train_split(mini_tensors):
    torch.manual_seed(0)
    model = build_model("test_resnet", 10)
    cfg = DataConfig.for_model(model, 64)
    images, labels = mini_tensors["train"]
    optimizer = make_optimizer(model, "adamw", 3e-3, 0.0)
    scheduler = make_scheduler(optimizer, total_steps=8 * 6, warmup_steps=3)
    generator = torch.Generator().manual_seed(0)
    before = evaluate(model, images, labels, transform=eval_transform(cfg), runtime=CPU)
    stats = [train_one_epoch(model, images, labels, transform=train_transform(cfg, generator), optimizer=optimizer,
                             scheduler=scheduler, batch_size=32, generator=generator, runtime=CPU)
             for _ in range(8)]
    after = evaluate(model, images, labels, transform=eval_transform(cfg), runtime=CPU)
    assert stats[0]["images"] == 192  # 200 images, ragged tail of 8 dropped
    assert stats[-1]["loss"] < stats[0]["loss"]
    assert after["loss"] < before["loss"]
