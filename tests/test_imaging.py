"""Decoding user files: every awkward or hostile file of the issue, exact pixel checks, and property tests."""

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import hostile_files as hf
from eurosat.config import MAX_PIXELS
from eurosat.imaging import shrink_keeping_shape
from eurosat.imaging import ImageError, open_image, shrink_per_axis, to_rgb, to_tensor
from eurosat.raster import SENTINEL2_RGB
from eurosat.transforms import DataConfig, eval_transform

INPUT = (64, 64)
DATA_CONFIG = DataConfig(INPUT, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def put(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image, dtype=np.int16)


def refused(path, **kwargs) -> str:
    with pytest.raises(ImageError) as error:
        open_image(path, **kwargs)
    return str(error.value)


# The issue's list, one by one.

def test_text_named_jpg_is_called_text(tmp_path):
    message = refused(put(tmp_path, "holiday.jpg", hf.text_named_jpg()))
    assert message.startswith("This file holds text, not an image")
    assert "PNG, JPEG" in message


def test_binary_junk_is_called_an_unknown_format(tmp_path):
    message = refused(put(tmp_path, "junk.png", bytes(range(256)) * 4))
    assert message.startswith("This file is not in an image format that can be read")


@pytest.mark.parametrize("data,kind", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj" + bytes(100), "a PDF document"),
    (b"PK\x03\x04\x14\x00" + bytes(100), "a ZIP archive"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(100), "a HEIC/HEIF photo"),
])
def test_common_non_images_are_named(tmp_path, data, kind):
    assert refused(put(tmp_path, "upload.jpg", data)).startswith(f"This file is {kind}")


def test_zero_byte_file(tmp_path):
    assert refused(put(tmp_path, "empty.png", b"")) == "The file is empty (0 bytes): upload a PNG or JPEG image."


def test_no_file_and_missing_file(tmp_path):
    assert refused(None).startswith("No image was given")
    assert refused("").startswith("No image was given")
    assert refused(tmp_path / "gone.png").startswith("The uploaded file could not be read")


def test_truncated_jpeg_is_refused_not_half_shown(tmp_path):
    message = refused(put(tmp_path, "cut.jpg", hf.truncated_jpeg()))
    assert message.startswith("The image file is damaged or truncated and could not be decoded (image file is truncated")


def test_one_pixel_image_gives_a_full_size_input(tmp_path):
    image = open_image(put(tmp_path, "pixel.png", hf.encode(hf.one_pixel(), "PNG")))
    assert image.size == (1, 1) and tuple(pixels(image)[0, 0]) == (40, 90, 160)
    tensor = to_tensor(image, INPUT)
    assert tensor.shape == (3, 1, 1)
    x = eval_transform(DATA_CONFIG)(tensor.unsqueeze(0))
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    # A constant image stays constant through the bicubic upsampling: channel c is (v/255 - mean) / std.
    expected = (torch.tensor([40, 90, 160]) / 255 - torch.tensor(DATA_CONFIG.mean)) / torch.tensor(DATA_CONFIG.std)
    assert torch.allclose(x[0].mean(dim=(1, 2)), expected.float(), atol=1e-5)
    assert float(x[0].std(dim=(1, 2)).max()) < 1e-5


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return put(tmp_path_factory.mktemp("bomb"), "bomb.png", hf.bomb_png())


def spy_on_decoding(monkeypatch) -> list:
    """Record every call that would decode pixels (Pillow's file loader and the generic one)."""
    calls = []
    for cls in (ImageFile.ImageFile, Image.Image):
        original = cls.load

        def load(self, _original=original):
            calls.append(self.size)
            return _original(self)
        monkeypatch.setattr(cls, "load", load)
    return calls


def test_decompression_bomb_is_refused_from_its_header(bomb, monkeypatch):
    assert bomb.stat().st_size < 1_000_000  # small on disk...
    # ...400 million pixels once decoded, as its IHDR chunk says
    assert struct.unpack(">4sII", bomb.read_bytes()[12:24]) == (b"IHDR", hf.BOMB_SIDE, hf.BOMB_SIDE)
    calls = spy_on_decoding(monkeypatch)
    message = refused(bomb)
    assert message == (f"The image has more than {MAX_PIXELS:,} pixels, too large to decode safely: "
                       "a EuroSAT tile is 64x64, so crop or downscale it first.")
    assert calls == []  # refused before a single row was decompressed


def test_pillow_bomb_protection_stays_on_even_with_a_bigger_cap(bomb, tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default: nothing in the stack switched it off
    calls = spy_on_decoding(monkeypatch)
    # Over twice Pillow's limit: its own DecompressionBombError, raised in Image.open, re-worded.
    assert refused(bomb, max_pixels=10**12).startswith(f"The image has more than {Image.MAX_IMAGE_PIXELS:,} pixels")
    # Between Pillow's warning and error thresholds: our cap never exceeds Pillow's, so it refuses.
    big = put(tmp_path, "big.png", hf.bomb_png(10_000))
    with pytest.warns(Image.DecompressionBombWarning):
        message = refused(big, max_pixels=10**12)
    assert message.startswith(f"The image is 10000x10000 pixels, over the limit of {Image.MAX_IMAGE_PIXELS:,}")
    assert calls == []


def test_the_app_cap_is_checked_before_decoding(tmp_path, monkeypatch):
    path = put(tmp_path, "tile.png", hf.encode(hf.tile(), "PNG"))
    calls = spy_on_decoding(monkeypatch)
    assert refused(path, max_pixels=4000).startswith("The image is 64x64 pixels, over the limit of 4,000")
    assert calls == []
    assert open_image(path, max_pixels=4096).size == (64, 64)


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    image = open_image(put(tmp_path, "gray16.png", hf.gray16_png()))
    expected = np.round(hf.gray16() / 257.0)
    got = pixels(image)
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 0], got[..., 2])
    assert len(np.unique(got)) > 30 and got.max() < 255  # not clipped to white, as a plain convert("L") does


def test_cmyk_jpeg_looks_like_the_rgb_tile(tmp_path):
    image = open_image(put(tmp_path, "cmyk.jpg", hf.cmyk_jpeg()))
    assert image.size == (64, 64)
    error = np.abs(pixels(image) - pixels(hf.tile()))
    assert error.mean() < 4 and np.percentile(error, 99) < 25  # JPEG loss only; inverted CMYK would be ~100


def test_palette_png_transparency_is_black(tmp_path):
    source, transparent = hf.palette_with_transparency()
    image = open_image(put(tmp_path, "palette.png", hf.palette_png()))
    got = pixels(image)
    opaque = np.asarray(source.convert("RGB"), dtype=np.int16)
    assert transparent.sum() >= 256
    assert (got[transparent] == 0).all()
    assert np.array_equal(got[~transparent], opaque[~transparent])


def test_animated_gif_uses_its_first_frame(tmp_path):
    first, second = hf.gif_frames()
    image = open_image(put(tmp_path, "animated.gif", hf.animated_gif()))
    with Image.open(io.BytesIO(hf.animated_gif())) as gif:
        assert gif.n_frames == 2
    assert np.array_equal(pixels(image), pixels(first))
    assert not np.array_equal(pixels(image), pixels(second))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_is_honoured(tmp_path, orientation):
    data = hf.exif_rotated_jpeg(orientation)
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (32, 48) and stored.getexif()[0x0112] == orientation
    image = open_image(put(tmp_path, "rotated.jpg", data))
    assert image.size == (48, 32)
    got = pixels(image)
    corners = [got[:8, :8], got[:8, -8:], got[-8:, :8], got[-8:, -8:]]
    assert corners[0].mean() > 200 and all(c.mean() < 60 for c in corners[1:])
    assert np.abs(got - pixels(hf.upright_marker())).mean() < 3


def fixed_scaling(dn: np.ndarray) -> np.ndarray:
    """EuroSAT's RGB scaling, written out independently: gdal_translate -scale 0 2750 1 255, 0 for no-data."""
    grey = np.clip(np.round(1 + dn.astype(np.float64) * 254 / 2750), 1, 255)
    return np.where(dn > 0, grey, 0)


def percentile_stretch(bands: np.ndarray) -> np.ndarray:
    """The per-image 2-98% stretch this module used before: what the fixed scaling replaced."""
    out = []
    for band in bands.astype(np.float64):
        low, high = np.percentile(band, [2, 98])
        out.append(np.round(np.clip((band - low) / (high - low), 0, 1) * 255))
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("layout,compression", [("interleaved", None), ("planar", None), ("interleaved", "deflate")])
def test_sentinel2_geotiff_becomes_the_eurosat_rgb_it_was_made_from(tmp_path, layout, compression):
    import rasterio

    path = put(tmp_path, "EuroSAT_MS.tif", hf.sentinel2_tiff(layout, compression))
    with rasterio.open(path) as dataset:
        assert (dataset.count, dataset.dtypes[0], dataset.interleaving.name) == (
            13, "uint16", "pixel" if layout == "interleaved" else "band")
    image = open_image(path)
    got = pixels(image)
    assert image.size == (64, 64)
    # B04, B03 and B02, scaled back exactly to the real tile's pixels the cube was made from.
    assert np.array_equal(got[:60, :60], pixels(hf.tile())[:60, :60])
    assert (got[60:, 60:] == 255).all()  # the saturated cloud
    assert SENTINEL2_RGB == (4, 3, 2)
    assert image.info["reading"].kind == "eurosat-l1c"


def test_dark_forest_stays_dark_where_the_old_stretch_made_it_contrasty(tmp_path):
    forest = np.asarray(hf.example("Forest"))
    cube = hf.sentinel2_cube(forest, cloud=False)
    got = pixels(open_image(put(tmp_path, "forest.tif", hf.sentinel2_tiff(cube=cube))))
    assert np.abs(got - forest).max() <= 1
    assert forest.mean() < 80  # a real forest tile is dark...
    stretched = percentile_stretch(cube[[3, 2, 1]])
    assert stretched.mean() > forest.mean() + 40  # ...and the per-image stretch made it a bright, contrasty one
    assert stretched.std() > 2 * forest.std()


def test_three_band_sixteen_bit_tiff_is_read_as_digital_numbers(tmp_path):
    image = open_image(put(tmp_path, "rgb16.tif", hf.multiband_tiff(3)))
    dn = np.random.default_rng(3).integers(100, 4000, (3, 32, 32))  # what multiband_tiff(3) wrote
    assert image.size == (32, 32)
    assert np.array_equal(pixels(image), np.moveaxis(fixed_scaling(dn), 0, -1))
    assert (dn > 2750).any() and (np.moveaxis(pixels(image), -1, 0)[dn > 2750] == 255).all()


def test_float_reflectance_tiff_as_a_fraction_or_as_digital_numbers(tmp_path):
    forest = np.asarray(hf.example("Forest"))
    dn = np.moveaxis(hf.digital_numbers(forest), -1, 0)
    for name, data, kind in (("fraction.tif", (dn / 10000).astype(np.float32), "reflectance"),
                             ("dn.tif", dn.astype(np.float32), "eurosat-l1c")):
        image = open_image(put(tmp_path, name, hf.tiff(data)))
        assert np.abs(pixels(image) - forest).max() <= 1, name
        assert image.info["reading"].kind == kind


def test_the_radiometry_choice_is_applied_and_checked_against_the_file(tmp_path):
    forest = np.asarray(hf.example("Forest"))
    dn = np.moveaxis(hf.digital_numbers(forest), -1, 0).astype(np.uint16)
    offset = put(tmp_path, "offset.tif", hf.tiff(dn + 1000))
    # auto reads the offset from the values (no valid number below 1000) and gives back the tile.
    image = open_image(offset)
    assert image.info["reading"].kind == "baseline-04" and np.abs(pixels(image) - forest).max() <= 1
    # Read as the old baseline, the same forest is about 92 grey levels brighter.
    brighter = pixels(open_image(offset, radiometry="eurosat-l1c"))
    assert 88 <= (brighter - pixels(image)).mean() <= 96
    # The metadata decides when present, whatever the values.
    stated = put(tmp_path, "stated.tif", hf.tiff(dn, tags={"BOA_ADD_OFFSET": "-1000"}))
    assert open_image(stated).info["reading"].why == "the file's BOA_ADD_OFFSET is -1000"
    # A JPEG is 8-bit true colour: digital-number choices are refused, with the choices that fit.
    tile = put(tmp_path, "tile.jpg", hf.encode(hf.tile(), "JPEG"))
    assert refused(tile, radiometry="baseline-04").startswith("This image is read as 8-bit true colour")
    assert np.array_equal(pixels(open_image(tile, radiometry="8bit")), pixels(open_image(tile)))


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    width, height = 7360, 4912  # a 36-megapixel photo
    path = put(tmp_path, "photo.jpg", hf.encode(hf.tile().resize((width, height)), "JPEG", quality=90))
    full = open_image(path)
    calls = spy_on_decoding(monkeypatch)
    reduced = open_image(path, reduce_to=INPUT)
    assert calls and all(w <= width // 8 and h <= height // 8 for w, h in calls)  # never the full size
    assert reduced.size == shrink_keeping_shape(Image.new("RGB", (width // 8, height // 8)), INPUT).size
    assert abs(reduced.size[0] / reduced.size[1] - width / height) < 0.02  # the photo keeps its shape
    assert reduced.info["source_size"] == full.info["source_size"] == (width, height)  # the file's own size
    # What the model sees differs from decoding every pixel only by the DCT scaling's rounding.
    std = torch.tensor(DATA_CONFIG.std).view(3, 1, 1) * 255
    seen = [eval_transform(DATA_CONFIG)(to_tensor(im, INPUT).unsqueeze(0))[0] * std for im in (full, reduced)]
    assert float((seen[0] - seen[1]).abs().mean()) < 2.0


def test_reduce_to_leaves_tiles_alone_and_keeps_the_header_check_first(tmp_path, monkeypatch):
    for name, data in (("tile.png", hf.encode(hf.tile(), "PNG")), ("tile.jpg", hf.encode(hf.tile(), "JPEG"))):
        path = put(tmp_path, name, data)
        assert np.array_equal(pixels(open_image(path, reduce_to=INPUT)), pixels(open_image(path)))
    path = put(tmp_path, "big.jpg", hf.encode(hf.tile().resize((2000, 1000)), "JPEG"))
    calls = spy_on_decoding(monkeypatch)
    assert refused(path, max_pixels=1_000_000, reduce_to=INPUT).startswith(
        "The image is 2000x1000 pixels, over the limit of 1,000,000")
    assert calls == []


@pytest.mark.parametrize("bands", [2, 4, 12])
def test_other_multiband_tiffs_get_a_message_naming_the_inputs(tmp_path, bands):
    message = refused(put(tmp_path, "bands.tif", hf.multiband_tiff(bands)))
    assert message.startswith(f"This TIFF has {bands} bands of uint16; the model needs RGB.")
    assert "13-band Sentinel-2 GeoTIFF" in message and "named B04, B03 and B02" in message


def test_bands_named_b04_b03_b02_are_the_true_colour_in_any_order(tmp_path):
    forest = np.asarray(hf.example("Forest"))
    dn = np.moveaxis(hf.digital_numbers(forest), -1, 0).astype(np.uint16)  # red, green, blue
    cube = np.stack([dn[2], dn[1], dn[0], np.full_like(dn[0], 3000)])  # an Earth Engine export: B2, B3, B4, B8
    image = open_image(put(tmp_path, "ee.tif", hf.tiff(cube, descriptions=["B2", "B3", "B4", "B8"])))
    assert np.abs(pixels(image) - forest).max() <= 1


def test_eight_bit_rgb_tiff_goes_through_pillow_exactly(tmp_path):
    image = open_image(put(tmp_path, "tile.tif", hf.encode(hf.tile(), "TIFF")))
    assert np.array_equal(pixels(image), pixels(hf.tile()))


def test_multiband_tiff_size_is_checked_before_decoding(tmp_path):
    path = put(tmp_path, "ms.tif", hf.sentinel2_tiff())
    assert refused(path, max_pixels=1000).startswith("The TIFF is 64x64 pixels, over the limit of 1,000")
    # Within the pixel limit, 13 bands of 16 bits are still too many bytes to decode for one tile.
    assert refused(path, max_pixels=4096).startswith("The TIFF is 64x64 pixels of uint16, too large to decode")


def test_damaged_multiband_tiff(tmp_path):
    data = hf.sentinel2_tiff(compression="deflate")
    message = refused(put(tmp_path, "ms.tif", data[: len(data) // 2]))
    assert message.startswith("This TIFF could not be decoded: it is damaged or uses a compression")


# Every PIL mode.

def test_to_rgb_keeps_the_meaning_of_each_mode():
    def one(mode, value):
        return tuple(np.asarray(to_rgb(Image.new(mode, (1, 1), value)))[0, 0])

    assert one("I;16", 65535) == (255, 255, 255) and one("I;16", 257 * 100) == (100, 100, 100)
    assert one("I", 70000) == (255, 255, 255) and one("I", -5) == (0, 0, 0)
    assert one("F", 1.0) == (255, 255, 255) and one("F", 0.5) == (128, 128, 128) and one("F", 200.0) == (200,) * 3
    assert one("F", float("nan")) == (0, 0, 0)
    assert one("RGBA", (200, 100, 50, 0)) == (0, 0, 0) and one("RGBA", (200, 100, 50, 255)) == (200, 100, 50)
    assert one("LA", (90, 128)) == (45, 45, 45)
    assert one("CMYK", (0, 0, 0, 0)) == (255, 255, 255)
    premultiplied = Image.frombytes("RGBa", (1, 1), bytes([100, 50, 25, 128]))
    assert tuple(np.asarray(to_rgb(premultiplied))[0, 0]) == (100, 50, 25)  # already the colour over black
    assert tuple(np.asarray(to_rgb(Image.frombytes("La", (1, 1), bytes([60, 128]))))[0, 0]) == (60, 60, 60)


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pil_mode_becomes_rgb(mode):
    image = Image.new(mode, (5, 3))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 3)


def test_shrink_reduces_each_axis_separately():
    strip = Image.new("RGB", (5000, 40))
    assert shrink_per_axis(strip, INPUT).size == (math.ceil(5000 / (5000 // 128)), 40)
    assert shrink_per_axis(Image.new("RGB", (4000, 3000)), (224, 224)).size == (500, 500)
    assert shrink_per_axis(Image.new("RGB", (100, 100)), INPUT).size == (100, 100)


# Properties: nothing a user can send crashes the path from bytes to the model's input.

MODES = Image.MODES
SIZES = st.one_of(st.integers(1, 300), st.sampled_from([1000, 2600]))


def random_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    length = len(Image.new(mode, (width, 1)).tobytes()) * height
    image = Image.frombytes(mode, (width, height), rng.bytes(length))
    if mode in ("P", "PA"):
        image.putpalette(rng.bytes(768))
        if mode == "P" and seed % 2:
            image.info["transparency"] = int(rng.integers(0, 256))
    return image


def expected_side(side: int, target: int) -> int:
    factor = max(1, side // (2 * target))
    return math.ceil(side / factor)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), width=SIZES, height=SIZES, seed=st.integers(0, 2**32 - 1))
def test_any_mode_size_and_bytes_give_a_finite_model_input(mode, width, height, seed):
    tensor = to_tensor(random_image(mode, width, height, seed), INPUT)
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (3, expected_side(height, 64), expected_side(width, 64))
    x = eval_transform(DATA_CONFIG)(tensor.unsqueeze(0))
    assert x.shape == (1, 3, 64, 64) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def opens_cleanly(path: Path) -> None:
    """The property: an 8-bit RGB image that becomes a model input, or ImageError; nothing else."""
    try:
        image = open_image(path)
    except ImageError as e:
        assert str(e) and "Traceback" not in str(e)
        return
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    x = eval_transform(DATA_CONFIG)(to_tensor(image, INPUT).unsqueeze(0))
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM", b"RIFF\x00\x00\x00\x00WEBP",
         b"\x00\x00\x01\x00", b"P6\n"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048))
def test_random_bytes_open_or_raise_image_error(scratch, magic, body):
    path = scratch / "random.bin"
    path.write_bytes(magic + body)
    opens_cleanly(path)


def valid_files() -> list[bytes]:
    tile = hf.tile()
    return [hf.encode(tile, "PNG"), hf.encode(tile, "JPEG", quality=90), hf.animated_gif(), hf.encode(tile, "TIFF"),
            hf.encode(tile, "BMP"), hf.encode(tile, "WEBP"), hf.gray16_png(), hf.palette_png(), hf.cmyk_jpeg(),
            hf.exif_rotated_jpeg(6), hf.sentinel2_tiff(), hf.sentinel2_tiff("planar", "deflate")]


VALID = valid_files()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_real_files_open_or_raise_image_error(scratch, data):
    original = bytearray(data.draw(st.sampled_from(VALID), label="file"))
    # Flip bytes in the header and anywhere, then maybe cut the file short.
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        limit = data.draw(st.sampled_from([64, 512, len(original)]), label="region")
        position = data.draw(st.integers(0, min(limit, len(original)) - 1), label="position")
        original[position] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.one_of(st.none(), st.integers(1, len(original))), label="cut")
    path = scratch / "damaged.bin"
    path.write_bytes(bytes(original[:cut]))
    opens_cleanly(path)
