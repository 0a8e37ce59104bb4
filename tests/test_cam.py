"""Heatmaps: the single-pass CAM against pytorch-grad-cam's GradCAM, every offered method, and the overlay."""

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from eurosat.cam import cam_methods, library_cam, overlay, single_pass_cam
from eurosat.model import build_model, cam_target_layer, linear_head
from eurosat.transforms import DataConfig, eval_transform

TOLERANCE = 1e-5  # on maps scaled to [0, 1]; the two routes agree to about 1e-6 here


def model_and_inputs(name: str, size: int, tiles: torch.Tensor, **model_args) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name, 10, model_args=model_args).eval()
    return model, eval_transform(DataConfig.for_model(model, size))(tiles)


@pytest.fixture(scope="module")
def tiles(class_tiles) -> torch.Tensor:
    """Six real test tiles of different classes (uint8, N x 3 x 64 x 64)."""
    return class_tiles[:6]


# 96 px gives test_resnet and resnet18 a 3x3 last feature map: coarse enough to be fast, with room to differ.
@pytest.fixture(scope="module", params=[("test_resnet", 64), ("resnet18", 96)], ids=["test_resnet", "resnet18"])
def model_inputs(request, tiles):
    name, size = request.param
    return model_and_inputs(name, size, tiles)


def library_gradcam(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    with GradCAM(model=model, target_layers=[cam_target_layer(model)]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def plain_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


def test_single_pass_equals_library_gradcam_for_top1_and_another_class(model_inputs):
    model, x = model_inputs
    logits = plain_logits(model, x)
    top1 = logits.argmax(dim=1)
    third = logits.argsort(dim=1, descending=True)[:, 2]  # a class the network does not favour
    for classes, given in ((top1, None), (third, third)):
        cam_logits, maps = single_pass_cam(model, x, given)
        expected = library_gradcam(model, x, classes)
        assert maps.shape == expected.shape == (len(x), *x.shape[-2:])
        assert np.abs(maps - expected).max() < TOLERANCE
        torch.testing.assert_close(cam_logits, logits, rtol=0, atol=1e-5)
    # The two classes' maps differ: the chosen class is really the one drawn.
    assert np.abs(single_pass_cam(model, x, top1)[1] - single_pass_cam(model, x, third)[1]).max() > 0.1


def test_the_predictor_takes_the_single_pass_only_where_it_is_exact(tiles, label_names):
    from eurosat.hub import Checkpoint
    from eurosat.inference import Predictor
    from eurosat.transforms import DataConfig

    model, x = model_and_inputs("test_resnet", 64, tiles, global_pool="max")
    assert linear_head(model) is None
    with pytest.raises(ValueError, match="global average pooling"):
        single_pass_cam(model, x)
    predictor = Predictor(Checkpoint(model, label_names, DataConfig.for_model(model, 64), "max-pool"))
    classes = plain_logits(model, x).argmax(dim=1)
    for i, tile in enumerate(tiles[:3]):
        analysis = predictor.analyze(Image.fromarray(tile.permute(1, 2, 0).numpy()))
        assert np.abs(analysis.heatmap - library_gradcam(model, x[i:i + 1], classes[i:i + 1])[0]).max() < TOLERANCE


@pytest.fixture(scope="module")
def resnet18_inputs(tiles):
    return model_and_inputs("resnet18", 96, tiles)


@pytest.mark.parametrize("method", list(cam_methods()))
def test_every_method_gives_scaled_maps_at_input_size_and_the_plain_logits(method, resnet18_inputs):
    model, x = resnet18_inputs
    logits, maps = library_cam(model, x, method)  # the top-1 class of each tile
    assert maps.shape == (len(x), 96, 96) and maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert np.allclose(maps.min(axis=(1, 2)), 0) and np.all(maps.max(axis=(1, 2)) > 0.999)
    assert len({m.tobytes() for m in maps}) == len(maps), "every tile gets a map of its own"
    torch.testing.assert_close(logits, plain_logits(model, x), rtol=0, atol=1e-5)


def test_an_unknown_method_is_named_with_the_choices(tiles):
    model, x = model_and_inputs("test_resnet", 64, tiles[:1])
    with pytest.raises(ValueError, match=r"Unknown CAM method 'ScoreCAM'; choose one of: GradCAM, GradCAM\+\+"):
        library_cam(model, x, "ScoreCAM")


def test_overlay_at_opacity_0_is_the_tile_enlarged_pixel_for_pixel(tiles):
    rgb = tiles[0].permute(1, 2, 0).numpy()
    heat = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    picture = overlay(rgb, heat, opacity=0.0)
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8
    assert np.array_equal(picture, rgb.repeat(4, axis=0).repeat(4, axis=1))


def test_overlay_at_opacity_1_is_the_colour_map_alone(tiles):
    heat = np.zeros((64, 64), dtype=np.float32)
    heat[:, 32:] = 1.0
    first, second = (overlay(tiles[i].permute(1, 2, 0).numpy(), heat, opacity=1.0) for i in (0, 1))
    assert np.array_equal(first, second), "the tile does not show through"
    # Jet: 0 is dark blue, 1 is dark red; away from the seam each half is one flat colour.
    cold, hot = first[:, :100].reshape(-1, 3), first[:, 156:].reshape(-1, 3)
    assert np.ptp(cold, axis=0).max() == 0 and np.ptp(hot, axis=0).max() == 0
    assert cold[0, 2] > 100 and cold[0, :2].max() < 10
    assert hot[0, 0] > 100 and hot[0, 1:].max() < 10


def test_the_hot_region_of_a_heatmap_turns_red(tiles):
    grey = np.full((64, 64, 3), 128, dtype=np.uint8)
    heat = np.zeros((8, 8), dtype=np.float32)  # a coarse map, as the network gives, is enlarged smoothly
    heat[:2, :2] = 1.0
    picture = overlay(grey, heat, opacity=0.5).astype(int)
    hot, cold = picture[:40, :40].reshape(-1, 3), picture[160:, 160:].reshape(-1, 3)
    assert (hot[:, 0] - hot[:, 2]).min() > 40, "the hot corner is red over blue"
    assert (cold[:, 2] - cold[:, 0]).min() > 40, "the rest is blue over red"


def test_overlay_enlarges_only_small_images_and_clamps_opacity():
    rgb = np.arange(300 * 200 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    heat = np.ones((7, 7), dtype=np.float32)
    assert overlay(rgb, heat, opacity=0.0).shape == (200, 300, 3)
    assert np.array_equal(overlay(rgb, heat, opacity=-3.0), rgb)
    assert np.array_equal(overlay(rgb, heat, opacity=5.0), overlay(np.zeros_like(rgb), heat, opacity=1.0))
    assert overlay(np.zeros((10, 3, 3), np.uint8), heat).shape == (260, 78, 3)
    Image.fromarray(overlay(rgb, heat))  # a valid picture for PIL (uint8 RGB, contiguous)
