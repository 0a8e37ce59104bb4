"""Uploading a finished run folder to the Hugging Face Hub; saving and loading stay in `hub`."""

from __future__ import annotations

import os
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
            f"Could not upload {directory} to {repo_id!r}: {_describe_push_failure(e)}. "
            f"The local output is intact. Retry with: {retry}") from None
    return str(getattr(info, "commit_url", info))


def _describe_push_failure(error: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}); check that it has write access to this repo"
        return f"the Hub answered HTTP {status}"
    name = type(error).__name__
    if "Offline" in name or "Connect" in name or "Timeout" in name or isinstance(error, OSError):
        return "the Hub could not be reached (offline?)"
    return name
