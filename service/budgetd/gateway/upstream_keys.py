"""Each org's Anthropic key: from a mounted secret (one file per org) or the environment, never
from a policy file (policies are config that many people read and review; keys are secrets).

Looked up in order: ``<BUDGETD_GATEWAY_UPSTREAM_KEYS_DIR>/<org>``;
``BUDGETD_GATEWAY_UPSTREAM_KEY_<ORG>`` (the org upper-cased, ``-`` and ``.`` as ``_``);
``BUDGETD_GATEWAY_UPSTREAM_KEY`` (one key for every org)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

ENV_DEFAULT = "BUDGETD_GATEWAY_UPSTREAM_KEY"
_NOT_ENV = re.compile(r"[^A-Z0-9_]")


def env_name(org: str) -> str:
    return f"{ENV_DEFAULT}_{_NOT_ENV.sub('_', org.upper())}"


class UpstreamKeys:
    def __init__(self, directory: Path | None, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.env = os.environ if env is None else env

    def for_org(self, org: str) -> str | None:
        if self.directory is not None:
            # The org name's pattern (no "/", no leading ".") keeps this inside the directory.
            try:
                key = (self.directory / org).read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                key = ""
            if key:
                return key
        return self.env.get(env_name(org)) or self.env.get(ENV_DEFAULT) or None

    def where(self, org: str) -> str:
        """Where an operator should put ``org``'s key (for the error when there is none)."""
        places = [f"{self.directory}/{org}"] if self.directory else []
        return " or ".join([*places, env_name(org), ENV_DEFAULT])
