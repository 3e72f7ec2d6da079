"""meddiff.report: self-contained HTML reports and figures."""

from meddiff.report.html import labelled_row, to_uint8, write_report

__all__ = ["labelled_row", "to_uint8", "write_report"]
