"""Batches on real EuroSAT tiles: files and ZIP archives, per-file errors, zip bombs and hostile member names."""

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hostile_files as hf
from eurosat import batch as bt
from eurosat.batch import COLUMNS, BatchError, batch_csv, classify_batch, write_batch
from eurosat.uploads import Upload, display_name
from eurosat.imaging import open_image


@pytest.fixture(scope="module")
def tile_files(mini_tensors, label_names) -> dict[str, bytes]:
    """Six real test tiles as PNG and JPEG files, named after their true class."""
    images, labels = mini_tensors["test"]
    files = {}
    for k in range(6):
        index = int((labels == k).nonzero()[0])
        picture = Image.fromarray(images[index].permute(1, 2, 0).numpy())
        files[f"{label_names[k]}.{'png' if k % 2 else 'jpg'}"] = hf.encode(picture, "PNG" if k % 2 else "JPEG")
    return files


def write_all(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def expected(predictor, data: bytes, folder: Path) -> tuple[str, float]:
    """The single-tile answer for a file of these bytes."""
    path = folder / "single-tile-upload"
    path.write_bytes(data)
    (label, probability), = predictor.predict(open_image(path), 1).items()
    return label, probability


def archive(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            if name.endswith("/"):
                z.mkdir(name.rstrip("/"))
            else:
                z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def by_file(rows: list[dict]) -> dict[str, dict]:
    return {row["file"]: row for row in rows}


def check_sorted(rows: list[dict]) -> None:
    errors = [r for r in rows if r["error"]]
    assert rows[:len(errors)] == errors  # the files that failed come first...
    answered = [r["probability"] for r in rows[len(errors):]]
    assert answered == sorted(answered)  # ...then the doubtful before the sure


def test_several_files_each_get_the_single_tile_answer(predictor, tile_files, tmp_path):
    paths = write_all(tmp_path / "uploads", tile_files)
    progress = []
    calls = []
    original = predictor.classify

    def counting(tiles, **kwargs):
        calls.append(len(tiles))
        return original(tiles, **kwargs)

    predictor.classify = counting
    try:
        rows = classify_batch(paths, predictor, progress=lambda done, total: progress.append((done, total)))
    finally:
        del predictor.classify
    assert calls == [6]  # one call for all the tiles
    assert progress[-1] == (6, 6)
    assert sorted(by_file(rows)) == sorted(tile_files)
    for name, data in tile_files.items():
        row = by_file(rows)[name]
        label, probability = expected(predictor, data, tmp_path)
        assert row["label"] == label and row["probability"] == pytest.approx(probability, abs=1e-5)
        assert row["error"] is None and row["top3"].startswith(f"{label} {probability:.1%}, ")
        assert row["top3"].count(", ") == 2
    check_sorted(rows)
    assert [list(r) for r in rows] == [list(COLUMNS)] * 6


def test_gradio_uploads_are_named_by_the_users_own_file_name(predictor, tile_files, tmp_path):
    path, = write_all(tmp_path / "gradio" / "0a1b2c", {"upload.png": tile_files["Forest.png"]})
    value = {"path": str(path), "orig_name": "C:\\Users\\me\\my forest.png"}
    rows = classify_batch([Upload(str(path), display_name(value), path.stat().st_size)], predictor)
    assert rows[0]["file"] == "my forest.png" and rows[0]["label"] == expected(predictor, path.read_bytes(),
                                                                               tmp_path)[0]
    assert display_name({"path": "/tmp/gradio/x/tile.jpg"}) == "tile.jpg" and display_name("a/b/c.png") == "c.png"


def test_a_zip_with_nested_folders_and_a_stray_text_file(predictor, tile_files, tmp_path):
    members = {"tiles/": b"", "tiles/a/": b"", "__MACOSX/tiles/._Forest.png": b"\x00\x05\x16\x07junk"}
    members.update({f"tiles/{'a' if i % 2 else 'b'}/{name}": data for i, (name, data) in enumerate(tile_files.items())})
    members["tiles/notes.txt"] = b"Tiles from the field trip, see the spreadsheet.\n"
    rows = classify_batch([archive(tmp_path / "tiles.zip", members)], predictor)
    named = by_file(rows)
    assert sorted(named) == sorted(n for n in members if n.startswith("tiles/") and not n.endswith("/"))
    assert named["tiles/notes.txt"]["error"].startswith("This file holds text, not an image")
    assert named["tiles/notes.txt"]["label"] is None and named["tiles/notes.txt"]["probability"] is None
    for name, data in members.items():
        if name.endswith((".png", ".jpg")) and name.startswith("tiles/"):
            label, probability = expected(predictor, data, tmp_path)
            assert named[name]["label"] == label and named[name]["probability"] == pytest.approx(probability, abs=1e-5)
    check_sorted(rows)
    assert rows[0]["file"] == "tiles/notes.txt"


def test_per_file_errors_sit_beside_good_rows(predictor, tile_files, tmp_path):
    good = write_all(tmp_path / "up", {"field.jpg": tile_files["HerbaceousVegetation.jpg"]})
    bad = write_all(tmp_path / "up", {"holiday.jpg": hf.text_named_jpg(), "empty.png": b"",
                                      "bomb.png": hf.bomb_png(), "broken.zip": b"PK\x03\x04 not really"})
    rows = classify_batch(good + bad, predictor)
    named = by_file(rows)
    assert named["holiday.jpg"]["error"].startswith("This file holds text, not an image")
    assert named["empty.png"]["error"] == "The file is empty (0 bytes): upload a PNG or JPEG image."
    assert "too large to decode safely" in named["bomb.png"]["error"]
    assert named["broken.zip"]["error"].startswith("This ZIP archive is damaged or not a ZIP archive")
    assert named["field.jpg"]["error"] is None and named["field.jpg"]["label"]
    check_sorted(rows)
    assert [r["file"] for r in rows[:4]] == ["bomb.png", "broken.zip", "empty.png", "holiday.jpg"]


def test_zip_bombs_are_stopped_by_declared_and_by_counted_size(predictor, tile_files, tmp_path, monkeypatch):
    monkeypatch.setattr(bt, "MAX_MEMBER_BYTES", 1024 * 1024)
    zeros = bytes(3 * 1024 * 1024)  # 3 MB of zeros: a few kilobytes compressed
    bomb = archive(tmp_path / "bomb.zip", {"ok.png": tile_files["Forest.png"], "zeros.png": zeros})
    assert bomb.stat().st_size < 20_000
    named = by_file(classify_batch([bomb], predictor))
    assert named["zeros.png"]["error"] == (f"This file is over {1024 * 1024:,} bytes once unpacked, the limit "
                                           "per file: it was not unpacked.")
    assert named["ok.png"]["error"] is None

    # A header that lies: it declares 100 bytes for the 3 MB member, in the local and the central header.
    data = bytearray(archive(tmp_path / "liar.zip", {"zeros.png": zeros}).read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    data[local + 22:local + 26] = (100).to_bytes(4, "little")
    data[central + 24:central + 28] = (100).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(data))
    with zipfile.ZipFile(liar) as z:
        assert z.getinfo("zeros.png").file_size == 100
    row, = classify_batch([liar], predictor)
    assert row["error"] == "This file in the ZIP archive is damaged and could not be unpacked."

    # The whole batch's budget: an archive that declares more than it is refused before anything is read...
    monkeypatch.setattr(bt, "MAX_MEMBER_BYTES", 4 * 1024 * 1024)
    monkeypatch.setattr(bt, "MAX_UNPACKED_BYTES", 5 * 1024 * 1024)
    row, = classify_batch([archive(tmp_path / "big.zip", {"a.png": zeros, "b.png": zeros})], predictor)
    assert row["file"] == "big.zip" and row["error"] == (
        f"This ZIP archive declares {6 * 1024 * 1024:,} bytes of files once unpacked, over the limit of "
        f"{5 * 1024 * 1024:,}: split it into smaller archives.")
    # ...and archives that each fit, but not together, stop being unpacked where the budget ends.
    first, second = (archive(tmp_path / f"{n}.zip", {f"{n}.png": zeros}) for n in ("first", "second"))
    named = by_file(classify_batch([first, second], predictor))
    assert named["first.png"]["error"].startswith("This file is not in an image format")  # unpacked, then read
    assert named["second.png"]["error"] == (f"Not unpacked: the files of this batch's archives add up to more "
                                            f"than {5 * 1024 * 1024:,} bytes: split the archives into several "
                                            "batches.")


def test_bytes_are_counted_while_unpacking_whatever_the_header_says(tmp_path, monkeypatch):
    # zipfile itself stops at the declared size; the count is the guard should a reader ever not.
    path = archive(tmp_path / "one.zip", {"small.png": b"tiny"})
    with zipfile.ZipFile(path) as z:
        member = z.getinfo("small.png")
        monkeypatch.setattr(z, "open", lambda _: io.BytesIO(bytes(5 * 1024 * 1024)))
        with pytest.raises(bt.ImageError, match="^This file in the ZIP archive holds more than its header declares"):
            bt._unpack(z, member, str(tmp_path / "out"), bt.MAX_UNPACKED_BYTES)
    assert (tmp_path / "out").stat().st_size <= member.file_size  # stopped there, not at the end


def test_hostile_member_names_are_only_names(predictor, tile_files, tmp_path, monkeypatch):
    deep = tmp_path / "work" / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    tile = tile_files["Forest.png"]
    names = ["../../evil.png", "/abs.png", "C:/windows/drive.png", "..\\..\\back.png", "new\nline=.png"]
    path = archive(tmp_path / "hostile.zip", dict.fromkeys(names, tile))
    with zipfile.ZipFile(path) as z:
        assert [i.filename for i in z.infolist()] == names  # stored as given, leading slash and all
    rows = classify_batch([path], predictor)
    label = expected(predictor, tile, tmp_path)[0]
    assert sorted(r["file"] for r in rows) == sorted([*names[:4], "new?line=.png"])  # reported as text
    assert all(r["label"] == label and r["error"] is None for r in rows)
    written = {p.name for p in tmp_path.rglob("*")}
    assert not written & {"evil.png", "abs.png", "drive.png", "back.png"}
    assert not Path("/abs.png").exists() and list((tmp_path / "scratch").iterdir()) == []


def test_encrypted_and_unsupported_members_are_reported(predictor, tile_files, tmp_path):
    data = bytearray(archive(tmp_path / "locked.zip", {"secret.png": tile_files["Forest.png"]},
                             zipfile.ZIP_STORED).read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the 'encrypted' flag, in both headers
        data[data.index(signature) + offset] |= 0x1
    locked = tmp_path / "locked.zip"
    locked.write_bytes(bytes(data))
    bz2 = archive(tmp_path / "bz2.zip", {"bz.png": tile_files["Forest.png"]}, zipfile.ZIP_BZIP2)
    named = by_file(classify_batch([locked, bz2], predictor))
    assert named["secret.png"]["error"] == ("This file is encrypted in the ZIP archive: make the archive without a "
                                            "password.")
    assert named["bz.png"]["error"].startswith("This file is compressed in a way this app does not unpack")


def test_nothing_to_classify_and_too_many_files(predictor, tile_files, tmp_path, monkeypatch):
    with pytest.raises(BatchError, match="^No files were given: upload one or more images"):
        classify_batch([], predictor)
    empty = archive(tmp_path / "empty.zip", {"only/a/folder/": b""})
    with pytest.raises(BatchError, match="^No files were found: the ZIP archives are empty"):
        classify_batch([empty], predictor)
    monkeypatch.setattr(bt, "MAX_FILES", 3)
    paths = write_all(tmp_path / "many", tile_files)
    with pytest.raises(BatchError, match="^6 files were uploaded, over the limit of 3 per batch"):
        classify_batch(paths, predictor)
    with pytest.raises(BatchError, match="^The upload holds 6 files, over the limit of 3 per batch"):
        classify_batch([archive(tmp_path / "six.zip", tile_files)], predictor)
    monkeypatch.setattr(bt, "MAX_ARCHIVE_ENTRIES", 2)
    row, = classify_batch([archive(tmp_path / "three.zip", dict(list(tile_files.items())[:3]))], predictor)
    assert row["error"] == "This ZIP archive holds 3 entries, over the limit of 2: split it into smaller archives."


def test_images_of_other_sizes_and_a_bounded_wait(predictor, tile_files, tmp_path, monkeypatch):
    wide = hf.encode(Image.fromarray(np.tile(np.asarray(hf.example("SeaLake")), (1, 2, 1))), "PNG")
    files = {"wide.png": wide, **tile_files}
    paths = write_all(tmp_path / "mixed", files)
    monkeypatch.setattr(bt, "_WAITING_BYTES", 3 * 64 * 64 * 2)  # classify after every few tiles
    rows = by_file(classify_batch(paths, predictor))
    for name, data in files.items():
        label, probability = expected(predictor, data, tmp_path)
        assert rows[name]["label"] == label and rows[name]["probability"] == pytest.approx(probability, abs=1e-5)


def test_the_csv_has_the_columns_and_names(predictor, tile_files, tmp_path):
    paths = write_all(tmp_path / "csv", {"=HYPERLINK(evil).png": tile_files["Forest.png"], "note.jpg": b"text"})
    rows = classify_batch(paths, predictor)
    written = write_batch(rows, tmp_path / "out")
    assert written.name == "batch_results.csv" and written.read_text() == batch_csv(rows)
    table = list(csv.DictReader(io.StringIO(written.read_text())))
    assert list(table[0]) == ["file", "label", "probability", "top3", "error"]
    assert [r["file"] for r in table] == ["note.jpg", "'=HYPERLINK(evil).png"]
    assert table[0]["label"] == "" and table[0]["error"].startswith("This file holds text")
    assert float(table[1]["probability"]) == pytest.approx(rows[1]["probability"], abs=1e-6)
    assert table[1]["label"] == rows[1]["label"] and table[1]["top3"] == rows[1]["top3"]
