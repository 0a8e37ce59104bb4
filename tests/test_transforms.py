"""Preprocessing: the data config a checkpoint carries, resizing and normalisation, and the exact D4 augmentation."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eurosat import hub
from eurosat.model import build_model
from eurosat.transforms import DataConfig, cutout, dihedral, eval_transform, random_crop, resize, train_transform

IMAGENET = DataConfig((224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")


def numpy_d4(image: torch.Tensor, code: int) -> torch.Tensor:
    """The D4 element `code` (4 * flip + quarter turns) written with numpy, independently of the code under test."""
    hwc = image.permute(1, 2, 0).numpy()
    if code >= 4:
        hwc = np.fliplr(hwc)
    return torch.from_numpy(np.rot90(hwc, code % 4).copy()).permute(2, 0, 1)


def codes(*values: int) -> torch.Tensor:
    return torch.tensor(values)


@pytest.fixture(scope="module")
def tiles(mini_tensors) -> torch.Tensor:
    return mini_tensors["test"][0][:8]


# --- DataConfig ---------------------------------------------------------------------------------------------------


def test_data_config_round_trips_through_a_saved_checkpoint(tmp_path, label_names):
    model = build_model("resnet18", len(label_names), model_args=dict(channels=[16, 32, 64, 128], stem_width=16))
    cfg = DataConfig.for_model(model, 96)
    assert cfg == DataConfig((96, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),  # ImageNet, at our size
                             model.pretrained_cfg["interpolation"])
    hub.save(model, tmp_path, label_names=label_names, data_config=cfg)
    pretrained_cfg = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert DataConfig.from_pretrained_cfg(pretrained_cfg) == cfg
    assert hub.load(str(tmp_path)).data_config == cfg


def test_from_pretrained_cfg_reads_non_square_sizes_and_falls_back_to_bicubic():
    cfg = DataConfig.from_pretrained_cfg({"input_size": [3, 48, 80], "mean": [0.1, 0.2, 0.3], "std": [1, 2, 3],
                                          "interpolation": "lanczos"})
    assert cfg == DataConfig((48, 80), (0.1, 0.2, 0.3), (1, 2, 3), "bicubic")
    assert DataConfig.from_pretrained_cfg({"input_size": [3, 8, 8], "mean": [0] * 3, "std": [1] * 3}).interpolation == "bicubic"


def test_to_timm_makes_timm_resize_whole_tiles(tiles):
    """timm's own eval pipeline, fed the saved data config, squashes the whole tile as eval_transform does."""
    from PIL import Image
    from timm.data import create_transform

    cfg = DataConfig((96, 96), IMAGENET.mean, IMAGENET.std, "bicubic")
    timm_transform = create_transform(**cfg.to_timm(), is_training=False)
    wide = tiles[0][:, :, :]  # (3, 64, 64)
    wide = torch.cat([wide, wide.flip(-1)], dim=-1)  # 64 x 128: cropping would lose half of it
    theirs = timm_transform(Image.fromarray(wide.permute(1, 2, 0).numpy()))
    ours = eval_transform(cfg)(wide[None])[0]
    assert theirs.shape == ours.shape == (3, 96, 96)
    # PIL and torch resample differently, so close, not equal; a centre crop would differ by far more.
    assert (theirs - ours).abs().mean() < 0.05


# --- eval_transform -----------------------------------------------------------------------------------------------


def test_eval_transform_shape_dtype_and_normalisation(tiles):
    out = eval_transform(IMAGENET)(tiles)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 224, 224)
    assert eval_transform(IMAGENET, torch.bfloat16)(tiles).dtype == torch.bfloat16
    grey = torch.tensor([round(m * 255) for m in IMAGENET.mean], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 64, 64)
    assert eval_transform(IMAGENET)(grey).abs().max() < 0.01  # the mean colour maps to ~0 (uint8 rounding only)
    white = eval_transform(IMAGENET)(torch.full((1, 3, 64, 64), 255, dtype=torch.uint8))
    expected = [(1 - m) / s for m, s in zip(IMAGENET.mean, IMAGENET.std)]
    assert torch.allclose(white[0, :, 100, 100], torch.tensor(expected), atol=1e-5)
    assert tiles.dtype == torch.uint8 and tiles.shape == (8, 3, 64, 64)  # the input is left alone


def test_eval_transform_at_the_native_size_is_only_normalisation(tiles):
    cfg = DataConfig((64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    expected = (tiles.float() / 255 - 0.5) / 0.25
    assert torch.allclose(eval_transform(cfg)(tiles), expected, atol=1e-6)


def test_resize_from_64_to_224_keeps_the_content(tiles):
    x = tiles.float() / 255
    up = resize(x, (224, 224), "bicubic")
    assert up.shape == (8, 3, 224, 224)
    back = F.interpolate(up, size=(64, 64), mode="area")
    assert (back - x).abs().mean() < 0.02
    assert torch.allclose(up.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.01)
    assert resize(x, (64, 64), "bicubic") is x
    flat = torch.full((1, 3, 64, 64), 0.3)
    assert torch.allclose(resize(flat, (224, 224), "bicubic"), torch.full((1, 3, 224, 224), 0.3), atol=1e-6)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_shrinking_a_large_photo_is_antialiased(mode):
    """A one-pixel checkerboard (4000 x 3000) shrunk to a tile is flat grey; without antialiasing it is noise."""
    rows = torch.arange(3000).view(-1, 1)
    cols = torch.arange(4000).view(1, -1)
    board = (((rows + cols) % 2) * 255).to(torch.uint8).expand(1, 3, 3000, 4000)
    cfg = DataConfig((224, 224), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), mode)
    small = eval_transform(cfg)(board)
    assert small.shape == (1, 3, 224, 224)
    assert abs(small.mean().item() - 0.5) < 0.01
    assert small.std().item() < 0.02
    aliased = F.interpolate(board.float() / 255, size=(224, 224), mode=mode, antialias=False)
    assert aliased.std().item() > 0.1  # the control: the same resize without antialias does alias


# --- dihedral -----------------------------------------------------------------------------------------------------


def test_each_of_the_eight_codes_is_its_d4_element(tiles):
    for code in range(8):
        out = dihedral(tiles, torch.full((len(tiles),), code))
        assert all(torch.equal(out[i], numpy_d4(tiles[i], code)) for i in range(len(tiles))), code
    views = dihedral(tiles[:1].expand(8, -1, -1, -1), torch.arange(8))
    assert len({v.numpy().tobytes() for v in views}) == 8  # a real tile has 8 distinct views


def test_codes_are_exact_permutations_of_the_pixels(tiles):
    out = dihedral(tiles, torch.arange(8))
    for i in range(8):
        assert torch.equal(out[i].flatten(1).sort(dim=1).values, tiles[i].flatten(1).sort(dim=1).values)
    assert out.dtype == tiles.dtype


def test_mixed_codes_in_one_batch_and_the_input_is_untouched(tiles):
    before = tiles.clone()
    mixed = codes(3, 0, 7, 7, 1, 4, 6, 2)
    out = dihedral(tiles, mixed)
    assert torch.equal(tiles, before)
    for i, code in enumerate(mixed.tolist()):
        assert torch.equal(out[i], numpy_d4(tiles[i], code))


def test_the_codes_form_the_group_d4(tiles):
    x = tiles[:1]
    view = {c: dihedral(x, codes(c)) for c in range(8)}
    key = {v.numpy().tobytes(): c for c, v in view.items()}

    def apply(image, code):
        return dihedral(image, codes(code))

    assert torch.equal(apply(apply(apply(apply(x, 1), 1), 1), 1), x)  # four quarter turns
    assert torch.equal(apply(apply(x, 2), 2), x)
    for flip in range(4, 8):
        assert torch.equal(apply(apply(x, flip), flip), x)  # every reflection is its own inverse
    table = {}
    for a, b in itertools.product(range(8), repeat=2):
        composed = apply(view[a], b).numpy().tobytes()
        assert composed in key, (a, b)  # closure: any two codes in a row are one code
        table[a, b] = key[composed]
    for a in range(8):
        assert sorted(table[a, b] for b in range(8)) == list(range(8))  # each row of the table is a permutation
    assert table[4, 1] != table[1, 4]  # and the group is not commutative, as D4 is not


def test_non_square_images_accept_flips_and_half_turns():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.uint8).view(2, 3, 4, 6)
    for code in (0, 2, 4, 6):
        out = dihedral(x, torch.full((2,), code))
        assert out.shape == x.shape
        assert torch.equal(out[1], numpy_d4(x[1], code))


# --- train_transform ----------------------------------------------------------------------------------------------


def _which_view(out: torch.Tensor, image: torch.Tensor, cfg: DataConfig, allowed=range(8)) -> int | None:
    to_input = eval_transform(cfg)
    matches = [c for c in allowed if torch.equal(out, to_input(numpy_d4(image, c)[None])[0])]
    return matches[0] if len(matches) == 1 else None


def test_train_transform_is_a_random_d4_view_reproducible_for_a_seed(mini_tensors):
    images = mini_tensors["train"][0][:64]
    cfg = DataConfig((64, 64), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    first = train_transform(cfg, torch.Generator().manual_seed(0))(images)
    again = train_transform(cfg, torch.Generator().manual_seed(0))(images)
    other = train_transform(cfg, torch.Generator().manual_seed(1))(images)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    seen = [_which_view(first[i], images[i], cfg) for i in range(len(images))]
    assert None not in seen  # each output is exactly one of the 8 views, normalised
    assert set(seen) == set(range(8))  # and all 8 occur
    assert first.shape == (64, 3, 64, 64) and first.dtype == torch.float32


def test_train_transform_gives_non_square_tiles_only_flips_and_half_turns(mini_tensors):
    images = mini_tensors["train"][0][:48, :, :, :40]  # 64 x 40 crops of real tiles
    cfg = DataConfig((64, 40), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = train_transform(cfg, torch.Generator().manual_seed(0))(images)
    assert out.shape == (48, 3, 64, 40)
    seen = [_which_view(out[i], images[i], cfg, allowed=(0, 2, 4, 6)) for i in range(len(images))]
    assert set(seen) == {0, 2, 4, 6}


def test_train_transform_then_resizes_to_the_model_input(tiles):
    out = train_transform(IMAGENET, torch.Generator().manual_seed(0))(tiles)
    assert out.shape == (8, 3, 224, 224)
    # A D4 view permutes pixels, so per-tile colour statistics are those of the plain eval transform.
    plain = eval_transform(IMAGENET)(tiles)
    assert torch.allclose(out.mean(dim=(2, 3)), plain.mean(dim=(2, 3)), atol=1e-4)


# --- windows, translation, cutout ----------------------------------------------------------------------------------


def _offset_of(window: torch.Tensor, padded: torch.Tensor) -> tuple[int, int] | None:
    """Where `window` sits in `padded` (C, H, W), if it is an exact slice of it."""
    size = window.shape[-1]
    for top in range(padded.shape[-2] - size + 1):
        for left in range(padded.shape[-1] - size + 1):
            if torch.equal(padded[:, top:top + size, left:left + size], window):
                return top, left
    return None


def test_random_crop_cuts_exact_windows_at_random_offsets(tiles):
    windows = random_crop(tiles, 48, torch.Generator().manual_seed(0))
    again = random_crop(tiles, 48, torch.Generator().manual_seed(0))
    assert windows.shape == (8, 3, 48, 48) and windows.dtype == torch.uint8 and torch.equal(windows, again)
    offsets = [_offset_of(w, t) for w, t in zip(windows, tiles)]
    assert None not in offsets and len(set(offsets)) > 4  # real pixels, no resampling, and not one offset for all
    assert random_crop(tiles, 64, torch.Generator()) is tiles  # a window as large as the tile is the tile


def test_translation_mirrors_the_border(tiles):
    pad = 6
    shifted = random_crop(tiles, 64, torch.Generator().manual_seed(1), pad=pad)
    assert shifted.shape == tiles.shape
    mirrored = torch.from_numpy(np.pad(tiles.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect"))
    offsets = [_offset_of(s, m) for s, m in zip(shifted, mirrored)]
    assert None not in offsets  # every shifted tile is a window of the reflect-padded tile
    assert any(top != pad or left != pad for top, left in offsets)  # and most are really shifted


def test_cutout_blanks_one_square_per_image_and_nothing_else(tiles):
    x = eval_transform(IMAGENET, size=(64, 64))(tiles) + 10.0  # no pixel is 0 before the cutout
    out = cutout(x.clone(), 16, torch.Generator().manual_seed(0))
    hidden = (out == 0).all(dim=1)  # (N, H, W): all channels blanked
    for image, mask in zip(out, hidden):
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        assert 0 < len(rows) <= 16 and 0 < len(cols) <= 16
        assert mask.sum() == len(rows) * len(cols)  # one solid rectangle (a square clipped by the border)
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
    assert torch.equal(out[~hidden[:, None].expand_as(out)], x[~hidden[:, None].expand_as(x)])


def test_train_transform_with_windows_trains_at_three_quarters_of_the_input(tiles):
    out = train_transform(IMAGENET, torch.Generator().manual_seed(0), crop=48)(tiles)
    assert out.shape == (8, 3, 168, 168)  # 48/64 of 224: the ground resolution is kept
    moved = train_transform(IMAGENET, torch.Generator().manual_seed(0), translate=4, erase=8)(tiles)
    assert moved.shape == (8, 3, 224, 224)
