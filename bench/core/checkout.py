"""Where framebench was installed from: the checkout of an editable install (`make install`), which the
environments (--env) and the README generator build on and the machine record names by its commit."""

from __future__ import annotations

import importlib.metadata
import json
import urllib.parse
from pathlib import Path


def source_checkout() -> Path | None:
    """The folder framebench was installed from in editable mode (`make install`), as pip records it
    (PEP 610's direct_url.json); None for an installed wheel, which has no checkout."""
    try:
        direct = json.loads(importlib.metadata.distribution("framebench").read_text("direct_url.json") or "{}")
    except (importlib.metadata.PackageNotFoundError, json.JSONDecodeError):
        return None
    if not direct.get("dir_info", {}).get("editable") or not direct.get("url", "").startswith("file://"):
        return None
    return Path(urllib.parse.unquote(direct["url"][len("file://") :]))
