"""The README stays true: Space front matter, the two set-up commands CI runs, the API calls the tests run."""

import inspect
import re
from pathlib import Path

import gradio
import yaml

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
INSTALL_AND_START = "pip install -r requirements.txt && python app.py"
RUN_TESTS = "pip install -r requirements-dev.txt && python -m pytest"


def front_matter() -> dict:
    match = re.match(r"---\n(.*?)\n---\n", README, re.S)
    assert match, "README.md must start with the Spaces front matter"
    return yaml.safe_load(match.group(1))


def test_space_front_matter():
    meta = front_matter()
    pinned = re.search(r"^gradio==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == pinned == gradio.__version__
    # No invented Hub id: the README says which variable to set once weights are pushed.
    assert meta["datasets"] == ["timm/eurosat-rgb"] and "models" not in meta
    assert "EUROSAT_MODEL" in README
    assert meta["license"] == "mit" and meta["title"] and meta["emoji"]


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


def test_the_layout_section_matches_the_tree():
    layout = README[README.index("## Layout"):README.index("## Data and licence")]
    listed = set(re.findall(r"^  (\w+\.py|\w+/)", layout, re.M))
    modules = {p.name for p in (REPO / "eurosat").glob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.name}/" for p in (REPO / "eurosat").iterdir() if (p / "__init__.py").is_file()}
    assert listed == modules | packages
    for folder in ("benchmarks/", "results/", "tests/", "examples/", "models/eurosat-rgb-resnet18-cpu/"):
        assert folder in layout and (REPO / folder).is_dir()
