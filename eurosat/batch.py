"""Batches: many tiles at once, from files and ZIP archives, each opened safely, classified together, as rows and CSV.

Rows come in this order: files that could not be classified first (they need the user most), then
the others by confidence, lowest first, so the doubtful answers are read before the sure ones.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from .config import MAX_PIXELS
from .errors import UserError
from .fileio import atomic_write
from .imaging import ImageError, open_image, to_tensor
from .uploads import Upload, display_name, plain_text

if TYPE_CHECKING:
    from .inference import Predictor

MAX_FILES = 500  # files in one batch, counting each file inside an archive
MAX_ARCHIVE_ENTRIES = 2000  # entries in one archive's directory, folders included, read before unpacking
MAX_MEMBER_BYTES = 32 * 1024 * 1024  # one file, once unpacked
MAX_UNPACKED_BYTES = 256 * 1024 * 1024  # all files unpacked from the archives of one batch
COLUMNS = ("file", "label", "probability", "top3", "error")

_CHUNK = 1024 * 1024
_WAITING_BYTES = 64 * 1024 * 1024  # decoded images held before they are classified
# Only these are read: Deflate output is bounded per read call, while one call into the bzip2 or LZMA
# decoders can inflate a few kilobytes into hundreds of megabytes before any count could stop it.
_COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
# What archivers add beside the files: never images, and not the user's to fix.
_ARCHIVER_LITTER = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$|desktop\.ini$)")


class BatchError(UserError, ValueError):
    """A batch that cannot be classified at all; the message tells the user what to upload instead."""


@dataclass(frozen=True)
class _Entry:
    """One file of the batch: an upload (`path`), a member of an open archive, or an error found on listing."""

    name: str
    path: str | None = None
    archive: zipfile.ZipFile | None = None
    member: zipfile.ZipInfo | None = None
    error: str | None = None


def classify_batch(uploads: Sequence[str | os.PathLike | Upload], predictor: Predictor, *,
                   batch_size: int = 64, progress: Callable[[int, int], None] | None = None,
                   max_pixels: int = MAX_PIXELS) -> list[dict[str, Any]]:
    """Classify every image among `uploads` (checked uploads, named by their user's file name, or paths).

    A `.zip` upload is read as an archive: each file inside is one row named by its path in the
    archive (folders skipped; archives inside archives are not opened). Members are unpacked to temp
    files with generated names, never to their own paths, within MAX_MEMBER_BYTES each and
    MAX_UNPACKED_BYTES in all, counted on the bytes actually read. Each image is opened as a single
    upload is (`imaging.open_image` with `reduce_to` the input size) and turned into the same tensor,
    so its row equals the single-tile answer; images are classified together through
    `predictor.classify` in groups of one tensor size. A file that fails gets a row with its error.
    `progress(done, total)` counts files. Rows: dicts with COLUMNS, in the order of the module docstring.
    """
    if not uploads:
        raise BatchError("No files were given: upload one or more images, or a ZIP archive of them.")
    if len(uploads) > MAX_FILES:
        raise BatchError(f"{len(uploads):,} files were uploaded, over the limit of {MAX_FILES:,} per batch: "
                         "split them into several batches.")
    with contextlib.ExitStack() as stack:
        entries = [entry for upload in uploads for entry in _entries(upload, stack)]
        if not entries:
            raise BatchError("No files were found: the ZIP archives are empty. Upload images, or archives of them.")
        if len(entries) > MAX_FILES:
            raise BatchError(f"The upload holds {len(entries):,} files, over the limit of {MAX_FILES:,} per batch: "
                             "split it into several batches.")
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="eurosat-batch-"))
        rows = _run(entries, scratch, predictor, batch_size, progress, max_pixels)
    return sorted(rows, key=lambda r: (r["error"] is None, r["probability"] or 0.0, r["file"]))


def _entries(upload: str | os.PathLike | Upload, stack: contextlib.ExitStack) -> list[_Entry]:
    name = upload.name if isinstance(upload, Upload) else display_name(os.fspath(upload))
    path = upload.path if isinstance(upload, Upload) else upload
    if not name.lower().endswith(".zip"):
        return [_Entry(name, path=os.fspath(path))]
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = archive.infolist()
    except Exception:  # zipfile raises many types for a damaged directory
        return [_Entry(name, error="This ZIP archive is damaged or not a ZIP archive, and could not be read.")]
    if len(members) > MAX_ARCHIVE_ENTRIES:
        return [_Entry(name, error=f"This ZIP archive holds {len(members):,} entries, over the limit of "
                                   f"{MAX_ARCHIVE_ENTRIES:,}: split it into smaller archives.")]
    files = [m for m in members if not m.is_dir() and not _ARCHIVER_LITTER.search(m.filename)]
    declared = sum(m.file_size for m in files)
    if declared > MAX_UNPACKED_BYTES:
        return [_Entry(name, error=f"This ZIP archive declares {declared:,} bytes of files once unpacked, over "
                                   f"the limit of {MAX_UNPACKED_BYTES:,}: split it into smaller archives.")]
    return [_Entry(plain_text(m.filename), archive=archive, member=m) for m in files]


def _run(entries: list[_Entry], scratch: str, predictor: Predictor, batch_size: int,
         progress: Callable[[int, int], None] | None, max_pixels: int) -> list[dict[str, Any]]:
    """Open the entries one by one, then classify the images: one `predictor.classify` call per tensor size.

    Should the decoded images waiting grow past _WAITING_BYTES (large photos), those waiting are
    classified at once, so memory stays bounded; tiles of one size all go in a single call.
    """
    size = predictor.data_config.input_size
    rows: list[dict[str, Any]] = []
    waiting: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
    held, budget = 0, MAX_UNPACKED_BYTES

    def classify() -> None:
        for names, tensors in (zip(*group) for group in waiting.values()):
            before = len(rows)
            report = None if progress is None else (lambda done, _: progress(before + done, len(entries)))
            probs = predictor.classify(torch.stack(tensors), batch_size=batch_size, progress=report)
            rows.extend(_answer(name, p, predictor.label_names) for name, p in zip(names, probs))
        waiting.clear()

    for number, entry in enumerate(entries):
        path = entry.path
        try:
            if entry.error:
                raise ImageError(entry.error)
            if entry.member is not None:
                path = os.path.join(scratch, f"member-{number}")
                budget -= _unpack(entry.archive, entry.member, path, budget)
            tensor = to_tensor(open_image(path, max_pixels=max_pixels, reduce_to=size), size)
        except ImageError as error:
            rows.append(_row(entry.name, error=str(error)))
            continue
        finally:
            if entry.member is not None:
                Path(path).unlink(missing_ok=True)
        waiting.setdefault(tuple(tensor.shape), []).append((entry.name, tensor))
        held += tensor.numel()
        if held > _WAITING_BYTES:
            classify()
            held = 0
    classify()
    return rows


def _unpack(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: str, budget: int) -> int:
    """Copy one member to `target`, counting the bytes read; ImageError when it is refused. Returns the bytes."""
    if member.flag_bits & 0x1:
        raise ImageError("This file is encrypted in the ZIP archive: make the archive without a password.")
    if member.compress_type not in _COMPRESSIONS:
        raise ImageError("This file is compressed in a way this app does not unpack (only Deflate): "
                         "make the archive with the standard ZIP compression.")
    limit = min(MAX_MEMBER_BYTES, budget)
    if member.file_size > limit:
        raise ImageError(_too_large(limit))
    written = 0
    try:
        with archive.open(member) as source, open(target, "xb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                if written > member.file_size:  # more than the header declared, so over no check made above
                    break
                out.write(chunk)
    except Exception:  # a damaged member: zipfile, zlib and the file system raise many types
        raise ImageError("This file in the ZIP archive is damaged and could not be unpacked.") from None
    if written > member.file_size:
        raise ImageError("This file in the ZIP archive holds more than its header declares: the archive is "
                         "damaged, or built to exhaust memory, so the file was not unpacked.")
    return written


def _too_large(limit: int) -> str:
    if limit < MAX_MEMBER_BYTES:
        return (f"Not unpacked: the files of this batch's archives add up to more than {MAX_UNPACKED_BYTES:,} "
                "bytes: split the archives into several batches.")
    return f"This file is over {MAX_MEMBER_BYTES:,} bytes once unpacked, the limit per file: it was not unpacked."


def _answer(name: str, probs: torch.Tensor, label_names: Sequence[str]) -> dict[str, Any]:
    from .inference import ranked

    top = ranked(probs, label_names, 3)
    label = next(iter(top))
    return _row(name, label=label, probability=top[label], top3=", ".join(f"{k} {v:.1%}" for k, v in top.items()))


def _row(file: str, *, label: str | None = None, probability: float | None = None, top3: str = "",
         error: str | None = None) -> dict[str, Any]:
    return {"file": file, "label": label, "probability": probability, "top3": top3, "error": error}


def batch_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV with COLUMNS. A name that a spreadsheet would run as a formula (=, +, -, @) gets a
    leading apostrophe, so opening the file cannot execute anything an uploader put in a file name."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        name = row["file"]
        probability = row["probability"]
        writer.writerow(["'" + name if name[:1] in ("=", "+", "-", "@") else name, row["label"] or "",
                         "" if probability is None else f"{probability:.6f}", row["top3"], row["error"] or ""])
    return text.getvalue()


def write_batch(rows: Sequence[Mapping[str, Any]], folder: str | Path, name: str = "batch_results.csv") -> Path:
    """Write `batch_csv(rows)` atomically to folder/name and return its path."""
    return atomic_write(Path(folder) / name, lambda f: f.write(batch_csv(rows)), mode="w")
