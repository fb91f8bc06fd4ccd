"""The registry: the on-disk store of enrolled verifiers.

Layout (``root`` is :func:`occ.paths.registry_dir`)::

    <root>/
      registry.json                  {"format": "occ-registry", "schema_version": 1}, made by the first write
      .lock                          inter-process writer lock (filelock); readers never take it
      .changes                       a random token, replaced after every committed write (source or
                                     joint model): a long-running reader reads it to notice changes
                                     (:meth:`Registry.changes`)
      .staging/                      folders of writes in progress; readers ignore it
      sources/<name>/CURRENT         name of the committed version folder, replaced atomically
      sources/<name>/<version>/verifier.safetensors
      sources/<name>/<version>/verifier.json
      joint-<key>.safetensors        the joint model of the lda sources enrolled on one backbone (<key>: a digest
                                     of its fingerprint; :mod:`occ.openset`), derived from the sources and
                                     refitted after every write; written under the lock (:meth:`Registry.write_joint`)
                                     through a temporary ``.joint-<key>.safetensors.<hex>.tmp``

Crash safety. A write builds its version folder under ``.staging/`` (files and folder fsynced), then,
holding the lock, moves it to ``sources/<name>/<version>`` (a rename on the same filesystem) and swaps
``CURRENT`` with ``os.replace``. Only after ``CURRENT`` names the new version is the old one deleted. A
process killed at any instant therefore leaves either the old version or the new one readable, never a mix;
a source whose first write was interrupted has no ``CURRENT``, is not listed, and is swept by the next
writer, as are abandoned staging folders, unreferenced version folders and the temporary files of a
joint model write (``.joint-*.tmp``, like ``.registry.json.*.tmp`` written only under the lock).

The joint model. Every committed write (:meth:`Registry.save`, ``store``, ``remove``, ``import_file``)
ends by bringing the joint model of the backbone it touched in line with the sources
(:func:`occ.openset.after_change`), so a Python caller and the command line leave the same registry. A
model is stored only if no source changed while it was fitted (checked under the lock); a process killed
before that leaves the previous model, which attribution sees does not match and refits in memory.

Concurrency. Writers build their staging folder without the registry lock (each holds a lock on its own
staging entry so that a concurrent writer's sweep can tell live staging from abandoned staging) and take
the registry lock only to commit, re-checking under it whether the name exists. Readers never lock: they
read ``CURRENT``, open that version, and if a concurrent writer removed it meanwhile they read ``CURRENT``
again and retry.

Integrity and trust. ``verifier.json`` carries a SHA-256 checksum of its own canonical JSON, plus the
SHA-256 and size of ``verifier.safetensors``; both are checked on every read. This is tamper-*evidence*
against accidental corruption and casual edits (a truncated copy, a flipped bit, a hand-edited threshold),
**not a security boundary**: anyone who can edit the files can recompute the checksums. What loading does
guarantee is that it never runs code from a file: tensors are parsed with ``safetensors`` from the very
bytes that were hashed (never ``torch.load`` or pickle), and imported archives are validated in memory
(member names and types, sizes, compression ratio, checksums, tensor format) before anything is written.

Modules: :mod:`~occ.registry.schema` (file names, formats, limits, names, the checked ``verifier.json``
record), :mod:`~occ.registry.files` (file-system primitives and staging), :mod:`~occ.registry.archive`
(export archives), :mod:`~occ.registry.store` (:class:`Registry`). The size limits and ``LOCK_TIMEOUT``
live in :mod:`occ.registry.schema` and are read at call time, so tests and applications can tune them there.
"""

from occ.registry.schema import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    EXPORT_SUFFIX,
    META_FILE,
    SCHEMA_VERSION,
    TENSOR_FILE,
    validate_name,
)
from occ.registry.store import Registry, SourceRecord

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_SUFFIX",
    "META_FILE",
    "SCHEMA_VERSION",
    "TENSOR_FILE",
    "Registry",
    "SourceRecord",
    "validate_name",
]
