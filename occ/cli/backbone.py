"""``occ backbone``."""

from __future__ import annotations

import json

from rich.table import Table

from occ.cli.common import BackboneOpt, JsonOpt, RegistryOpt, backbone_for, handle_errors, out


@handle_errors
def backbone_cmd(backbone: BackboneOpt = None, registry: RegistryOpt = None,
                 as_json: JsonOpt = False) -> None:
    """Show the backbone in use: model, weights location, fingerprint, text tower, cache and registry."""
    from occ.paths import cache_dir, registry_dir

    bb = backbone_for(backbone)
    info = bb.describe()
    info["cache"] = str(cache_dir())
    info["registry"] = str(registry_dir(registry))
    if as_json:
        print(json.dumps(info))
        return
    table = Table(title="backbone", show_header=False)
    for key, value in info.items():
        table.add_row(key, str(value))
    out.print(table)
