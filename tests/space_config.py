"""What the Hub accepts in a Space README's front matter: the Spaces configuration reference, as checks.

The fields, their types and allowed values are those of https://huggingface.co/docs/hub/spaces-config-reference
(hub-docs, docs/hub/spaces-config-reference.md, read 2026-08). One limit is not on that page but is enforced by
the Hub, whose refusal reads: "short_description" length must be less than or equal to 60 characters long.

`problems(meta)` is what the Hub stand-in's /api/validate-yaml applies to Space cards; with `strict=True` a key
the reference does not define is reported too (the Hub ignores it, so a misspelt key would pass silently).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Callable

import yaml

COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
SDKS = ("gradio", "docker", "static")
HARDWARE = ("cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
            "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8")
HEADERS = ("cross-origin-embedder-policy", "cross-origin-opener-policy", "cross-origin-resource-policy")
SHORT_DESCRIPTION_MAX = 60
OAUTH_MINUTES_MAX = 43200

_FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)\r?\n---\r?\n", re.S)
_REPO_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def front_matter(readme: str) -> dict[str, Any] | None:
    """The YAML block at the top of a README as a mapping; None when there is none. Raises yaml.YAMLError."""
    match = _FRONT_MATTER.match(readme)
    return None if match is None else yaml.safe_load(match.group(1))


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _matching(pattern: str, what: str) -> Callable[[Any], str | None]:
    return lambda value: None if isinstance(value, str) and re.fullmatch(pattern, value) else f"must be {what}"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _integer(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return None if ok else f"must be a whole number from {low} to {high}"
    return check


def _strings(value: Any) -> str | None:
    ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    return None if ok else "must be a list of strings"


def _emoji(value: Any) -> str | None:
    # Emoji are symbols (So), skin-tone modifiers (Sk), variation selectors (Mn) and joiners (Cf).
    if isinstance(value, str) and value and all(unicodedata.category(c) in ("So", "Sk", "Mn", "Cf") for c in value):
        return None
    return "must be an emoji (emoji characters only)"


def _short_description(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > SHORT_DESCRIPTION_MAX:
        return f"length must be less than or equal to {SHORT_DESCRIPTION_MAX} characters long (it is {len(value)})"
    return None


def _headers(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return "must be a mapping of header names to values"
    if not all(k in HEADERS and v == v.lower() for k, v in value.items()):
        return f"may only set {', '.join(HEADERS)}, in lower case"
    return None


def _preload(value: Any) -> str | None:
    """Each item: `repo` (all files), `repo file1,file2`, or `repo file1,file2 <40-hex commit>`."""
    if _strings(value):
        return "must be a list of strings"
    for item in value:
        parts = item.split()
        if not (1 <= len(parts) <= 3 and _REPO_ID.match(parts[0]) and (len(parts) < 2 or all(parts[1].split(",")))
                and (len(parts) < 3 or _COMMIT.match(parts[2]))):
            return f"item {item!r} must be 'repo_id', 'repo_id file1,file2' or 'repo_id file1,file2 <commit sha>'"
    return None


def _org(value: Any) -> str | None:
    return None if isinstance(value, str) or not _strings(value) else "must be a string or a list of strings"


FIELDS: dict[str, Callable[[Any], str | None]] = {
    "title": _string,
    "emoji": _emoji,
    "colorFrom": _one_of(COLORS),
    "colorTo": _one_of(COLORS),
    "sdk": _one_of(SDKS),
    "python_version": _matching(r"3\.\d+(\.\d+)?", "a Python 3.x or 3.x.x version, as a string"),
    "sdk_version": _matching(r"\d+\.\d+(\.\d+)?", "a version such as 6.31.0, as a string"),
    "suggested_hardware": _one_of(HARDWARE),
    "suggested_storage": _one_of(("small", "medium", "large")),
    "app_file": _matching(r"[^/].*", "a path relative to the root of the repository"),
    "app_build_command": _string,
    "app_port": _integer(1, 65535),
    "base_path": _matching(r"/.*", "a path starting with /"),
    "fullWidth": _boolean,
    "header": _one_of(("mini", "default")),
    "short_description": _short_description,
    "models": _strings,
    "datasets": _strings,
    "tags": _strings,
    "thumbnail": _matching(r"https?://\S+", "a URL"),
    "pinned": _boolean,
    "hf_oauth": _boolean,
    "hf_oauth_scopes": _strings,
    "hf_oauth_expiration_minutes": _integer(1, OAUTH_MINUTES_MAX),
    "hf_oauth_authorized_org": _org,
    "disable_embedding": _boolean,
    "startup_duration_timeout": _matching(r"(\d+[hms])+", "a duration such as 1h or 30m"),
    "custom_headers": _headers,
    "preload_from_hub": _preload,
    # Not a Space setting but metadata any Hub repo card may carry: the repository's licence.
    "license": _string,
}


def problems(meta: Any, *, strict: bool = False) -> list[str]:
    """One sentence per field the Hub would refuse, in the Hub's own style; empty when the card is accepted."""
    if not isinstance(meta, dict):
        return ["the front matter must be a YAML mapping of fields"]
    found = [f'"{key}" {why}' for key, value in meta.items()
             if key in FIELDS and (why := FIELDS[key](value)) is not None]
    if strict:
        found += [f'"{key}" is not a field of the Spaces configuration reference' for key in meta
                  if key not in FIELDS]
    return found
