"""Reporting: hull tables, yields, metrics, the funnel report, chemical space and the HTML report.
"""
