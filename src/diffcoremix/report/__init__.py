"""The HTML report of a generation run and its training (``diffcoremix report``): see :mod:`.build`."""

from diffcoremix.report.build import GENERATOR_MARK, REPORT_MAX_BYTES, ReportError, ReportResult, build_report

__all__ = ["GENERATOR_MARK", "REPORT_MAX_BYTES", "ReportError", "ReportResult", "build_report"]
