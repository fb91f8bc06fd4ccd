"""Evaluate a registry on the user's own labelled images: the figures forensic papers report.

``ROOT`` holds one subfolder per label. A subfolder named like an enrolled source holds that source's
images (its positives); any other subfolder (``real/``, ``unknown-gen/``...) holds out-of-registry
images, which every verifier should reject and the attributor should call "unknown". Subfolders are
walked recursively; files directly under ``ROOT`` are ignored (and counted in a warning).

Every image goes through the frozen trunk once per condition ("clean", then each perturbation, see
:mod:`occ.perturb`) via :class:`occ.features.FeatureExtractor` (cached), and through every enrolled
verifier via :class:`occ.attribution.Attributor` -- exactly what ``occ verify`` / ``occ attribute``
would output for it. From that, per condition:

* **per source** (verification, one source against everything else): ROC AUC of that source's
  scores (raw margins: the same order as the calibrated scores, without ties where those saturate at
  0 or 1), positives = its folder, negatives = every other evaluated folder, with a
  percentile-bootstrap 95 % CI; TPR and false-accept rate (FAR) of the verifier's own accept decision at
  its stored threshold; the accept rate on each folder; the ROC curve;
* **open set** (attribution): closed-set accuracy (argmax over sources, rejection ignored) and the
  accuracy of the actual decision on images of known sources, the rejection rates, AUROC known-vs-unknown
  and OSCR, where the score of an image is its maximum calibrated score over sources; the confusion
  matrix (rows: true label, columns: decision).

AUCs are never flipped (an AUC below 0.5 is reported as such). Every figure comes with its counts, and a
figure resting on fewer than :data:`MIN_POSITIVES` positives (or known images) or fewer than
:data:`MIN_NEGATIVES` negatives (or unknown images) gets a warning. Undefined figures (no positives, no
unknowns...) are ``null`` in the report.

:func:`evaluate` returns the report (a JSON-ready dict, see :data:`REPORT_FORMAT`);
:func:`write_report` writes ``report.json``, ``report.md`` and PNG figures (needs matplotlib, the
``plots`` extra); :func:`tables` renders it for the terminal.

Modules: :mod:`~occ.evaluation.run` (label folders, running the conditions), :mod:`~occ.evaluation.report`
(metrics assembly, warnings, the public JSON form), :mod:`~occ.evaluation.tables` (terminal tables),
:mod:`~occ.evaluation.figures` (ROC and confusion PNGs), :mod:`~occ.evaluation.files` (report.md,
scores.csv, :func:`write_report`).
"""

from occ.evaluation.files import check_report_dir, require_matplotlib, write_report
from occ.evaluation.report import BOOTSTRAP_N, CLEAN, MIN_NEGATIVES, MIN_POSITIVES, REPORT_FORMAT, public
from occ.evaluation.run import evaluate, label_folders
from occ.evaluation.tables import tables

__all__ = [
    "BOOTSTRAP_N",
    "CLEAN",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "REPORT_FORMAT",
    "evaluate",
    "label_folders",
    "public",
    "check_report_dir",
    "require_matplotlib",
    "tables",
    "write_report",
]
