"""Georeferenced scenes of real tiles: scale and areas from the file, radiometry, nodata, windows, COG, the command."""

import csv
import math

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

import hostile_files as hf
from conftest import upload
from eurosat import map as command
from eurosat import mapping, raster as rasters
from eurosat.config import AppConfig
from eurosat.mapping import map_file
from eurosat.scene import CELL, MAP_COMMAND, NO_DATA, SceneError, class_colours, class_raster, describe, write_scene
from eurosat.ui.page import Page
from eurosat.ui.shared import Service

ROWS, COLS = 9, 4  # more cell rows than one read window (8)
WGS84 = (6378137.0, 1 / 298.257223563)


@pytest.fixture(scope="module")
def mosaic(mini_tensors) -> np.ndarray:
    """36 real test tiles laid out in 9 rows of 4: 256 x 576 pixels of 8-bit RGB."""
    tiles = [t.permute(1, 2, 0).numpy() for t in mini_tensors["test"][0][:ROWS * COLS]]
    return np.concatenate([np.concatenate(tiles[r * COLS:(r + 1) * COLS], axis=1) for r in range(ROWS)], axis=0)


@pytest.fixture(scope="module")
def digital(mosaic) -> np.ndarray:
    """The mosaic as the Sentinel-2 L1C digital numbers (3, H, W) uint16 that EuroSAT's scaling turns back into it."""
    return np.moveaxis(hf.digital_numbers(mosaic), -1, 0).astype(np.uint16)


def write(folder, name: str, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return path


def labels(scene) -> dict[tuple[int, int], str]:
    return {(c.row, c.col): c.label for c in scene.cells}


def test_utm_10_m_cells_are_the_tiles_and_the_cog_carries_the_georeferencing(predictor, mosaic, digital, tmp_path):
    path = write(tmp_path, "utm10.tif", hf.geotiff(digital))
    scene = map_file(str(path), predictor, mpp=3, max_pixels=10**7)  # the file's 10 m wins over a typed 3 m
    assert scene.mpp == (10.0, 10.0) and scene.grid == (ROWS, COLS) and len(scene.cells) == ROWS * COLS
    assert scene.reading.kind == "eurosat-l1c" and np.abs(scene.image.astype(int) - mosaic).max() <= 1
    for cell in scene.cells:  # /predict's answer for exactly the cell's pixels
        pixels = scene.image[cell.row * CELL:(cell.row + 1) * CELL, cell.col * CELL:(cell.col + 1) * CELL]
        assert cell.label == next(iter(predictor.predict(Image.fromarray(pixels), 1)))
        assert cell.area_km2 == pytest.approx(0.4096)
    cog = write_scene(scene, tmp_path)["geotiff"]
    with rasterio.open(cog) as out:
        assert out.crs.to_epsg() == 32632 and out.nodata == NO_DATA and out.dtypes[0] == "uint8"
        assert tuple(out.transform)[:6] == (640.0, 0.0, hf.ORIGIN[0], 0.0, -640.0, hf.ORIGIN[1])
        assert out.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert out.descriptions == ("land-cover class",)
        table = out.colormap(1)
        for index, name in enumerate(scene.label_names):
            assert table[index][:3] == class_colours(scene.label_names)[name]
            assert out.tags(1)[f"CLASS_{index}"] == name
        assert np.array_equal(out.read(1), class_raster(scene))


def test_utm_20_m_cells_cover_640_m_not_1280(predictor, mosaic, tmp_path):
    coarse = np.ascontiguousarray(mosaic[::2, ::2])  # the same ground at 20 m: 32 pixels per cell
    path = write(tmp_path, "utm20.tif", hf.geotiff(coarse, scale=(20.0, 20.0)))
    scene = map_file(str(path), predictor, max_pixels=10**7)
    assert scene.mpp == (20.0, 20.0) and scene.cell_size == (32.0, 32.0)
    assert scene.grid == (ROWS, COLS) and len(scene.cells) == ROWS * COLS  # not a quarter as many
    assert [(c.x, c.y) for c in scene.cells[:2]] == [(0, 0), (32, 0)]
    assert sum(c.area_km2 for c in scene.cells) == pytest.approx(ROWS * COLS * 0.4096)
    assert scene.cell_georef.transform.a == 640.0 and scene.cell_georef.transform.e == -640.0
    # Read strip by strip in windows of 1, 3 or 8 cell rows, the image and every answer are the same.
    for rows in (1, 3):
        other = map_file(str(path), predictor, max_pixels=10**7, window_rows=rows)
        assert np.array_equal(other.image, scene.image) and labels(other) == labels(scene)


def geodesic_box_km2(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """A lon/lat box's area on the WGS84 ellipsoid by hand: M(φ) N(φ) cos φ Δφ Δλ at the middle latitude."""
    a, f = WGS84
    e2 = f * (2 - f)
    phi = math.radians((lat0 + lat1) / 2)
    w = 1 - e2 * math.sin(phi) ** 2
    meridional, normal = a * (1 - e2) / w ** 1.5, a / w ** 0.5
    return meridional * normal * math.cos(phi) * math.radians(abs(lat1 - lat0)) * math.radians(abs(lon1 - lon0)) / 1e6


def test_degrees_give_geodesic_areas_within_1_percent_of_a_hand_computation(predictor, mosaic, tmp_path):
    # About 10 m by 10 m at 50°N, so each tile is about one cell, in WGS 84 degrees.
    dx, dy = 0.00014, 0.00009
    path = write(tmp_path, "wgs84.tif", hf.geotiff(mosaic, crs="EPSG:4326", origin=(8.0, 50.0), scale=(dx, dy)))
    scene = map_file(str(path), predictor, max_pixels=10**7)
    assert scene.georef.crs.to_epsg() == 4326
    assert scene.mpp[0] == pytest.approx(dx * 111320 * math.cos(math.radians(49.974)), rel=0.005)
    assert scene.mpp[1] == pytest.approx(dy * 111229, rel=0.005)
    fx, fy = scene.cell_size
    for cell in scene.cells:
        lon0, lat0 = 8.0 + cell.col * fx * dx, 50.0 - cell.row * fy * dy
        hand = geodesic_box_km2(lon0, lat0, lon0 + cell.width / CELL * fx * dx, lat0 - cell.height / CELL * fy * dy)
        assert cell.area_km2 == pytest.approx(hand, rel=0.01)
        assert cell.area_km2 == pytest.approx(0.4096 * cell.width * cell.height / CELL ** 2, rel=0.01)
    whole = geodesic_box_km2(8.0, 50.0, 8.0 + mosaic.shape[1] * dx, 50.0 - mosaic.shape[0] * dy)
    covered = sum(c.width * c.height for c in scene.cells) / (scene.size[0] * scene.size[1])
    assert sum(c.area_km2 for c in scene.cells) == pytest.approx(whole * covered, rel=0.01)


def test_the_plus_1000_offset_gives_the_same_labels_as_without(predictor, digital, tmp_path):
    plain = map_file(str(write(tmp_path, "old.tif", hf.geotiff(digital))), predictor, max_pixels=10**7)
    offset = map_file(str(write(tmp_path, "new.tif", hf.geotiff(digital + 1000))), predictor, max_pixels=10**7)
    assert offset.reading.kind == "baseline-04" and plain.reading.kind == "eurosat-l1c"
    assert np.array_equal(offset.image, plain.image) and labels(offset) == labels(plain)
    # Read as the old baseline, the offset data is a different, brighter picture.
    wrong = map_file(str(write(tmp_path, "new2.tif", hf.geotiff(digital + 1000))), predictor, max_pixels=10**7,
                     radiometry="eurosat-l1c")
    assert wrong.image.mean() > plain.image.mean() + 60


def test_nodata_holes_are_skipped_and_left_as_nodata(predictor, digital, tmp_path):
    holed = digital.copy()
    holed[:, :CELL, :2 * CELL] = 0  # cells (0, 0) and (0, 1) have no data
    holed[:, 3 * CELL + 5, 2 * CELL + 7] = 0  # and one pixel of cell (3, 2)
    path = write(tmp_path, "holes.tif", hf.geotiff(holed))
    scene = map_file(str(path), predictor, max_pixels=10**7)
    assert scene.skipped == 3 and len(scene.cells) == ROWS * COLS - 3
    assert {(0, 0), (0, 1), (3, 2)}.isdisjoint(labels(scene))
    files = write_scene(scene, tmp_path, stem="holes")
    rows = list(csv.DictReader(open(files["csv"])))
    assert len(rows) == ROWS * COLS - 3 and ("0", "0") not in {(r["row"], r["col"]) for r in rows}
    with rasterio.open(files["geotiff"]) as out:
        classes = out.read(1)
        assert classes[0, 0] == classes[0, 1] == classes[3, 2] == NO_DATA and (classes != NO_DATA).sum() == 33
        assert out.read_masks(1)[0, 0] == 0  # GIS tools read it as no data, not as a class
    assert "3 cells without data skipped" in describe(scene)


def test_the_command_reads_in_windows_and_agrees_with_the_scene_tab(predictor, trained_run, digital, tmp_path,
                                                                      monkeypatch, capsys):
    path = write(tmp_path, "granule.tif", hf.geotiff(digital + 1000, compress="deflate"))
    reads = []
    original = rasters.Raster.read
    monkeypatch.setattr(rasters.Raster, "read", lambda self, top, bottom: reads.append((top, bottom))
                        or original(self, top, bottom))
    out = tmp_path / "out" / "landcover.tif"
    # PyTorch, as the `predictor` fixture the tab runs on: the same engine, so the same probabilities to the digit
    # (ONNX Runtime's agree to 1e-5: test_onnxrt).
    assert command.main([str(path), str(out), "--csv", str(tmp_path / "cells.csv"), "--model", str(trained_run),
                         "--window-rows", "3", "--no-progress", "--threads", "1", "--backend", "pytorch"]) == 0
    assert reads == [(0, 192), (192, 384), (384, 576)]  # three strips of three cell rows, never the whole
    printed = capsys.readouterr().out
    assert "read as: Sentinel-2 digital numbers with the +1000 offset" in printed and "wrote" in printed
    page = Page(Service(predictor, config=AppConfig()))
    *_, tab_csv, geotiff, note, tab_scene = page.scene.scene(upload(path))
    assert "EPSG:32632" in note and "+1000 offset" in note
    command_rows = list(csv.DictReader(open(tmp_path / "cells.csv")))
    tab_rows = list(csv.DictReader(open(tab_csv)))
    assert [r["label"] for r in command_rows] == [r["label"] for r in tab_rows] == [c.label for c in tab_scene.cells]
    assert [r["probability"] for r in command_rows] == [r["probability"] for r in tab_rows]
    with rasterio.open(out) as mapped, rasterio.open(geotiff) as shown:
        assert np.array_equal(mapped.read(1), shown.read(1)) and mapped.transform == shown.transform
    areas = list(csv.DictReader(open(tmp_path / "out" / "landcover_areas.csv")))
    assert sum(int(r["cells"]) for r in areas) == ROWS * COLS
    assert sum(float(r["area_km2"]) for r in areas) == pytest.approx(ROWS * COLS * 0.4096, abs=1e-3)


def test_the_command_words_bad_input_and_the_tab_names_the_command_over_its_limit(predictor, trained_run, mosaic,
                                                                                   tmp_path, monkeypatch, capsys):
    plain = write(tmp_path, "plain.png", hf.encode(Image.fromarray(mosaic), "PNG"))
    assert command.main([str(plain), str(tmp_path / "x.tif"), "--model", str(trained_run), "--no-progress"]) == 1
    assert "could not be opened as a GeoTIFF or JPEG 2000 raster" in capsys.readouterr().err
    flat = write(tmp_path, "flat.tif", hf.tiff(np.ascontiguousarray(np.moveaxis(mosaic, -1, 0))))
    assert command.main([str(flat), str(tmp_path / "x.tif"), "--model", str(trained_run), "--no-progress"]) == 1
    assert "carries no georeferencing" in capsys.readouterr().err
    monkeypatch.setattr(mapping, "MAX_CELLS", 10)
    with pytest.raises(SceneError) as error:
        mapping.map_source(mapping.ArraySource(mosaic), predictor, mpp=(10.0, 10.0), max_cells=10)
    assert f"`{MAP_COMMAND}`" in str(error.value) and "36 cells" in str(error.value)


def test_a_jpeg2000_raster_is_read_through_gdal(predictor, digital, tmp_path):
    from rasterio.io import MemoryFile

    with MemoryFile(filename="tci.jp2") as memory:  # the .jp2 name makes a JP2 file with its GeoJP2 box
        with memory.open(driver="JP2OpenJPEG", width=digital.shape[2], height=digital.shape[1], count=3,
                         dtype="uint16", crs="EPSG:32632", transform=from_origin(*hf.ORIGIN, 10, 10),
                         QUALITY=100, REVERSIBLE=True) as dataset:
            dataset.write(digital)
        path = write(tmp_path, "tci.jp2", memory.read())
    scene = map_file(str(path), predictor, max_pixels=10**7)
    tiff = map_file(str(write(tmp_path, "same.tif", hf.geotiff(digital))), predictor, max_pixels=10**7)
    assert scene.georef.crs.to_epsg() == 32632 and np.array_equal(scene.image, tiff.image)
    assert labels(scene) == labels(tiff)


def test_the_scene_tab_shows_the_resolution_the_file_gives(mosaic, tmp_path):
    page = Page(Service(None, config=AppConfig()))
    coarse = write(tmp_path, "utm20.tif", hf.geotiff(np.ascontiguousarray(mosaic[::2, ::2]), scale=(20.0, 20.0)))
    field = page.scene.resolution(upload(coarse))
    assert field["value"] == 20.0 and field["interactive"] is False and field["label"].endswith("(EPSG:32632)")
    plain = page.scene.resolution(upload(write(tmp_path, "plain.png", hf.encode(Image.fromarray(mosaic), "PNG"))))
    assert plain["interactive"] is True and "value" not in plain  # the user's own value stays
