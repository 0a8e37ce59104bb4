"""The README stays true: Space front matter, the set-up and publishing commands, the API calls the tests run."""

import inspect
import re
import shlex
import sys
from pathlib import Path

import gradio
import pytest

import space_config
import train
from eurosat import space

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
INSTALL_AND_START = "pip install -r requirements.txt && python app.py"
RUN_TESTS = "pip install -r requirements-dev.txt && python -m pytest"


def check_space_card(readme: str, root: Path = REPO) -> dict:
    """The checks a Space README must pass, here and as published: the Hub's rules, and what this project runs.

    The Spaces configuration reference's fields, types and limits (tests/space_config.py, no unknown key);
    sdk_version is the gradio pinned in requirements.txt and installed here; python_version is the Python the
    tests run on; app_file is the app that exists. Returns the front matter.
    """
    meta = space_config.front_matter(readme)
    assert isinstance(meta, dict), "README.md must start with the Spaces front matter"
    assert space_config.problems(meta, strict=True) == []
    pinned = re.search(r"^gradio==(\S+)$", (root / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pinned == gradio.__version__
    assert meta["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert meta["app_file"] == "app.py" and (root / meta["app_file"]).is_file()
    assert meta["license"] == "mit" and meta["title"] and meta["emoji"] and meta["short_description"]
    return meta


def test_space_front_matter():
    meta = check_space_card(README)
    # No invented Hub id: the publish command writes models: and preload_from_hub: for the model it is given.
    assert meta["datasets"] == ["timm/eurosat-rgb"] and "models" not in meta and "preload_from_hub" not in meta
    assert "EUROSAT_MODEL" in README


@pytest.mark.parametrize("field, value, complaint", [
    ("short_description", "Land cover of Sentinel-2 tiles and scenes, with Grad-CAM and a GPT-4o second opinion",
     "length must be less than or equal to 60 characters long (it is 84)"),
    ("python_version", 3.11, "must be a Python 3.x or 3.x.x version, as a string"),
    ("sdk_version", 6.3, "must be a version such as 6.31.0, as a string"),
    ("colorFrom", "orange", "must be one of red, yellow, green, blue, indigo, purple, pink, gray"),
    ("sdk", "streamlit", "must be one of gradio, docker, static"),
    ("emoji", "sat", "must be an emoji"),
    ("app_file", "/app.py", "must be a path relative to the root of the repository"),
    ("models", "owner/name", "must be a list of strings"),
    ("preload_from_hub", ["owner/name config.json main"], "item 'owner/name config.json main' must be"),
    ("pinned", "yes", "must be true or false"),
    ("sdk_verison", "6.31.0", "is not a field of the Spaces configuration reference"),
])
def test_the_front_matter_check_refuses_what_the_hub_refuses(field, value, complaint):
    meta = {**space_config.front_matter(README), field: value}
    found = space_config.problems(meta, strict=True)
    assert len(found) == 1 and found[0].startswith(f'"{field}" {complaint}'), found


def test_the_two_setup_commands_are_the_ones_ci_runs():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert blocks[0].strip() == INSTALL_AND_START
    assert blocks[1].strip() == RUN_TESTS
    ci = (REPO / ".ci" / "run").read_text()
    assert RUN_TESTS in ci.splitlines()
    assert "pip install -r requirements.txt" in ci.splitlines()


def test_readme_api_calls_are_the_ones_the_tests_run():
    import test_app

    tested = {line.strip() for line in inspect.getsource(test_app.test_readme_snippets).splitlines()
              if "client.predict(" in line}
    documented = {line.split("#")[0].strip() for line in README.splitlines() if "client.predict(" in line}
    # The tests use their own key; everything else is character for character the same.
    documented = {line.replace('api_key="sk-..."', "api_key=KEY") for line in documented}
    assert documented == tested


def test_the_publishing_section_is_the_three_commands_that_work():
    """Train and push, publish the Space with that model, call it: each parses, and they name the same ids."""
    section = README[README.index("## Publishing"):README.index("## Results")]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    fit, publish, call = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert fit.startswith("python train.py ") and publish.startswith("python -m eurosat.space ")
    pushed = train.parse_args(shlex.split(fit)[2:]).push_to_hub
    published = space.parser().parse_args(shlex.split(publish)[3:])
    assert pushed and published.model == pushed and published.secret_openai_key
    assert call == space.call_line(published.space)  # the line the publish command prints


def test_the_layout_section_matches_the_tree():
    layout = README[README.index("## Layout"):README.index("## Data and licence")]
    listed = set(re.findall(r"^  (\w+\.py|\w+/)", layout, re.M))
    modules = {p.name for p in (REPO / "eurosat").glob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.name}/" for p in (REPO / "eurosat").iterdir() if (p / "__init__.py").is_file()}
    assert listed == modules | packages
    for package in packages:  # and every module inside a package, indented under it
        inside = {p.name for p in (REPO / "eurosat" / package).glob("*.py") if p.name != "__init__.py"}
        assert set(re.findall(r"^    (\w+\.py)", layout, re.M)) >= inside, package
    for folder in ("benchmarks/", "results/", "tests/", "examples/", "models/eurosat-rgb-resnet18-cpu/"):
        assert folder in layout and (REPO / folder).is_dir()


def test_the_granule_command_is_documented_with_its_own_help(monkeypatch):
    from eurosat import map as command

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps its help to the terminal's width
    section = README[README.index("### Whole granules from the command line"):README.index("### MCP")]
    documented = re.search(r"--help`:\n\n```\n(.*?)```", section, re.S).group(1)
    assert documented.strip() == command.parser().format_help().strip()
    example = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    assert command.parser().parse_args(shlex.split(example)[3:]).csv == "cells.csv"
