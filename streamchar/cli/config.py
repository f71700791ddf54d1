"""``streamchar config``: the resolved config."""

from __future__ import annotations

import argparse

from streamchar.cli.arguments import CONFIG, command, group
from streamchar.cli.common import load


def cmd_config_show(args: argparse.Namespace) -> None:
    from streamchar.config import to_yaml

    print(to_yaml(load(args)), end="")


def register(sub) -> None:
    config_sub = group(sub, "config", help="inspect configs")
    command(config_sub, "show", cmd_config_show, "print the resolved config as YAML", CONFIG)
