"""Distillation: the teacher's 8-view answers as soft targets, their loss, and a student that learns from them."""

import pytest
import torch
import torch.nn.functional as F

from eurosat import hub
from eurosat.distill import SoftTargets, soft_cross_entropy
from eurosat.engine import Runtime, make_optimizer, make_scheduler, predict, train_one_epoch
from eurosat.model import build_model
from eurosat.transforms import DataConfig, dihedral, eval_transform, train_transform

CPU = Runtime(torch.device("cpu"))


def test_the_soft_loss_is_the_kl_divergence_plus_the_teachers_entropy():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(16, 10, generator=generator), torch.randn(16, 10, generator=generator)
    for temperature in (1.0, 2.0, 4.0):
        target = (teacher / temperature).softmax(1)
        kl = F.kl_div((student / temperature).log_softmax(1), target, reduction="batchmean")
        entropy = -(target * target.log()).sum(1).mean()
        assert soft_cross_entropy(student, target, temperature).item() == pytest.approx(
            (kl + entropy).item() * temperature ** 2, rel=1e-5)


def test_targets_are_picked_by_tile_and_mixed_as_the_inputs_are():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0]])
    targets = SoftTargets(logits, weight=0.5, temperature=1.0)
    index = torch.tensor([2, 0])
    torch.testing.assert_close(targets.probabilities(index, torch.device("cpu")), logits[index].softmax(1))
    student = torch.zeros(2, 2)
    mixed = 0.7 * logits[index].softmax(1) + 0.3 * logits[index].flip(0).softmax(1)
    assert targets.loss(student, index, lam=0.7).item() == pytest.approx(
        soft_cross_entropy(student, mixed, 1.0).item(), rel=1e-6)


def test_the_teachers_answer_is_the_same_for_every_view_of_a_tile(trained_run, mini_tensors):
    teacher = hub.load(str(trained_run))
    images = mini_tensors["train"][0][:12]
    transform = eval_transform(teacher.data_config)
    answers = predict(teacher.model, images, transform=transform, runtime=CPU, tta=True)
    for code in (1, 5, 7):
        turned = predict(teacher.model, dihedral(images, torch.full((12,), code)), transform=transform, tta=True,
                         runtime=CPU)
        torch.testing.assert_close(turned, answers, rtol=0, atol=1e-4)


def agreement(model, teacher_answers, images, transform) -> float:
    return (predict(model, images, transform=transform, runtime=CPU).argmax(1) == teacher_answers.argmax(1)).float().mean().item()


def test_a_student_of_the_teacher_agrees_with_it_more_than_one_taught_by_the_labels(trained_run, mini_tensors):
    teacher = hub.load(str(trained_run))
    images, labels = mini_tensors["train"]
    transform = eval_transform(teacher.data_config)
    answers = predict(teacher.model, images, transform=transform, runtime=CPU, tta=True)
    # Shuffled labels carry nothing of the teacher: only the soft targets can teach its answers.
    noisy = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    scores = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        student = build_model("test_resnet", 10)
        cfg = DataConfig.for_model(student, 64)
        optimizer = make_optimizer(student, "adamw", 3e-3, 0.0)
        scheduler = make_scheduler(optimizer, total_steps=8 * 6, warmup_steps=3)
        generator = torch.Generator().manual_seed(0)
        targets = SoftTargets(answers, weight=weight, temperature=2.0) if weight else None
        for _ in range(8):
            train_one_epoch(student, images, noisy, transform=train_transform(cfg, generator), optimizer=optimizer,
                            scheduler=scheduler, batch_size=32, generator=generator, runtime=CPU, targets=targets)
        scores[weight] = agreement(student, answers, images, transform)
    assert scores[1.0] > scores[0.0] + 0.1, scores
