"""Watching runs: metrics plots, reward-hacking alarms, the HTML/markdown run report.

Submodules import matplotlib or torch only when used, so importing this
package stays cheap.
"""
