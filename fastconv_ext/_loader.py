"""Loads the compiled library and explains the usual ways that fails."""

import importlib

import torch


def load_library() -> None:
    try:
        importlib.import_module("fastconv_ext._C")
    except ImportError as err:
        try:
            from fastconv_ext._build_info import TORCH_VERSION as built_for
        except ImportError:
            built_for = "an unknown torch"
        hint = ""
        if isinstance(err, ModuleNotFoundError):
            hint = (
                " The compiled module is missing: build it with `pip install --no-build-isolation .` "
                "(or `-e .` to use this source tree in place), and do not import the package from "
                "an unbuilt source tree."
            )
        elif "undefined symbol" in str(err) or built_for != torch.__version__:
            hint = (
                f" fastconv_ext was built against torch {built_for} but torch "
                f"{torch.__version__} is installed: rebuild it with "
                "`pip install --no-build-isolation .`."
            )
        raise ImportError(f"could not load the fastconv operator library: {err}.{hint}") from err
