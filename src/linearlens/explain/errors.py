"""Errors of the explanation methods that callers may want to tell apart from failures."""

from __future__ import annotations

__all__ = ["MethodNotApplicableError"]


class MethodNotApplicableError(ValueError):
    """The method does not apply to this model or target (e.g. LRP on B-cos layers).

    This is the only error an evaluation harness may record as "skipped": any other exception of
    a method is a failure.  It subclasses ``ValueError`` so that code catching bad-input errors
    keeps working.
    """
