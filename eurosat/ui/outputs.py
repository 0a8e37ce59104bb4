"""What responses carry: a folder of their own for the files they return, and pictures that are files of their own."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from PIL import Image

# A response's own files are copied into Gradio's cache as the handler returns; the originals go after this long.
OUTPUT_SECONDS = 300


def own_file(image: Image.Image) -> Image.Image:
    """`image`, tagged with an id so that this response gets a file of its own.

    Gradio caches an output under the hash of its bytes and rewrites that file in place, so two
    visitors getting the same picture at the same moment could each download the other's
    half-written file. A per-response PNG text entry makes every response's bytes differ.
    """
    image.info["response"] = uuid.uuid4().hex
    return image


class Outputs:
    """Folders for the files responses carry (CSV, GeoTIFF, JSON), one per response, removed when no longer needed.

    Gradio copies every returned file into its own cache, which `delete_cache` cleans; the file
    written here is only read for that copy, right after the handler returns. So each new folder
    sweeps away the folders older than `keep_seconds`, and the disk holds only the recent ones.
    """

    def __init__(self, keep_seconds: float = OUTPUT_SECONDS):
        self.keep_seconds = keep_seconds
        self._root: Path | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="eurosat-outputs-"))
            return self._root

    def new(self) -> Path:
        """An empty folder of this response's own; older folders are removed first."""
        now = time.time()
        for folder in self.root.iterdir():
            try:
                if now - folder.stat().st_mtime > self.keep_seconds:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:  # another request removed it first
                pass
        return Path(tempfile.mkdtemp(dir=self.root))
