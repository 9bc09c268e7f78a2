"""What every `schoolgate` sub-command shares: the `--policy` option and one way of
saying that the policy cannot be used. Imports nothing heavy: commands import
their own libraries when they run, so `schoolgate --help` starts at once."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schoolgate.policy import Policy

POLICY_ENV = "SCHOOLGATE_POLICY"


def default_policy_path() -> Path:
    return Path(os.environ.get(POLICY_ENV, "policy.toml"))


def add_policy_option(parser: argparse.ArgumentParser, what: str = "policy file") -> None:
    parser.add_argument("--policy", type=Path, default=default_policy_path(),
                        help=f"{what} (default: ./policy.toml or ${POLICY_ENV})")


def load_policy_or_exit(path: str | Path) -> Policy:
    """The policy, or exit 2 having listed every problem (or that the file is missing)."""
    from schoolgate.policy import PolicyInvalid, load_policy

    try:
        return load_policy(path)
    except PolicyInvalid as e:
        hint = " (`schoolgate init` writes a starting policy)" if not Path(path).exists() else ""
        print(f"schoolgate: the policy cannot be used{hint}:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
