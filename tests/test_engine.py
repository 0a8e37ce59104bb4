"""Training loop pieces: the LR schedule, sharding, prediction with and without D4 test-time augmentation."""

import math

import pytest
import torch

from eurosat.engine import (Runtime, evaluate, make_optimizer, make_scheduler, mix_batch, predict, shard,
                            train_one_epoch, warmup_cosine)
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


def test_mixup_blends_each_input_with_its_partner_in_reversed_order():
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mixed, lam = mix_batch(x, mixup_alpha=0.4, cutmix_alpha=0.0, generator=torch.Generator().manual_seed(1))
    again, same = mix_batch(x, mixup_alpha=0.4, cutmix_alpha=0.0, generator=torch.Generator().manual_seed(1))
    assert 0.0 < lam < 1.0 and lam == same and torch.equal(mixed, again)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0))


def test_cutmix_pastes_one_box_and_reports_the_share_it_left():
    x = torch.zeros(4, 3, 10, 10)
    x[:2] = 1.0  # the first half ones, the second zeros: reversed, each image meets the other kind
    for seed in range(5):
        mixed, lam = mix_batch(x, mixup_alpha=0.0, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(seed))
        pasted = (mixed[0] == 0).all(dim=0)  # image 0 (ones) got a box of image 3 (zeros)
        assert lam == pytest.approx(1 - pasted.float().mean().item())
        assert torch.equal(mixed[0] == 0, (mixed[3] == 1))  # the same box in every image
        if pasted.any():
            rows, cols = pasted.any(dim=1).nonzero().flatten(), pasted.any(dim=0).nonzero().flatten()
            assert pasted.sum() == len(rows) * len(cols)  # one rectangle


def test_the_weight_average_follows_its_warm_up_and_is_resumable(mini_tensors):
    """timm's ModelEmaV3 as the run uses it: step t mixes in the new weights with 1 - decay, decay = (t-1) / (t+9)."""
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = build_model("test_resnet", 10)
    cfg = DataConfig.for_model(model, 64)
    images, labels = mini_tensors["train"]
    optimizer = make_optimizer(model, "sgd", 0.05, 0.0)
    scheduler = make_scheduler(optimizer, total_steps=12, warmup_steps=1)
    average = ModelEmaV3(model, decay=0.998, use_warmup=True, warmup_gamma=10.0, warmup_power=1.0)
    snapshots = []

    def snapshot(stats):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()})

    train_one_epoch(model, images[:96], labels[:96], transform=eval_transform(cfg), optimizer=optimizer,
                    scheduler=scheduler, batch_size=32, generator=torch.Generator().manual_seed(0), runtime=CPU,
                    average=average, progress=snapshot)
    assert len(snapshots) == 3
    expected = dict(snapshots[0])  # step 1 copies the weights
    for step, weights in enumerate(snapshots[1:], start=2):
        decay = (step - 1) / (step - 1 + 10)
        expected = {name: decay * expected[name] + (1 - decay) * weights[name] for name in expected}
    for name, value in average.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(average.module.state_dict().values(),
                                                      model.state_dict().values()))
    restored = ModelEmaV3(build_model("test_resnet", 10), decay=0.998, use_warmup=True, warmup_gamma=10.0,
                          warmup_power=1.0)
    restored.load_state_dict(average.state_dict())
    for a, b in zip(restored.module.state_dict().values(), average.module.state_dict().values()):
        assert torch.equal(a, b)
