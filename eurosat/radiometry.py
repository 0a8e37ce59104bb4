"""Radiometry: how a raster's values become EuroSAT's 8-bit true colour, as a stated choice or decided from the file."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import UserError

# EuroSAT's own map from L1C digital numbers (reflectance x 10000) to the grey levels of its RGB release:
# `gdal_translate -scale 0 2750 1 255`, the same for every tile. See `dn_to_grey` for the evidence.
EUROSAT_DN_WHITE = 2750.0
# Processing baseline 04.00 and later (from 25 January 2022) add 1000 to every digital number; the product
# metadata says so as RADIO_ADD_OFFSET (L1C) or BOA_ADD_OFFSET (L2A) = -1000.
BASELINE_OFFSET = 1000.0
DIGITS = 10000.0  # digital numbers per unit of reflectance

AUTO = "auto"
# The choices, by the value the API takes, with the words the page shows for what was decided.
CHOICES = {
    AUTO: "decided from the file",
    "eurosat-l1c": "Sentinel-2 L1C digital numbers (EuroSAT's scaling: DN / 2750)",
    "baseline-04": "Sentinel-2 digital numbers with the +1000 offset of processing baseline 04.00 and later",
    "reflectance": "reflectance as a fraction (0 to 1)",
    "8bit": "8-bit true colour, as is",
}
LABELS = {
    AUTO: "auto (from the file)",
    "eurosat-l1c": "Sentinel-2 L1C, old baseline (DN / 2750)",
    "baseline-04": "Sentinel-2 baseline 04.00+ (DN − 1000, then / 2750)",
    "reflectance": "reflectance fraction (0–1)",
    "8bit": "8-bit true colour, as is",
}
# How much of a sample may lie below the offset and still be read as offset data: L2A water can dip slightly
# below zero reflectance, which is DN just under 1000.
_BELOW_OFFSET_SHARE = 0.001
_FLOAT_ROWS = 64  # rows of a floating-point raster converted at once
_OFFSET_KEY = re.compile(r"(BOA|RADIO)_ADD_OFFSET", re.I)
_BASELINE_KEY = re.compile(r"PROCESSING_BASELINE", re.I)


class RadiometryError(UserError, ValueError):
    """A radiometry that does not fit the file, or is not one of the choices; the message says which fit."""


@dataclass(frozen=True)
class Reading:
    """How a file's values were read: one of CHOICES other than auto, and why (what the file says, or the user)."""

    kind: str
    why: str

    def sentence(self) -> str:
        return f"read as: {CHOICES[self.kind]} ({self.why})"


def check_choice(value: Any) -> str:
    """A radiometry choice by its value or label, in any letter case; None and "" are auto."""
    if value is None or value == "":
        return AUTO
    if isinstance(value, str):
        wanted = value.strip().casefold()
        for key, label in LABELS.items():
            if wanted in (key, label.casefold()):
                return key
    raise RadiometryError(f"Unknown radiometry {str(value)[:40]!r}: choose one of {', '.join(CHOICES)}.")


def decide(choice: Any, dtype: np.dtype, sample: np.ndarray, tags: Mapping[str, str] | None = None) -> Reading:
    """The Reading of a raster from its dtype, a sample of its values (bands, h, w) and its metadata `tags`.

    auto: 8-bit values are true colour; metadata naming the offset (BOA_ADD_OFFSET, RADIO_ADD_OFFSET, a
    PROCESSING_BASELINE) decides between the baselines; floats up to 2 are reflectance fractions; digital
    numbers whose valid values (not 0) all lie at or above 1000 carry the offset. A stated choice that cannot
    fit the values (digital numbers in an 8-bit file) is refused.
    """
    choice = check_choice(choice)
    dtype = np.dtype(dtype)
    finite = sample[np.isfinite(sample)] if dtype.kind == "f" else sample.ravel()
    top = float(finite.max()) if finite.size else 0.0
    if dtype == np.uint8 and choice not in (AUTO, "8bit"):
        raise RadiometryError(f"This image holds 8-bit values (0 to 255), not {CHOICES[choice]}: choose auto or "
                              "8-bit true colour.")
    if choice != AUTO:
        return Reading(choice, "as chosen")
    if dtype == np.uint8:
        return Reading("8bit", "the file holds 8-bit values")
    stated = _from_metadata(tags or {})
    if stated is not None:
        return stated
    if dtype.kind == "f" and top <= 2.0:
        return Reading("reflectance", f"floating-point values up to {top:.3g}")
    if top <= 255:
        return Reading("8bit", f"{dtype.name} values, none above 255")
    valid = finite[finite > 0]
    if valid.size and float((valid < BASELINE_OFFSET).mean()) <= _BELOW_OFFSET_SHARE:
        return Reading("baseline-04", f"no metadata on the offset; no valid digital number below "
                                      f"{BASELINE_OFFSET:g}, the least being {valid.min():g}")
    return Reading("eurosat-l1c", "no metadata on the offset; digital numbers below 1000 occur")


def _from_metadata(tags: Mapping[str, str]) -> Reading | None:
    for key, value in tags.items():
        number = _number(value)
        if _OFFSET_KEY.search(key) and not math.isnan(number):
            if abs(number + BASELINE_OFFSET) < 0.5:
                return Reading("baseline-04", f"the file's {key} is {value}")
            if abs(number) < 0.5:
                return Reading("eurosat-l1c", f"the file's {key} is {value}")
    for key, value in tags.items():
        number = _number(str(value).strip().lstrip("N"))  # "04.00" or "N0400" (the SAFE name's form)
        if _BASELINE_KEY.search(key) and not math.isnan(number):
            baseline = number / 100 if number >= 100 else number
            return Reading("baseline-04" if baseline >= 4 else "eurosat-l1c",
                           f"the file's {key} is {value}")
    return None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def to_rgb8(bands: np.ndarray, reading: Reading, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 true colour and the (H, W) mask of valid pixels, from (3, H, W) values read as `reading`.

    A pixel is no-data when its three values all equal the file's nodata (for digital numbers and reflectance,
    0 when the file declares none: Sentinel-2's no-data) or one of them is not finite; it becomes black (0).
    Integers of up to 16 bits go through a table of every value's grey level (`_grey_table`), made by the
    same arithmetic: a granule's strip is then one lookup, not several float64 copies of it.
    """
    missing = nodata if nodata is not None else (None if reading.kind == "8bit" else 0.0)
    if bands.dtype.kind in "ui" and bands.dtype.itemsize <= 2:
        low = int(np.iinfo(bands.dtype).min)
        grey = _grey_table(reading.kind, bands.dtype.str)[bands.astype(np.int32) - low if low else bands]
        valid = np.ones(bands.shape[1:], bool) if missing is None else ~(bands == missing).all(axis=0)
        grey[:, ~valid] = 0
        return np.ascontiguousarray(np.moveaxis(grey, 0, -1)), valid
    rgb, valid = np.empty((*bands.shape[1:], 3), np.uint8), np.empty(bands.shape[1:], bool)
    for top in range(0, bands.shape[1], _FLOAT_ROWS):  # float64 copies of a few rows at a time
        values = bands[:, top:top + _FLOAT_ROWS].astype(np.float64)
        finite = np.isfinite(values).all(axis=0)
        valid[top:top + _FLOAT_ROWS] = finite if missing is None else finite & ~(values == missing).all(axis=0)
        rgb[top:top + _FLOAT_ROWS] = np.moveaxis(_grey(values, reading.kind, valid[top:top + _FLOAT_ROWS]), 0, -1)
    return rgb, valid


@functools.lru_cache(maxsize=None)
def _grey_table(kind: str, dtype: str) -> np.ndarray:
    """The grey level of every value of an integer type of up to 16 bits, by `_grey`."""
    info = np.iinfo(np.dtype(dtype))
    values = np.arange(info.min, info.max + 1, dtype=np.float64)
    return _grey(values, kind, np.ones(values.shape, bool))


def _grey(values: np.ndarray, kind: str, valid: np.ndarray) -> np.ndarray:
    """uint8 grey levels of float64 values read as `kind`; 0 where not `valid`."""
    if kind == "8bit":
        grey = np.clip(np.round(values), 0, 255)
    elif kind == "baseline-04":
        grey = np.maximum(dn_to_grey(values - BASELINE_OFFSET), 1)  # dark but valid: at or below the offset
    elif kind == "reflectance":
        grey = dn_to_grey(values * DIGITS)
    else:
        grey = dn_to_grey(values)
    return np.where(valid, np.nan_to_num(grey), 0).astype(np.uint8)


def dn_to_grey(values: np.ndarray) -> np.ndarray:
    """Sentinel-2 L1C digital numbers of any shape -> grey levels (float), as EuroSAT's RGB release made them.

    One fixed linear map for every image, so a dark, even forest stays dark and a lake stays a lake:
    grey = round(1 + 254 * DN / 2750), clipped to 1..255; DN <= 0 (Sentinel-2's no-data) and
    non-finite samples become 0.

    Where the constant comes from: the EuroSAT paper does not give it. The maintainer's description,
    relayed in jensleitloff/CNN-Sentinel issue #1 (2019), is to clip the digital numbers from 0..2750
    to 1..255, leaving 0 for no-data: `gdal_translate -ot Byte -a_nodata 0 -scale 0 2750 1 255
    -b 4 -b 3 -b 2`; in phelber/EuroSAT issue #6 (2023) the maintainer answered that the README now
    documents it. It was checked against the data, as no multispectral tiles are at hand:
    applied to the per-band means of the multispectral release (torchgeo's EuroSATDataModule: B04
    947.6, B03 1042.9, B02 1118.2), it predicts RGB channel means of 88.5, 97.3 and 104.3; the 27,000
    JPEGs of the RGB release measure 87.8, 97.0 and 104.0, slightly lower as expected where the map
    clips digital numbers above 2750. The gains implied by the means lie within 1% of 254/2750.
    Remaining uncertainty: GDAL's rounding (half a grey level) and the JPEG coding of the release (about
    one level). Products of processing baseline 04.00 and later carry a +1000 offset, which the
    "baseline-04" reading subtracts first.
    """
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values) & (values > 0)
        grey = np.clip(np.round(1.0 + np.nan_to_num(values) * (254.0 / EUROSAT_DN_WHITE)), 1, 255)
    return np.where(valid, grey, 0.0)
