"""Scenes on real EuroSAT tiles: the grid and its edges, rescaling, GeoTIFFs in and out, limits and the map."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

import hostile_files as hf
from eurosat.imaging import ImageError, open_image
from eurosat.mapping import classify_scene, map_file
from eurosat.scene import (CELL, CLASS_COLOURS, MAX_CELLS, NO_DATA, SceneError, axis_windows, cells_csv,
                           check_mpp, class_colours, class_raster, draw_map, legend, summary, write_scene)

ROWS, COLS = 3, 4


@pytest.fixture(scope="module")
def tiles(class_tiles, mini_tensors) -> list[np.ndarray]:
    """12 real test tiles (H, W, 3): the first of each class, then a second AnnualCrop and Forest."""
    images, labels = mini_tensors["test"]
    seconds = images[[int((labels == k).nonzero()[1]) for k in range(2)]]
    return [tile.permute(1, 2, 0).numpy() for tile in [*class_tiles, *seconds]]


@pytest.fixture(scope="module")
def mosaic(tiles) -> np.ndarray:
    """The tiles laid out row by row in a 3 x 4 grid: 256 x 192 pixels."""
    return np.concatenate([np.concatenate(tiles[r * COLS:(r + 1) * COLS], axis=1) for r in range(ROWS)], axis=0)


def top1(predictor, pixels: np.ndarray) -> tuple[str, float]:
    """What the single-tile classifier says about exactly these pixels."""
    (label, probability), = predictor.predict(Image.fromarray(np.ascontiguousarray(pixels)), 1).items()
    return label, probability


def put(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def test_every_cell_of_a_mosaic_is_the_single_tile_answer(predictor, tiles, mosaic, tmp_path):
    expected = [top1(predictor, t) for t in tiles]
    assert len({label for label, _ in expected}) >= 4  # varied enough that a misplaced cell would show
    progress = []
    scene = classify_scene(mosaic, predictor, batch_size=5, progress=lambda done, total: progress.append((done, total)))
    assert progress == [(5, 12), (10, 12), (12, 12)]  # one batched pass, reported per batch
    assert scene.grid == (ROWS, COLS) and len(scene.cells) == 12
    for cell in scene.cells:
        label, probability = expected[cell.row * COLS + cell.col]
        assert (cell.x, cell.y, cell.width, cell.height) == (cell.col * CELL, cell.row * CELL, CELL, CELL)
        assert cell.label == label and cell.probability == pytest.approx(probability, abs=1e-5)
        assert sum(cell.probabilities) == pytest.approx(1, abs=1e-5)

    paths = write_scene(scene, tmp_path, stem="my scene")
    assert set(paths) == {"csv"}  # no georeferencing came in, so no GeoTIFF goes out; the map is shown, not written
    assert paths["csv"].name == "my_scene_cells.csv" and sorted(p.name for p in tmp_path.iterdir()) == [
        "my_scene_cells.csv"]
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert list(rows[0])[:7] == ["row", "col", "x", "y", "label", "probability", "uncertain"]
    assert list(rows[0])[7:] == list(predictor.label_names)
    corners = [(c * CELL, r * CELL) for r in range(ROWS) for c in range(COLS)]
    assert [(int(r["x"]), int(r["y"])) for r in rows] == corners
    assert [r["label"] for r in rows] == [expected[i][0] for i in range(12)]
    assert all(abs(float(r["probability"]) - expected[i][1]) < 1e-5 for i, r in enumerate(rows))

    table = summary(scene)
    assert sum(row["cells"] for row in table) == 12
    assert [row["area_km2"] for row in table] == sorted((row["area_km2"] for row in table), reverse=True)
    counts = {label: [e[0] for e in expected].count(label) for label, _ in expected}
    assert {row["class"]: (row["cells"], row["area_km2"]) for row in table} == \
        {label: (n, round(n * 0.4096, 4)) for label, n in counts.items()}
    assert sum(row["share_percent"] for row in table) == pytest.approx(100, abs=0.3)


def test_partial_edges_follow_the_documented_rule(predictor, mosaic):
    # 3 cells and 40 pixels wide: the 40 are classified from the window on the right edge;
    # 2 cells and 10 pixels tall: the 10 are a sliver left out.
    image = np.ascontiguousarray(mosaic[:2 * CELL + 10, :3 * CELL + 40])
    scene = classify_scene(image, predictor)
    assert scene.grid == (3, 4) and len(scene.cells) == 8
    assert [(c.x, c.y) for c in scene.cells] == [(x, y) for y in (0, 64) for x in (0, 64, 128, 168)]
    assert [(c.width, c.height) for c in scene.cells] == [(w, 64) for _ in range(2) for w in (64, 64, 64, 40)]
    for cell in scene.cells:
        assert cell.label == top1(predictor, image[cell.y:cell.y + CELL, cell.x:cell.x + CELL])[0]
    # The edge cell is counted for its own 40 x 64 pixels: 0.256 km², the whole classified area 2.9696 km².
    assert sum(row["area_km2"] for row in summary(scene)) == pytest.approx(232 * 128 * 100 / 1e6)
    raster = class_raster(scene)
    assert raster.shape == (3, 4) and (raster[2] == NO_DATA).all() and (raster[:2] != NO_DATA).all()
    drawn = draw_map(scene, 1.0)
    assert np.array_equal(drawn[128:], image[128:])  # the sliver is left uncoloured
    assert not np.array_equal(drawn[:128, 192:], image[:128, 192:])  # the edge cell's own part is coloured
    assert axis_windows(2 * CELL + 31) == [(0, 64), (64, 64)]
    assert axis_windows(2 * CELL + 32) == [(0, 64), (64, 64), (96, 32)]


def test_a_finer_image_is_rescaled_to_10_m_before_cutting(predictor, mosaic):
    at_10m = classify_scene(mosaic, predictor)
    doubled = np.repeat(np.repeat(mosaic, 2, axis=0), 2, axis=1)  # the same ground at 5 m per pixel
    at_5m = classify_scene(doubled, predictor, mpp=5)
    assert np.array_equal(at_5m.image, mosaic)
    assert at_5m.cell_size == (128.0, 128.0)
    for fine, coarse in zip(at_5m.cells, at_10m.cells, strict=True):
        assert (fine.x, fine.y) == (2 * coarse.x, 2 * coarse.y)  # in the uploaded image's own pixels
        assert fine.label == coarse.label and fine.probability == pytest.approx(coarse.probability, abs=1e-6)
    # At 10 m the doubled image would be taken for twice the ground: four times the cells.
    assert len(classify_scene(doubled, predictor).cells) == 48


@pytest.mark.parametrize("mpp", [0, -10, float("nan"), float("inf"), "ten", None, 0.05, 101])
def test_a_bad_ground_resolution_is_refused_by_name(mpp):
    with pytest.raises(SceneError) as error:
        check_mpp(mpp)
    assert str(error.value).startswith("The ground resolution must be a number of metres per pixel between 0.1 "
                                       "and 100 (Sentinel-2 and EuroSAT: 10)")
    assert check_mpp("2.5") == 2.5 and check_mpp(10) == 10.0


def test_a_13_band_geotiff_scene_reads_as_its_eurosat_rgb(predictor, mosaic, tmp_path):
    cube = hf.sentinel2_cube(mosaic, cloud=False)
    scene = map_file(str(put(tmp_path, "ms.tif", hf.geotiff(cube))), predictor, max_pixels=10**6)
    assert np.abs(scene.image.astype(np.int16) - mosaic).max() <= 1
    assert [c.label for c in scene.cells] == [c.label for c in classify_scene(mosaic, predictor).cells]
    assert "geotiff" in write_scene(scene, tmp_path)
    # One tile: a dark forest keeps its label, as the RGB release's tile does.
    forest = np.asarray(hf.example("Forest"))
    tile = open_image(put(tmp_path, "forest.tif", hf.sentinel2_tiff(cube=hf.sentinel2_cube(forest, cloud=False))))
    (label, probability), (rgb_label, rgb_probability) = top1(predictor, np.asarray(tile)), top1(predictor, forest)
    assert label == rgb_label and probability == pytest.approx(rgb_probability, abs=1e-4)


def test_the_class_geotiff_keeps_the_georeferencing(predictor, mosaic, tmp_path):
    image = np.ascontiguousarray(mosaic[:2 * CELL + 10, :3 * CELL + 40])
    scene = map_file(str(put(tmp_path, "scene.tif", hf.geotiff(image))), predictor, max_pixels=10**6)
    with rasterio.open(write_scene(scene, tmp_path, stem="scene")["geotiff"]) as out:
        raster, transform, crs = out.read(1), out.transform, out.crs
    assert raster.dtype == np.uint8 and np.array_equal(raster, class_raster(scene))
    assert [scene.label_names[i] for i in raster[:2].ravel()] == [c.label for c in scene.cells]
    assert (raster[2] == NO_DATA).all()  # the 10-pixel sliver
    assert crs.to_epsg() == 32632 and tuple(transform)[:6] == (640.0, 0.0, 500000.0, 0.0, -640.0, 5700000.0)

    # The same ground at 5 m per pixel: a cell is 128 input pixels, the raster's pixel still 640 m.
    doubled = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    fine = map_file(str(put(tmp_path, "fine.tif", hf.geotiff(doubled, scale=(5.0, 5.0)))), predictor,
                    max_pixels=10**6)
    with rasterio.open(write_scene(fine, tmp_path, stem="fine")["geotiff"]) as out:
        assert tuple(out.transform)[:6] == (640.0, 0.0, 500000.0, 0.0, -640.0, 5700000.0)
        assert np.array_equal(out.read(1), class_raster(scene))


def test_limits_are_named_in_their_messages(predictor, mosaic, tmp_path):
    with pytest.raises(SceneError, match=r"^This scene has 11,881 cells of 640 m, over the limit of 4,096: "):
        classify_scene(np.zeros((700, 700, 3), np.uint8), predictor, mpp=100)  # 7 km a side
    assert MAX_CELLS == 4096
    with pytest.raises(SceneError, match=r"^This scene has 12 cells of 640 m, over the limit of 11: "):
        classify_scene(mosaic, predictor, max_cells=11)
    path = put(tmp_path, "scene.png", hf.encode(Image.fromarray(mosaic), "PNG"))
    with pytest.raises(ImageError, match=r"^The image is 256x192 pixels, over the limit of 40,000"):
        map_file(str(path), predictor, max_pixels=40_000)
    for pixels, mpp in ((mosaic[:60, :200], 10), (mosaic[:120, :120], 5)):
        with pytest.raises(SceneError, match="less than one 64x64 cell .* classify it as a single tile instead"):
            classify_scene(np.ascontiguousarray(pixels), predictor, mpp=mpp)


def test_opacity_colours_and_uncertainty(predictor, mosaic):
    certain = classify_scene(mosaic, predictor, uncertain_below=0.0)
    assert np.array_equal(draw_map(certain, 0.0), mosaic)
    solid = draw_map(certain, 1.0)
    colours = class_colours(certain.label_names)
    for cell in certain.cells:
        square = solid[cell.y:cell.y + CELL, cell.x:cell.x + CELL]
        assert (square[1:, 1:] == colours[cell.label]).all()  # the interior: the pure class colour
        assert (square[0, 1:] == np.round(np.array(colours[cell.label]) * 0.6)).all()  # a darker grid line
    doubtful = classify_scene(mosaic, predictor, uncertain_below=1.0)
    assert all(c.uncertain for c in doubtful.cells)
    hatched = draw_map(doubtful, 1.0)[1:CELL, 1:CELL]
    assert (hatched == 255).all(axis=-1).mean() == pytest.approx(0.25, abs=0.03)  # white stripes
    with pytest.raises(SceneError, match="The opacity must be a number from 0 to 1"):
        draw_map(certain, 1.5)
    rows = list(csv.DictReader(io.StringIO(cells_csv(doubtful))))
    assert {r["uncertain"] for r in rows} == {"true"}


def test_legend_has_one_fixed_distinct_colour_per_class(label_names):
    entries = legend(label_names)
    assert [name for name, _ in entries] == list(label_names) and len(label_names) == 10
    assert dict(entries) == CLASS_COLOURS and len(set(CLASS_COLOURS.values())) == 10
    assert dict(entries)["Forest"] == "#1b5e20" and dict(entries)["SeaLake"] == "#08306b"
    other = class_colours(["Forest", "Glacier", "Desert"])
    assert other["Forest"] == (0x1b, 0x5e, 0x20) and other["Glacier"] != other["Desert"]
