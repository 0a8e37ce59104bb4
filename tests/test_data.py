"""Data: the splits of the real mini dataset, a carved validation split, sources that cannot be used, decoding."""

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eurosat.data import DatasetError, decode_split, load_splits, subsample

EUROSAT_NAMES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                 "PermanentCrop", "Residential", "River", "SeaLake"]


@pytest.fixture(scope="module")
def mini_dict(mini_source):
    """The mini dataset as `datasets` itself loads it: the reference the tests compare against."""
    import datasets

    return datasets.load_dataset(mini_source)


def write_source(folder: Path, splits: dict) -> str:
    """A local dataset folder in the Hub layout (data/<split>-00000-of-00001.parquet), as load_dataset reads it."""
    (folder / "data").mkdir(parents=True)
    for name, ds in splits.items():
        ds.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return str(folder)


def per_class(ds, column: str = "label") -> Counter:
    return Counter(ds[column])


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the real mini dataset ---------------------------------------------------------------------------------------


def test_mini_splits(mini_splits, mini_dict, mini_source):
    s = mini_splits
    assert (len(s.train), len(s.validation), len(s.test)) == (200, 100, 100)
    assert s.label_names == mini_dict["train"].features["label"].names
    assert s.label_names == EUROSAT_NAMES
    assert (s.image_column, s.label_column, s.source, s.validation_carved) == ("image", "label", mini_source, False)
    assert [per_class(s.split(n)) for n in ("train", "validation", "test")] == [
        Counter({c: k for c in range(10)}) for k in (20, 10, 10)]
    # The rows are the ones listed in the dataset's own split files, each in its own split.
    for name in ("train", "validation", "test"):
        listed = (Path(mini_source) / "splits" / f"{name}.txt").read_text().split()
        assert sorted(s.split(name)["image_id"]) == sorted(listed)


def test_decode_split_matches_pil_and_the_labels(mini_splits, mini_tensors, mini_dict):
    for name, n in (("train", 200), ("validation", 100), ("test", 100)):
        images, labels = mini_tensors[name]
        assert images.dtype == torch.uint8 and images.shape == (n, 3, 64, 64)
        assert labels.dtype == torch.int64 and labels.tolist() == mini_dict[name]["label"]
    images, _ = mini_tensors["test"]
    for row in (0, 37, 99):
        pil = np.asarray(mini_dict["test"][row]["image"].convert("RGB"))
        assert np.array_equal(images[row].permute(1, 2, 0).numpy(), pil), row
    assert images.float().std() > 10  # real tiles, not a blank tensor


def test_decode_split_resizes_to_a_given_size(mini_splits, mini_dict):
    ds = mini_splits.test.select(range(4))
    images, labels = decode_split(ds, "image", "label", size=(32, 32))
    assert images.shape == (4, 3, 32, 32)
    expected = np.asarray(mini_dict["test"][2]["image"].convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(images[2].permute(1, 2, 0).numpy(), expected)
    assert labels.tolist() == mini_dict["test"]["label"][:4]


def test_decode_split_converts_modes_and_sizes_and_reads_paths(tmp_path):
    """Grey, RGBA and differently sized images, stored as bytes or as file paths, all stack as RGB."""
    import datasets

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    wide = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    (tmp_path / "grey.png").write_bytes(png(grey))
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({
        "image": [{"bytes": png(rgb), "path": None}, str(tmp_path / "grey.png"),
                  {"bytes": png(rgba), "path": None}, {"bytes": png(wide), "path": None}],
        "label": [0, 1, 1, 0]}, features=features)
    images, labels = decode_split(ds, "image", "label")
    assert images.shape == (4, 3, 64, 64) and labels.tolist() == [0, 1, 1, 0]
    assert np.array_equal(images[0].permute(1, 2, 0).numpy(), rgb)
    assert all(np.array_equal(images[1][c].numpy(), grey) for c in range(3))
    assert np.array_equal(images[2].permute(1, 2, 0).numpy(), rgba[..., :3])
    resized = np.asarray(Image.fromarray(wide).resize((64, 64), Image.Resampling.BICUBIC))
    assert np.array_equal(images[3].permute(1, 2, 0).numpy(), resized)


# --- a source without a validation split ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_val_source(tmp_path_factory, mini_dict) -> str:
    return write_source(tmp_path_factory.mktemp("no-val"), {"train": mini_dict["train"], "test": mini_dict["test"]})


def test_a_validation_split_is_carved_stratified_from_train(no_val_source, mini_dict):
    s = load_splits(no_val_source, seed=0, val_fraction=0.2)
    assert s.validation_carved
    assert s.label_names == mini_dict["train"].features["label"].names == EUROSAT_NAMES  # ClassLabel survives parquet
    assert (len(s.train), len(s.validation), len(s.test)) == (160, 40, 100)
    assert per_class(s.validation) == Counter({c: 4 for c in range(10)})
    assert per_class(s.train) == Counter({c: 16 for c in range(10)})
    train_ids, val_ids = set(s.train["image_id"]), set(s.validation["image_id"])
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(mini_dict["train"]["image_id"])
    assert s.test["image_id"] == mini_dict["test"]["image_id"]


def test_the_carve_is_reproducible_for_a_seed(no_val_source):
    first, again, other = (load_splits(no_val_source, seed=seed) for seed in (0, 0, 1))
    assert first.validation["image_id"] == again.validation["image_id"]
    assert first.train["image_id"] == again.train["image_id"]
    assert set(first.validation["image_id"]) != set(other.validation["image_id"])
    assert per_class(other.validation) == Counter({c: 4 for c in range(10)})


def test_val_fraction_sets_the_carved_size(no_val_source):
    s = load_splits(no_val_source, seed=0, val_fraction=0.1)
    assert (len(s.train), len(s.validation)) == (180, 20)
    assert per_class(s.validation) == Counter({c: 2 for c in range(10)})


@pytest.mark.parametrize("rows, val_fraction, reason", [
    (15, 0.2, "The least populated class in label column has only 1 member"),
    (200, 0.01, "The test_size = 2 should be greater or equal to the number of classes = 10"),
    (200, 1.0, "test_size=1.0 should be either positive and smaller than the number of samples 200"),
])
def test_a_validation_split_that_cannot_be_carved(tmp_path, mini_dict, rows, val_fraction, reason):
    source = write_source(tmp_path, {"train": mini_dict["train"].select(range(rows)), "test": mini_dict["test"]})
    with pytest.raises(DatasetError) as err:
        load_splits(source, val_fraction=val_fraction)
    assert str(err.value).startswith(f"Dataset {source!r} has no validation split, and none can be carved from its "
                                     f"{rows} training images with val_fraction={val_fraction}: {reason}")


# --- sources that cannot be used ----------------------------------------------------------------------------------


def test_a_missing_folder(tmp_path):
    source = str(tmp_path / "no-such-dataset")
    with pytest.raises(DatasetError) as err:
        load_splits(source)
    assert str(err.value).startswith(f"Could not load dataset {source!r}: FileNotFoundError")


def drop_image(ds):
    return ds.remove_columns("image")


def plain_int_labels(ds):
    import datasets

    return ds.cast_column("label", datasets.Value("int64"))


@pytest.mark.parametrize("damage, missing", [
    (drop_image, "no image column (a datasets.Image feature); its columns are: label, image_id"),
    (plain_int_labels, "no label column (a datasets.ClassLabel feature with the class names); "
                       "its columns are: image, label, image_id"),
], ids=["no image column", "labels are plain integers"])
def test_a_source_without_the_needed_columns(tmp_path, mini_dict, damage, missing):
    source = write_source(tmp_path, {n: damage(mini_dict[n].select(range(10))) for n in ("train", "test")})
    with pytest.raises(DatasetError) as err:
        load_splits(source)
    assert str(err.value) == f"Dataset {source!r} has {missing}"


def test_a_source_without_a_test_split(tmp_path, mini_dict):
    source = write_source(tmp_path, {"train": mini_dict["train"].select(range(10))})
    with pytest.raises(DatasetError) as err:
        load_splits(source)
    assert str(err.value) == f"Dataset {source!r} has no 'test' split; it has: train"


def test_an_unreadable_image_names_the_source_split_and_row(tmp_path, mini_dict):
    import datasets

    raw = mini_dict["train"].cast_column("image", datasets.Image(decode=False))
    rows = raw.to_dict()
    rows["image"][3] = {"bytes": b"these bytes are not an image", "path": None}
    broken = datasets.Dataset.from_dict(rows, features=raw.features).cast_column("image", datasets.Image())
    source = write_source(tmp_path, {"train": broken, "validation": mini_dict["validation"], "test": mini_dict["test"]})
    s = load_splits(source)  # nothing is decoded yet
    with pytest.raises(DatasetError) as err:
        decode_split(s.train, s.image_column, s.label_column, source=s.source, split="train")
    assert str(err.value).startswith(
        f"Dataset {source!r}: the image in row 3 of split 'train' could not be read (UnidentifiedImageError")


def test_an_empty_split(mini_splits):
    with pytest.raises(DatasetError, match="Dataset 'mini': split 'test' is empty"):
        decode_split(mini_splits.test.select([]), "image", "label", source="mini", split="test")


# --- subsample ----------------------------------------------------------------------------------------------------


def test_subsample_is_stratified_and_reproducible(mini_splits):
    train = mini_splits.train
    small = subsample(train, 50, "label", seed=0)
    assert len(small) == 50
    assert per_class(small) == Counter({c: 5 for c in range(10)})
    assert set(small["image_id"]) <= set(train["image_id"])
    assert subsample(train, 50, "label", seed=0)["image_id"] == small["image_id"]
    assert set(subsample(train, 50, "label", seed=1)["image_id"]) != set(small["image_id"])
    assert subsample(train, 200, "label") is train and subsample(train, 10_000, "label") is train
