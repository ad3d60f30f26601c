"""``lightning-focal-train --help``: what the app does, one line per config group, the README's examples."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_focal._app_help import register_help_resolver
from lightning_focal.app_utils import config_dir

REPO = Path(__file__).resolve().parents[1]


def readme_examples() -> list[str]:
    """The commands of the first bash block under "## The command-line app" in the README."""
    section = (REPO / "README.md").read_text().split("## The command-line app", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [" ".join(line.split()) for line in block.splitlines() if line.strip()]


def app_groups() -> dict[str, list[str]]:
    """Every config group outside hydra/ with its options, as Hydra's loader sees them."""
    loader = GlobalHydra.instance().config_loader()
    return {
        group: sorted(loader.get_group_options(group))
        for group in loader.list_groups("")
        if group != "hydra"
    }


def group_line(text: str, group: str) -> str:
    (line,) = [line for line in text.splitlines() if line.split()[:1] == [group]]
    return line


def test_help_says_what_the_app_does_lists_groups_and_readme_examples():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_focal.train", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert text.startswith("lightning-focal-train: train an image classifier")
    assert "focal loss" in text.split("==", 1)[0]
    assert "powered by Hydra" not in text  # Hydra's generic header is gone
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        groups = app_groups()
    for group, options in groups.items():  # one line each: a description, then every option
        description, listed = group_line(text, group).rsplit(": ", 1)
        assert len(description.split()) > 2, f"{group} has no description: {description!r}"
        assert [o.rstrip("*") for o in listed.split(", ")] == options
    for group, default in {
        "data": "digits_lt",
        "model": "timm_classifier",
        "loss": "focal_cb",
    }.items():
        assert f" {default}*" in group_line(text, group)
    lines = {" ".join(line.split()) for line in text.splitlines()}
    examples = readme_examples()
    assert len(examples) == 5
    assert [e for e in examples if e not in lines] == []


def test_help_marks_the_options_chosen_on_the_command_line():
    register_help_resolver()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=detection"], return_hydra_config=True)
        template = cfg.hydra.help.template
        groups = app_groups()
    for group in groups:  # a new group needs its line in conf/hydra/help/lightning_focal.yaml
        group_line(template, group)
    assert "shapes*" in group_line(template, "data")
    assert "retinanet*" in group_line(template, "model")
    assert "detection*" in group_line(template, "callbacks")
    assert "detection*," in group_line(template, "experiment")
    assert "*" not in group_line(template, "debug")  # debug: null


def test_group_options_outside_hydra_says_how_to_use_it():
    from lightning_focal._app_help import group_options

    GlobalHydra.instance().clear()
    with pytest.raises(RuntimeError, match="inside a Hydra app"):
        group_options("data")
