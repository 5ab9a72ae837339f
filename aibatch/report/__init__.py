"""Looking at a run: ``aibatch inspect`` (terminal, JSON) and ``aibatch report`` (HTML).

:func:`inspect_output` streams an output's rows into bounded summaries;
:func:`write_report` turns them into one self-contained HTML page, its charts drawn by
matplotlib (the optional extra ``aibatch[report]``, imported only when a page is drawn).
"""

from __future__ import annotations

from .html import report_html, write_report
from .inspect import ErrorGroup, FailedRow, Inspection, Percentiles, inspect_output
from .text import inspection_text

__all__ = [
    "ErrorGroup",
    "FailedRow",
    "Inspection",
    "Percentiles",
    "inspect_output",
    "inspection_text",
    "report_html",
    "write_report",
]
