# Sphinx configuration of fastconv's API reference, built from the docstrings of the installed
# package (run it outside the checkout, so that the installed package is imported, as .ci/run does):
#   python -m sphinx -W --keep-going -b html docs/api build/docs
project = "fastconv"
author = "fastconv developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No network in CI: references to torch and Python render as plain text.
intersphinx_mapping = {}
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]


def _require_docstring(app, what, name, obj, options, lines):
    """A documented object without a docstring is a warning (an error under -W)."""
    if not any(line.strip() for line in lines):
        from sphinx.util import logging

        logging.getLogger(__name__).warning("%s %s has no docstring", what, name)


def setup(app):
    app.connect("autodoc-process-docstring", _require_docstring)
