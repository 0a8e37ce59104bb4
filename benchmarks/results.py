"""Where a benchmark's results go: its JSON file, its Markdown report beside it, and what it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(path: Path, results: dict[str, Any], markdown: str | None = None, *,
         hidden: tuple[str, ...] = ("machine",)) -> None:
    """Write `results` to the JSON file `path` (its folder made first); with `markdown`, write it beside as
    NAME.md (the file's stem in capitals) and print it, else print the results without the `hidden` keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if markdown is not None:
        path.with_name(f"{path.stem.upper()}.md").write_text(markdown)
        print(markdown)
    else:
        print(json.dumps({k: v for k, v in results.items() if k not in hidden}, indent=2))
