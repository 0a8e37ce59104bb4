"""Change between two dates on real tiles: statuses, the from→to matrix, alignment of rasters, outputs, the tab."""

import csv

import numpy as np
import pytest
import rasterio
from PIL import Image

import hostile_files as hf
from conftest import REPO, upload
from eurosat import change as changes, hub
from eurosat.changemap import draw_change, sankey
from eurosat.config import BUNDLED_MODEL, AppConfig
from eurosat.inference import Predictor
from eurosat.scene import CELL, class_colours
from eurosat.ui.page import Page
from eurosat.ui.shared import Service

ROWS, COLS = 4, 5


@pytest.fixture(scope="module")
def model() -> Predictor:
    """The bundled model (97.6% on the test split): right often enough that replaced cells show real changes."""
    checkpoint = hub.load(str(REPO / BUNDLED_MODEL))
    return Predictor(checkpoint, tta=checkpoint.tta)


@pytest.fixture(scope="module")
def tiles(mini_tensors, model):
    """The mini test split's tiles (N, 64, 64, 3), their true labels, and the model's (label, probability) of each."""
    images, labels = mini_tensors["test"]
    probs = model.classify(images).numpy()
    return (images.permute(0, 2, 3, 1).numpy(), labels.numpy(), probs.argmax(1), probs.max(1))


def grid(cells: list[np.ndarray], columns: int = COLS) -> np.ndarray:
    return np.concatenate([np.concatenate(cells[i:i + columns], axis=1) for i in range(0, len(cells), columns)])


@pytest.fixture(scope="module")
def pair(tiles, model):
    """A mosaic of 20 real tiles, and the same mosaic with 5 cells replaced by tiles of other classes.

    The replaced cells and their replacements are tiles the model labels right and confidently, so their change
    is real and detectable; the rest are the first test tiles, whatever the model makes of them.
    """
    images, truth, predicted, confidence = tiles
    threshold = model.checkpoint.notice_threshold
    sure = [i for i in range(len(images)) if predicted[i] == truth[i] and confidence[i] >= threshold]
    replaced = {1: None, 7: None, 8: None, 13: None, 19: None}
    before = [images[i] for i in range(ROWS * COLS)]
    used = set(range(ROWS * COLS))
    for cell in replaced:
        old = next(i for i in sure if i not in used)
        new = next(i for i in sure if i not in used | {old} and truth[i] != truth[old])
        used |= {old, new}
        before[cell] = images[old]
        replaced[cell] = (int(truth[old]), int(truth[new]), images[new])
    after = [replaced[k][2] if k in replaced else tile for k, tile in enumerate(before)]
    return grid(before), grid(after), {k: v[:2] for k, v in replaced.items()}


def dn(rgb: np.ndarray) -> np.ndarray:
    """A mosaic as the L1C digital numbers (3, H, W) uint16 that EuroSAT's scaling turns back into it."""
    return np.moveaxis(hf.digital_numbers(rgb), -1, 0).astype(np.uint16)


def write(folder, name: str, data: bytes):
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_replaced_cells_are_changed_and_untouched_ones_never(model, pair, label_names, tmp_path):
    before, after, replaced = pair
    a = write(tmp_path, "2018.png", hf.encode(Image.fromarray(before), "PNG"))
    b = write(tmp_path, "2024.png", hf.encode(Image.fromarray(after), "PNG"))
    progress = []
    change = changes.compare(a, b, model, max_pixels=10**7, uncertain_below=model.checkpoint.notice_threshold,
                             progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (2 * ROWS * COLS, 2 * ROWS * COLS)  # both dates, counted together
    assert len(change.cells) == ROWS * COLS
    by_place = {c.row * COLS + c.col: c for c in change.cells}
    for place, (old, new) in replaced.items():
        cell = by_place[place]
        assert (cell.status, cell.before, cell.after) == ("changed", label_names[old], label_names[new]), place
    for place, cell in by_place.items():
        if place not in replaced:
            assert cell.status in ("unchanged", "possible") and cell.before == cell.after
            assert (cell.status == "possible") == (cell.p_before < model.checkpoint.notice_threshold)
    count, area = changes.matrix(change)
    confident = [c for c in change.cells if c.status != "possible"]
    assert count.sum() == len(confident) and area.sum() == pytest.approx(len(confident) * 0.4096)
    assert count.trace() == change.count("unchanged") and count.sum() - count.trace() == change.count("changed") == 5
    rows = {r["class"]: r for r in changes.class_table(change)}
    for old, new in replaced.values():
        assert rows[label_names[new]]["gained_km2"] >= 0.4096 - 1e-9 and rows[label_names[old]]["lost_km2"] > 0
    assert sum(r["net_km2"] for r in rows.values()) == pytest.approx(0, abs=1e-9)
    assert all(r["after_km2"] - r["before_km2"] == pytest.approx(r["net_km2"], abs=1e-3) for r in rows.values())

    files = changes.write_change(change, tmp_path, stem="pair")
    assert set(files) == {"cells", "matrix"}  # plain images: no transitions raster
    lines = list(csv.DictReader(open(files["cells"])))
    assert list(lines[0]) == ["row", "col", "x", "y", "before", "p_before", "after", "p_after", "status"]
    assert sum(r["status"] == "changed" for r in lines) == 5
    matrix = list(csv.DictReader(open(files["matrix"])))
    assert len(matrix) == len(label_names) ** 2 and sum(int(r["cells"]) for r in matrix) == len(confident)

    picture = draw_change(change)
    first = next(c for c in change.cells if c.status == "changed")
    square = picture[first.row * CELL:(first.row + 1) * CELL, first.col * CELL:(first.col + 1) * CELL]
    assert (square[0, :] == class_colours(label_names)[first.before]).all()  # framed in the class before
    flows = sankey(change, ("2018", "2024")).data[0]
    assert sum(flows.link.value) == pytest.approx(area.sum(), abs=1e-3)
    assert f"{first.before} (2018)" in flows.node.label and f"{first.after} (2024)" in flows.node.label


def test_a_georeferenced_pair_is_classified_on_its_common_extent(model, pair, tmp_path):
    before, after, _ = pair
    x0, y0 = hf.ORIGIN
    # The after image starts two cells east and one cell south, and reaches past the before image.
    shifted = np.pad(after[CELL:, 2 * CELL:], ((0, CELL), (0, CELL), (0, 0)), mode="edge")
    a = write(tmp_path, "before.tif", hf.geotiff(dn(before)))
    b = write(tmp_path, "after.tif", hf.geotiff(dn(shifted) + 1000, origin=(x0 + 2 * 640, y0 - 640)))
    change = changes.compare(a, b, model, max_pixels=10**7, uncertain_below=model.checkpoint.notice_threshold)
    assert change.before.grid == change.after.grid == (ROWS - 1, COLS - 2)  # only the common extent
    assert tuple(change.before.cell_georef.transform)[:6] == (640.0, 0, x0 + 1280, 0, -640.0, y0 - 640)
    assert change.before.reading.kind == "eurosat-l1c" and change.after.reading.kind == "baseline-04"
    same = changes.compare(write(tmp_path, "a2.tif", hf.geotiff(dn(after))), a, model, max_pixels=10**7,
                           uncertain_below=model.checkpoint.notice_threshold)
    expected = {(c.row - 1, c.col - 2): c.before for c in same.cells if c.row >= 1 and c.col >= 2}
    assert {(c.row, c.col): c.after for c in change.cells} == expected  # the after date's cells, in place
    files = changes.write_change(change, tmp_path, stem="geo")
    with rasterio.open(files["transitions"]) as codes:
        assert codes.crs.to_epsg() == 32632 and codes.nodata == changes.CODE_NODATA and codes.count == 2
        assert codes.transform == change.before.cell_georef.transform
        transitions, statuses = codes.read()
    index = {name: i for i, name in enumerate(change.label_names)}
    for c in change.cells:
        assert transitions[c.row, c.col] == index[c.before] * 100 + index[c.after]
        assert statuses[c.row, c.col] == changes.STATUS_CODES[c.status]
    # The same ground at 20 m per pixel: warped onto the before raster's 10 m grid, and still compared cell by cell.
    coarse = write(tmp_path, "coarse.tif", hf.geotiff(dn(after)[:, ::2, ::2].copy(), scale=(20.0, 20.0)))
    warped = changes.compare(a, coarse, model, max_pixels=10**7, uncertain_below=model.checkpoint.notice_threshold)
    assert warped.after.grid == (ROWS, COLS) and len(warped.cells) == ROWS * COLS


def test_pairs_that_cannot_be_compared_say_why(model, pair, tmp_path):
    before, after, _ = pair
    a = write(tmp_path, "a.tif", hf.geotiff(before))
    far = write(tmp_path, "far.tif", hf.geotiff(after, origin=(600000.0, 5700000.0)))
    options = dict(max_pixels=10**7, uncertain_below=0.5)
    with pytest.raises(changes.ChangeError) as error:
        changes.compare(a, far, model, **options)
    assert str(error.value).startswith("The two rasters do not overlap: before covers x 500000 to 503200, y "
                                       "5697440 to 5700000 (EPSG:32632), after covers x 600000 to 603200")
    small = write(tmp_path, "small.png", hf.encode(Image.fromarray(after[:, :3 * CELL]), "PNG"))
    big = write(tmp_path, "big.png", hf.encode(Image.fromarray(before), "PNG"))
    with pytest.raises(changes.ChangeError, match=r"before is 320x256 pixels, after 192x256"):
        changes.compare(big, small, model, **options)
    with pytest.raises(changes.ChangeError, match="Only the before image is georeferenced"):
        changes.compare(a, big, model, **options)


def test_the_tab_returns_every_output_and_names_the_model_once(model, pair, tmp_path):
    before, after, _ = pair
    page = Page(Service(model, config=AppConfig()))
    a = write(tmp_path, "2018.tif", hf.geotiff(before))
    b = write(tmp_path, "2024.tif", hf.geotiff(after))
    picture, pair, matrix, table, plot, note, cells, matrix_csv, codes = page.change.change(
        upload(a), upload(b), "2018", "2024")
    left, right = pair
    assert picture.size == (COLS * CELL, ROWS * CELL) and left.size == right.size == picture.size
    assert note.count("eurosat-rgb-resnet18-cpu") == 1 and "**Changed**: 5 cells (2.05 km²)" in note
    assert "4% of unchanged cells" in note
    assert matrix["headers"][0].startswith("before \\ after") and any("1 · 0.41" in v for r in matrix["data"]
                                                                       for v in r)
    assert [r[0] for r in table] and codes.endswith("2018_to_2024_transitions.tif")
    assert "2018" in plot.data[0].node.label[0]
    assert open(cells).readline().strip() == "row,col,x,y,before,p_before,after,p_after,status"
