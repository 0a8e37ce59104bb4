"""Files named in API requests: only a regular file that Gradio stored as an upload, checked before any read."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from .errors import UserError

log = logging.getLogger(__name__)

NO_IMAGE = "No image was given: upload a satellite tile (PNG or JPEG)."
# One text for every refused path, whether or not it exists, so that a reply says nothing about
# the server's files; the same for plain strings, which are refused without a look at the disk.
NOT_AN_UPLOAD = ("The image is not a file uploaded to this app, or the upload has expired: upload it again. "
                 "API clients send a file with gradio_client.handle_file(path).")
PLAIN_STRING = ("The image arrived as a plain text path or URL, which this app does not open: send the file "
                "itself with gradio_client.handle_file(path).")
# Gradio would download such a file itself, with no size limit: a URL names nothing on this server, so
# it can have a message of its own.
URL_REFUSED = ("This app does not download images from URLs: download the image and send the file with "
               "gradio_client.handle_file(path) (MCP clients: a data: URL).")

# O_NONBLOCK: opening a FIFO or a terminal returns at once instead of waiting for a writer or a carrier.
# O_NOCTTY: a terminal opened by mistake never becomes the server's controlling terminal.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UploadError(UserError, ValueError):
    """A file argument that is not a usable upload; the message is for the user and names no server path."""


@dataclass(frozen=True)
class Upload:
    """A checked upload: a regular file of this app's that may be opened, and what its user called it."""

    path: str  # absolute, inside one of the roots it was checked against
    name: str  # the user's own file name, for display only: never used to open anything
    size: int  # bytes

    @property
    def is_zip(self) -> bool:
        return self.name.lower().endswith(".zip")


def plain_text(name: str) -> str:
    """A file name shown as text only: control characters replaced, long names cut to 255 characters."""
    return _CONTROL.sub("?", name)[:255]


def display_name(value: Any) -> str:
    """The user's own name of a file argument: the last part of its `orig_name`, else of its path, as plain text."""
    path = value.get("path") if isinstance(value, Mapping) else value
    name = value.get("orig_name") if isinstance(value, Mapping) else None
    return plain_text(re.split(r"[\\/]", str(name or path or ""))[-1]) or "(unnamed file)"


def uploaded_file(value: Any, *, roots: Sequence[str | os.PathLike], max_bytes: int) -> Upload:
    """The upload that a handler's raw file argument names, or UploadError.

    `value` is what a handler running with preprocess=False receives: a FileData dict (with or
    without `meta`: Gradio adds `meta` to unchecked dicts too), a string, None or anything else.
    An Upload is returned only for a regular file inside one of `roots` (Gradio's upload folder; the
    app's examples folder) with no symbolic link below the root, in a folder chain that only this
    user or root can change, of at most `max_bytes`. The file is opened without following links and
    without blocking, and checked on the open descriptor; nothing is read from it. A dict naming an
    http(s) URL, which Gradio would otherwise download, is refused with a message of its own.
    """
    if value is None or value == "":
        raise UploadError(NO_IMAGE)
    if isinstance(value, str):
        raise UploadError(PLAIN_STRING)
    path = value.get("path") if isinstance(value, dict) else None
    if isinstance(path, str) and path.lower().startswith(("http://", "https://")):
        raise UploadError(URL_REFUSED)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise UploadError(NOT_AN_UPLOAD)
    for root in roots:
        parts = _parts_below(path, root)
        if parts is not None:
            size = _checked_size(str(root), parts)
            if size is None:
                break
            if size > max_bytes:
                raise UploadError(f"The file is {size:,} bytes, over this app's limit of {max_bytes:,} bytes: "
                                  "upload a smaller image (a EuroSAT tile is a few kilobytes).")
            return Upload(os.path.join(os.path.abspath(root), *parts), display_name(value), size)
    raise UploadError(NOT_AN_UPLOAD)


def _parts_below(path: str, root: str | os.PathLike) -> list[str] | None:
    """The components of `path` below `root`, or None when it is not inside it.

    `..` is resolved by text here; links are never followed below the root, so text is what counts.
    The root is matched as given and as resolved: Gradio names uploads under the folder it was told.
    """
    absolute = os.path.abspath(path)
    for base in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
        relative = os.path.relpath(absolute, base)
        if relative != os.curdir and relative != os.pardir and not relative.startswith(os.pardir + os.sep):
            return relative.split(os.sep)
    return None


def _checked_size(root: str, parts: list[str]) -> int | None:
    """The size of the regular file at root/parts, or None when any check fails or the file is missing."""
    try:
        with ExitStack() as stack:
            directory = None
            for depth, name in enumerate([root, *parts[:-1]]):
                directory = _open_dir(stack, name, directory, nofollow=depth > 0)
                if directory is None:
                    return None
            before = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                return None
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=directory)
            stack.callback(os.close, fd)
            after = os.fstat(fd)
            # The same inode that lstat saw: nothing was swapped in between.
            if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                return None
            return after.st_size
    except (OSError, ValueError):
        return None


def _open_dir(stack: ExitStack, name: str, parent: int | None, *, nofollow: bool = False) -> int | None:
    """An open folder that no other user can change, or None; a link below the root fails to open (ELOOP)."""
    fd = os.open(name, _DIR_FLAGS | (os.O_NOFOLLOW if nofollow else 0), dir_fd=parent)
    stack.callback(os.close, fd)
    info = os.fstat(fd)
    # Another user who can write here could swap the checked file for a link after it is returned
    # (a /tmp/gradio created first by someone else, say): such a folder is refused, and the operator told.
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & stat.S_IWOTH:
        log.warning("upload folder %r (or its root) belongs to another user or anyone can write to it, so no "
                    "file under it is used: set GRADIO_TEMP_DIR to a folder of this user's own", name)
        return None
    return fd
