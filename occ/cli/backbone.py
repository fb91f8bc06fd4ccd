"""``occ backbone``."""

from __future__ import annotations

import json
from typing import Annotated

from occ.cli.common import BackboneOpt, RegistryOpt, backbone_for, handle_errors, json_option, print_table
from occ.paths import cache_dir, registry_dir


@handle_errors
def backbone_cmd(backbone: BackboneOpt = None, registry: RegistryOpt = None,
                 as_json: Annotated[bool, json_option("the description as one JSON object")] = False) -> None:
    """Show the backbone in use: model, weights location, fingerprint, text tower, cache and registry."""
    from rich.markup import escape

    info = backbone_for(backbone).describe()
    info["cache"] = str(cache_dir())
    info["registry"] = str(registry_dir(registry))
    if as_json:
        print(json.dumps(info))
        return
    rows = [(key, escape(str(value))) for key, value in info.items()]
    print_table("backbone", ("field", "value"), rows, header=False)
