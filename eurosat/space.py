"""Publishing the app as a Hugging Face Space in one command: its files, front matter, variable and secret.

    python -m eurosat.space owner/space --model owner/name [--secret-openai-key] [--private]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import BUNDLED_MODEL, ENV_MODEL, SpaceConfig, add_flags, from_flags
from .errors import SettingError, UserError
from .hub import CHECKPOINT_FILES, hub_repo, is_local, parse_source
from .llm import ENV_OPENAI_KEY
from .publish import PushError, describe_failure

ROOT = Path(__file__).resolve().parents[1]  # the folder holding app.py: the root of the Space repo
# What `python app.py` needs on a Space, and nothing else (no tests, results or benchmarks): the app, the package,
# the requirements, the README with the Space's front matter, the example tiles and the bundled model.
TOP_FILES = ("app.py", "requirements.txt", "README.md")
FOLDERS = {"eurosat": "*.py", "examples": "*", BUNDLED_MODEL: "*"}
EXAMPLE = "examples/Forest.jpg"
_FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)\r?\n---\r?\n", re.S)


@dataclass
class Published:
    """Where the Space is, the commit that published it, and the command that calls it."""

    url: str
    commit_url: str
    call: str


def space_files(root: Path = ROOT) -> dict[str, Path]:
    """{path in the Space repo: local file}, sorted: exactly what the Space runs `python app.py` with."""
    files = {name: root / name for name in TOP_FILES}
    for folder, pattern in FOLDERS.items():
        for path in (root / folder).rglob(pattern):
            parts = path.relative_to(root).parts
            # Caches, editor and OS files, and a resumable training state never belong to the Space.
            if path.is_file() and not any(p.startswith((".", "__pycache__", "train_state")) for p in parts):
                files["/".join(parts)] = path
    missing = [name for name, path in files.items() if not path.is_file()]
    missing += [f"{BUNDLED_MODEL}/{name}" for name in CHECKPOINT_FILES if f"{BUNDLED_MODEL}/{name}" not in files]
    if missing:
        raise SettingError(f"{root} lacks {', '.join(missing)}: run the command from a checkout of this project.")
    return dict(sorted(files.items()))


def space_readme(readme: str, model: str | None, commit: str | None = None) -> str:
    """The README the Space gets: with a model, its front matter names it under `models:` and `preload_from_hub:`.

    `preload_from_hub` makes the Hub download the checkpoint files into the Space's Hugging Face cache when the
    Space is built, so the first visitor does not wait for them; `commit` pins that download to a revision.
    """
    import yaml

    match = _FRONT_MATTER.match(readme)
    if match is None or not isinstance(meta := yaml.safe_load(match.group(1)), dict):
        raise SettingError("README.md does not start with a YAML front matter (between two '---' lines); the Space "
                           "is configured by it, so restore it from the repository.")
    if model is None:
        return readme
    repo_id, _ = parse_source(model)
    meta["models"] = [repo_id]
    meta["preload_from_hub"] = [" ".join([repo_id, ",".join(CHECKPOINT_FILES), *([commit] if commit else [])])]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n{readme[match.end():]}"


def call_line(space: str) -> str:
    """The shell command that calls a published Space's /predict with an example tile, through gradio_client."""
    return (f"python -c 'from gradio_client import Client, handle_file; print(Client(\"{space}\")"
            f".predict(handle_file(\"{EXAMPLE}\"), api_name=\"/predict\"))'")


def retry_command(config: SpaceConfig) -> str:
    """The command that publishes `config` again: what a failure message tells the user to run."""
    return " ".join(["python -m eurosat.space", config.space, *(["--model", config.model] if config.model else []),
                     *(["--secret-openai-key"] if config.secret_openai_key else []),
                     *(["--private"] if config.private else [])])


def check(config: SpaceConfig, environ: Mapping[str, str]) -> str | None:
    """Refuse what cannot work before anything is sent; the OpenAI key to store, when one is asked for."""
    if hub_repo(config.space) is None or "@" in config.space:
        raise SettingError(f"{config.space!r} is not a Space id: give owner/name, e.g. alice/eurosat-land-cover.")
    if config.model is not None and is_local(config.model):
        raise SettingError(f"--model {config.model!r} is a local folder, which the Space cannot read: push it first "
                           f"(python train.py push {config.model} owner/name), then pass --model owner/name.")
    if config.model is not None and hub_repo(config.model) is None:
        raise SettingError(f"--model {config.model!r} is not a Hub model id: give owner/name or owner/name@revision.")
    if not config.secret_openai_key:
        return None
    key = environ.get(ENV_OPENAI_KEY, "").strip()
    if not key:
        raise SettingError(f"--secret-openai-key stores this environment's {ENV_OPENAI_KEY} as the Space secret, "
                           f"but it is not set: export {ENV_OPENAI_KEY} first, or leave the flag out (visitors can "
                           "still paste their own key).")
    return key


def publish(config: SpaceConfig, *, root: Path = ROOT, token: str | None = None,
            environ: Mapping[str, str] = os.environ) -> Published:
    """Create or update the Space and upload the app; nothing local is written, whatever fails."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    secret = check(config, environ)
    files = space_files(root)
    readme = files.pop("README.md").read_text(encoding="utf-8")
    space_readme(readme, None)  # a README without front matter is refused before anything is sent

    def failure(why: str) -> PushError:
        return PushError(f"Could not publish the Space {config.space!r}: {why}. Nothing local was changed. "
                         f"Retry with: {retry_command(config)}")

    token = token or get_token()
    if not token:
        raise failure("no Hugging Face token (set HF_TOKEN or run `hf auth login`)")
    api = HfApi(token=token)
    try:
        commit = None
        if config.model is not None:
            repo_id, revision = parse_source(config.model)
            try:
                info = api.model_info(repo_id, revision=revision)
            except RepositoryNotFoundError:
                raise failure(f"the Hub model {repo_id!r} was not found; push a run first (python train.py push "
                              f"RUN_FOLDER {repo_id})") from None
            except RevisionNotFoundError:
                raise failure(f"the Hub model {repo_id!r} has no revision {revision!r}") from None
            missing = [n for n in CHECKPOINT_FILES if n not in {s.rfilename for s in info.siblings or []}]
            if missing:
                raise failure(f"the Hub model {config.model!r} has no {', '.join(missing)}, so it is not a checkpoint "
                              "written by train.py")
            commit = info.sha if revision else None  # a named revision is preloaded at the commit it names now
        url = api.create_repo(config.space, repo_type="space", space_sdk="gradio", private=config.private,
                              exist_ok=True)
        # The variable and the secret before the files: the commit starts the build, which should see them.
        if config.model is not None:
            api.add_space_variable(config.space, ENV_MODEL, config.model)
        if secret is not None:
            api.add_space_secret(config.space, ENV_OPENAI_KEY, secret)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        operations.append(CommitOperationAdd(path_in_repo="README.md",
                                             path_or_fileobj=space_readme(readme, config.model, commit).encode()))
        done = api.create_commit(config.space, operations, repo_type="space",
                                 commit_message="Publish the EuroSAT app" + (f" serving {config.model}"
                                                                              if config.model else ""))
    except UserError:
        raise
    except Exception as e:  # offline, no rights, a refused front matter: the message says which
        raise failure(describe_failure(e)) from None
    return Published(str(url), done.commit_url, call_line(config.space))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eurosat.space",
        description="Create or update a Hugging Face Space (Gradio) that runs this app: uploads app.py, the eurosat "
                    "package, requirements.txt, README.md, examples/ and the bundled model, and nothing else.",
        epilog="environment: HF_TOKEN (a token with write access), OPENAI_API_KEY (read only with "
               "--secret-openai-key)")
    add_flags(p, SpaceConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    """Publish the Space the arguments describe; print where it is and how to call it."""
    config = from_flags(SpaceConfig, parser().parse_args(argv))
    try:
        published = publish(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Published {published.url} ({published.commit_url})")
    if config.model:
        print(f"It serves {config.model} (Space variable {ENV_MODEL}); its weights are preloaded when the Space "
              "is built.")
    if config.secret_openai_key:
        print(f"The Space secret {ENV_OPENAI_KEY} is set: the GPT-4o tab is on for every visitor.")
    print("Once the Space is running, call it with:")
    print(published.call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
