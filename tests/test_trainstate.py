"""Resumable state: exact round trip without pickle, atomic writes, clear errors for damaged files."""

import pytest
import torch

from eurosat.engine import make_optimizer, make_scheduler
from eurosat.model import build_model
from eurosat.trainstate import StateError, flatten, load_state, save_state, unflatten


def _trained_objects():
    torch.manual_seed(0)
    model = build_model("test_resnet", 10)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05)
    scheduler = make_scheduler(optimizer, total_steps=10, warmup_steps=2)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def test_flatten_round_trip_keeps_int_keys_tuples_as_lists_and_tensors():
    obj = {"state": {0: {"step": torch.tensor(3.0), "m": torch.arange(4)}}, "groups": [{"betas": (0.9, 0.99)}]}
    tensors = {}
    back = unflatten(flatten(obj, tensors), tensors)
    assert list(back["state"]) == [0]
    assert torch.equal(back["state"][0]["m"], torch.arange(4))
    assert back["groups"][0]["betas"] == [0.9, 0.99]
    assert len(tensors) == 2


def test_optimizer_and_scheduler_resume_exactly(tmp_path):
    model, optimizer, scheduler = _trained_objects()
    generator = torch.Generator().manual_seed(5)
    path = save_state(tmp_path / "state.safetensors", {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(), "run": {"epoch": 3, "history": [{"val_accuracy": 0.5}]}})
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]  # no temp file left behind

    state = load_state(path)
    model2 = build_model("test_resnet", 10)
    optimizer2 = make_optimizer(model2, "adamw", 1e-3, 0.05)
    scheduler2 = make_scheduler(optimizer2, total_steps=10, warmup_steps=2)
    model2.load_state_dict(state["model"])
    optimizer2.load_state_dict(state["optimizer"])
    scheduler2.load_state_dict(state["scheduler"])
    generator2 = torch.Generator()
    generator2.set_state(state["generator"])

    assert state["run"] == {"epoch": 3, "history": [{"val_accuracy": 0.5}]}
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(torch.randperm(50, generator=generator2), torch.randperm(50, generator=generator))
    # One more identical step must give identical weights: the optimizer moments came back exactly.
    x = torch.randn(4, 3, 32, 32)
    for m, opt in ((model, optimizer), (model2, optimizer2)):
        opt.zero_grad()
        m(x).logsumexp(1).mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_state_names_the_file(tmp_path, damage):
    model, _, _ = _trained_objects()
    path = save_state(tmp_path / "train_state.safetensors", {"model": model.state_dict()})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a safetensors file" * 10,
                      "empty": b""}[damage])
    with pytest.raises(StateError) as err:
        load_state(path)
    assert str(path) in str(err.value)
    assert "corrupted or truncated" in str(err.value)
