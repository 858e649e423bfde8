"""Sphinx configuration."""

from __future__ import annotations

from datetime import date
from importlib.metadata import version as package_version

project = "st-hist2st"
author = "st-hist2st developers"
copyright = f"{date.today():%Y}, {author}"
release = version = package_version("st-hist2st")

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
templates_path = ["_templates"]
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True
napoleon_custom_sections = [("Shapes", "notes_style")]
typehints_defaults = "comma"
always_use_bars_union = True
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
nb_execution_mode = "cache"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_merge_streams = True
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
}  # .rst first: autosummary writes rst

html_theme = "sphinx_book_theme"
html_title = "st-hist2st"

# Offline builds: no intersphinx, so references to other packages' objects are not resolved.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(anndata|numpy|np|pandas|pd|torch|scipy|squidpy|spatialdata|lightning|matplotlib|sklearn|pooch|scanpy)(\..*)?",
    ),
    (r"py:.*", r"(AnnData|Axes|Figure|Path|Any|Sequence|Mapping|Literal|Layout|Tensor|DataFrame|Trainer)"),
    (r"py:.*", r"(collections\.abc|typing|pathlib|os)\..*"),
    (r"py:class", r"(optional|default.*|array-like|callable)"),
]
