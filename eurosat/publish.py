"""Uploading to the Hugging Face Hub: a finished run folder, and the words for a failed upload; saving stays in `hub`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UserError


class PushError(UserError, RuntimeError):
    """An upload that failed; the local folder is untouched and the message gives the retry command."""


def push(directory: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
         commit_message: str = "Upload EuroSAT checkpoint") -> str:
    """Upload a saved folder to the Hub and return the commit URL; the folder itself is never modified."""
    from huggingface_hub import HfApi, get_token

    directory = Path(directory)
    retry = f"python train.py push {directory} {repo_id}" + (" --private" if private else "")
    # Checked up front: without a token the Hub would only answer 401, which reads like a rights problem.
    token = token or get_token()
    if not token:
        raise PushError(f"Could not upload {directory} to {repo_id!r}: no Hugging Face token (set HF_TOKEN or "
                        f"run `hf auth login`). The local output is intact. Retry with: {retry}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=commit_message,
                                 ignore_patterns=["train_state*", ".*"])
    except Exception as e:  # offline, no rights, bad id: all end the same way for the user
        raise PushError(
            f"Could not upload {directory} to {repo_id!r}: {describe_failure(e)}. "
            f"The local output is intact. Retry with: {retry}") from None
    return str(getattr(info, "commit_url", info))


def describe_failure(error: Exception) -> str:
    """What went wrong with a Hub request, in words for the user: never the token, never a traceback."""
    from huggingface_hub.errors import HfHubHTTPError

    # huggingface_hub wraps a failed file transfer (after the repo was created and the upload planned) in a
    # RuntimeError naming the file; the Hub then never received the commit.
    transfer = re.match(r"Error while uploading '(.+)' to the Hub", str(error))
    if isinstance(error, RuntimeError) and transfer and error.__cause__ is not None:
        cause = error.__cause__
        status = _status(cause)
        how = f"the storage answered HTTP {status}" if status else _describe_other(cause)
        return f"uploading {transfer[1]} failed ({how}), so nothing was committed"
    if isinstance(error, HfHubHTTPError):
        status = _status(error)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}); check that it has write access to this repo"
        return f"the Hub answered HTTP {status}"
    if isinstance(error, ValueError) and str(error).startswith("Invalid metadata in README.md"):
        reasons = "; ".join(line[2:] for line in str(error).splitlines() if line.startswith("- "))
        return f"the Hub refused the front matter of README.md ({reasons or 'no reason given'})"
    return _describe_other(error)


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _describe_other(error: BaseException) -> str:
    name = type(error).__name__
    if "Offline" in name or "Connect" in name or "Timeout" in name or isinstance(error, OSError):
        return "the Hub could not be reached (offline?)"
    return name
