"""The one view-merging path: what evaluation scores is what the app serves, in any memory layout."""

import pytest
import torch

from conftest import REPO
from eurosat import hub
from eurosat.config import BUNDLED_MODEL
from eurosat.engine import Runtime, predict
from eurosat.inference import Predictor
from eurosat.transforms import dihedral, eval_transform
from eurosat.views import VIEWS, d4_views, forward, in_layout, is_channels_last, merge


@pytest.fixture(scope="module", params=["bundled", "trained"])
def checkpoint(request, trained_run):
    return hub.load(str(REPO / BUNDLED_MODEL if request.param == "bundled" else trained_run))


@pytest.mark.parametrize("channels_last", [False, True])
def test_served_logits_equal_the_evaluated_ones(checkpoint, mini_tensors, channels_last):
    images = mini_tensors["test"][0][:40]
    model = checkpoint.model.eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    evaluated = predict(model, images, transform=eval_transform(checkpoint.data_config), runtime=Runtime(
        torch.device("cpu")), batch_size=64, tta=True)
    predictor = Predictor(checkpoint, tta=True, channels_last=channels_last)
    served = torch.cat([predictor.logits(predictor.prepare(images[i:i + 8])) for i in range(0, len(images), 8)])
    assert served.shape == evaluated.shape == (40, len(checkpoint.label_names))
    torch.testing.assert_close(served, evaluated, rtol=0, atol=1e-6)
    # And both are the mean of the eight views' own logits, each view computed on its own.
    x = eval_transform(checkpoint.data_config)(images[:4])
    with torch.inference_mode():
        one_by_one = sum(model(in_layout(model, dihedral(x, torch.full((4,), code)))) for code in range(VIEWS)) / VIEWS
    torch.testing.assert_close(served[:4], one_by_one, rtol=0, atol=1e-5)


def test_the_merged_answer_is_the_same_for_every_view_of_a_tile(checkpoint, mini_tensors):
    x = eval_transform(checkpoint.data_config)(mini_tensors["test"][0][:6])
    _, upright = forward(checkpoint.model.eval(), x, tta=True)
    _, single = forward(checkpoint.model, x, tta=False)
    for code in range(1, VIEWS):
        _, turned = forward(checkpoint.model, dihedral(x, torch.full((6,), code)), tta=True)
        torch.testing.assert_close(turned, upright, rtol=0, atol=1e-4)
    assert not torch.allclose(single, upright, atol=1e-4)  # one view alone is another answer


def test_views_are_view_major_and_merge_averages_them():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    views = d4_views(x)
    assert views.shape == (16, 3, 2, 2)
    torch.testing.assert_close(views[:2], x)  # the upright views first
    torch.testing.assert_close(views[2:4], torch.rot90(x, 1, dims=(-2, -1)))
    logits = torch.arange(16.0).view(16, 1).repeat(1, 3)
    torch.testing.assert_close(merge(logits, 2), torch.tensor([[7.0] * 3, [8.0] * 3]))
    torch.testing.assert_close(merge(logits[:2], 2), logits[:2])


def test_the_input_layout_follows_the_weights(checkpoint):
    model = checkpoint.model
    x = torch.zeros(2, 3, 64, 64)
    model.to(memory_format=torch.channels_last)
    assert is_channels_last(model) and in_layout(model, x).is_contiguous(memory_format=torch.channels_last)
    assert not in_layout(model, x).is_contiguous()
    model.to(memory_format=torch.contiguous_format)
    assert not is_channels_last(model) and in_layout(model, x).is_contiguous()
