"""Sphinx configuration for nodepool's documentation."""

project = "nodepool"
author = "nodepool developers"
extensions: list[str] = []
master_doc = "index"
exclude_patterns = ["build"]
html_theme = "alabaster"
