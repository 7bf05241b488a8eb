"""Sphinx configuration of the documentation site (`make docs`: warnings are errors)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("TRITON_INTERPRET", "1")  # import the Triton backend's module on a CPU machine

import tcvae_kernels  # noqa: E402

project = "tcvae_kernels"
author = "tcvae_kernels developers"
copyright = "2026, tcvae_kernels developers"
release = tcvae_kernels.__version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"tcvae_kernels {release}"
myst_heading_anchors = 4
myst_enable_extensions = ["dollarmath"]
# API reference: every public name, from its docstring (Google style, napoleon)
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": False,
                           # nn.Module's hooks, which the modules implement for torch, not for users
                           "exclude-members": "extra_repr, get_extra_state, set_extra_state, initialize_parameters"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Options", "params_style")]  # EstimatorOptions and the {options} it fills
autodoc_inherit_docstrings = False  # nn.Module.forward's text is not ours
# a broken cross-reference is an error (-W); torch's and numpy's own names have no pages here (no
# network for intersphinx), so references to them are not checked
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|np|numpy|nn|typing|collections|Tensor|optional)(\..*)?"),
                        (r"py:class", r"(Any|Callable|TypeVar|NamedTuple|TypedDict|Unpack|Sequence|Union|Generator|Path)(\[.*)?"),
                        (r"py:class", r".*\.(T|F)$"),
                        (r"py:.*", r"tcvae_kernels(\.\w+)*\._\w+(\[.*)?"),  # private helpers (bases, descriptors)
                        (r"py:.*", r"pythae\..*")]
