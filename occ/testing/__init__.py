"""Helpers for occ's tests and benchmarks (not used by the product): a tiny random CLIP built at run
time (:mod:`~occ.testing.tiny_clip`), image files of every odd kind (:mod:`~occ.testing.imagegen`), the
devset protocol the benchmarks share (:mod:`~occ.testing.devset`), and the common check every verifier
kind must pass (:func:`~occ.testing.checks.check_verifier_kind`, in the spirit of scikit-learn's
``check_estimator``)."""
