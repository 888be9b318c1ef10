"""``convert(model)``: fastconv's convolution layers in place of ``torch.nn``'s, and back.

A converted layer is the same object with another class: its Parameters (so an optimizer
made before the call still trains it), buffers, ``state_dict`` keys, hooks (the legacy
weight-norm hook too), parametrizations (``weight_norm``, ``spectral_norm`` through
``torch.nn.utils.parametrize``), training mode, device and dtype are untouched.
"""

import fnmatch
import statistics
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from fastconv_ext.functional import _padding
from fastconv_ext.nn import Conv1d, Conv2d, check_algorithm
from fastconv_ext.routing import ROUTE_ATTRIBUTE

__all__ = ["convert", "revert", "profile_layers"]

_FAST: Dict[Type[nn.Module], Type[nn.Module]] = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d}
_DERIVED: Dict[Tuple[type, type], type] = {}
Selector = Union[Callable[[str, nn.Module], bool], Iterable[str], None]


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in selector)


def _fast_class(cls: type) -> Optional[type]:
    """fastconv's class for a torch.nn convolution class, or None where its forward is its own.

    A subclass that keeps torch.nn's forward (the classes ``torch.nn.utils.parametrize`` makes,
    or a user's that only adds attributes) gets a class deriving from both, made once."""
    for base, fast in _FAST.items():
        if cls is base:
            return fast
        if issubclass(cls, base):
            if cls.forward is not base.forward or cls._conv_forward is not base._conv_forward:
                return None
            if (fast, cls) not in _DERIVED:
                _DERIVED[(fast, cls)] = type(f"Fast{cls.__name__}", (fast, cls), {"__module__": __name__})
            return _DERIVED[(fast, cls)]
    return None


def _is_converted(module: nn.Module) -> bool:
    return "_fastconv_original_class" in module.__dict__


def convert(
    module: nn.Module,
    *,
    include: Selector = None,
    exclude: Selector = None,
    algorithm: str = "auto",
    verbose: bool = False,
    example_inputs: Optional[Sequence[Any]] = None,
    train: bool = False,
    prune: bool = True,
) -> nn.Module:
    """Swap, in place, every :class:`torch.nn.Conv1d` and :class:`torch.nn.Conv2d` in ``module``
    (``module`` itself included) for fastconv's layers, and return ``module``.

    Args:
        module: the model.
        include: convert only layers whose qualified name (as in ``named_modules()``) matches
            one of these ``fnmatch`` patterns, or for which this callable ``(name, layer)``
            returns True. Default: every layer.
        exclude: leave layers that match alone (the same forms).
        algorithm: the converted layers' ``algorithm`` (``'auto'`` by default).
        verbose: print what was converted and what was left alone.
        example_inputs: when given, run ``module(*example_inputs)`` once (which tunes every
            converted layer when autotuning is on) and print a per-layer report: shapes,
            chosen paths, PyTorch's time and fastconv's (see :func:`profile_layers`).
        train: with ``example_inputs``, also run and time the backward pass.
        prune: with ``example_inputs``, give a layer its PyTorch class back where fastconv
            cannot win: every operator it ran (the forward, and with ``train`` both gradients)
            took PyTorch's own kernel, or the report did not measure fastconv's layer at least 2%
            faster (a close call is timed longer). Each
            operator's path is tuned alone; this weighs the whole layer, with the cost of
            fastconv's call and autograd node (microseconds, which decide layers as small as a
            squeeze-and-excitation 1x1 convolution on one pixel).

    Subclasses that override ``forward`` or ``_conv_forward`` are left alone, with a warning
    naming them. Converting twice changes nothing; :func:`revert` undoes it. Layers shared
    between several parents are converted once.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"fastconv.convert: module must be a torch.nn.Module, but got {type(module).__name__}")
    converted: List[str] = []
    skipped: List[str] = []
    for name, layer in module.named_modules():
        if _is_converted(layer) or not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            continue
        if isinstance(layer, (Conv1d, Conv2d)):
            continue  # built as a fastconv layer
        if include is not None and not _matches(include, name, layer):
            continue
        if exclude is not None and _matches(exclude, name, layer):
            continue
        cls = type(layer)
        fast = _fast_class(cls)
        if fast is None:
            skipped.append(f"{name or '(root)'} ({cls.__name__} overrides forward)")
            continue
        layer.algorithm = check_algorithm("convert", algorithm, 1 if isinstance(layer, nn.Conv1d) else 2)
        layer._fastconv_original_class = cls
        layer.__class__ = fast
        converted.append(f"{name or '(root)'} ({cls.__name__})")
    if skipped:
        warnings.warn("fastconv.convert left these layers alone: " + ", ".join(skipped), stacklevel=2)
    if verbose:
        print(f"fastconv.convert: converted {len(converted)} layer(s)" + "".join(f"\n  {c}" for c in converted))
    if example_inputs is not None:
        report = profile_layers(module, example_inputs, train=train)
        if prune:
            layers = dict(module.named_modules())
            for r in report:
                r["pruned"] = _is_converted(layers[r["name"]]) and _prunable(r)
                if r["pruned"]:
                    _revert_layer(layers[r["name"]])
        print(format_report(report))
    return module


# Speedups profile_layers times longer, and the least prune keeps.
_CLOSE = (0.9, 1.1)
_KEEP = 1.02


def _prunable(r: Dict[str, Any]) -> bool:
    """Whether a layer of profile_layers' report is better left to PyTorch: a layer that is not
    measured at least 2% faster than PyTorch's is not worth the risk that noise hid a loss."""
    return r["native_only"] or r["torch_ms"] < _KEEP * r["fastconv_ms"]


def revert(module: nn.Module) -> nn.Module:
    """Give every layer :func:`convert` converted in ``module`` its original class back; returns ``module``."""
    for layer in module.modules():
        if _is_converted(layer):
            _revert_layer(layer)
    return module


def _revert_layer(layer: nn.Module) -> None:
    original = layer.__dict__.pop("_fastconv_original_class")
    layer.__dict__.pop("algorithm", None)
    layer.__dict__.pop(ROUTE_ATTRIBUTE, None)
    layer.__class__ = original


def _mean_ms(fn: Callable[[], Any], calls: int) -> float:
    """Milliseconds per call of `calls` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e3 * (time.perf_counter() - t0) / calls


# Each timing sample of a layer spans at least this long (a layer of tens of microseconds
# is timed over that many calls in a row: one call alone is mostly the clock's noise).
_SAMPLE_MS = 1.0


def _effective(layer: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """The input fastconv's operator gets, and its integer padding."""
    n = 1 if isinstance(layer, nn.Conv1d) else 2
    if layer.padding_mode != "zeros":
        return F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), [0] * n
    return _padding(x, layer.weight, layer.padding, list(layer.stride), list(layer.dilation), f"conv{n}d")


def profile_layers(
    module: nn.Module, example_inputs: Sequence[Any], *, train: bool = False, repeats: int = 7
) -> List[Dict[str, Any]]:
    """Run ``module(*example_inputs)`` once and time each converted layer on the input it saw.

    Returns one dict per layer: ``name``, ``input`` and ``weight`` shapes, ``paths`` (the path
    each operator takes: forward, and with ``train`` grad_input and grad_weight),
    ``native_only`` (every one of them is PyTorch's kernel), ``torch_ms``
    and ``fastconv_ms`` (forward, or forward+backward with ``train``; medians of ``repeats``
    interleaved samples after a warm-up, up to four times as many where the two are within 10%;
    a sample is one call, or as many calls in a row as take about a millisecond)
    and ``speedup``.
    """
    layers = {name: m for name, m in module.named_modules() if _is_converted(m) or isinstance(m, (Conv1d, Conv2d))}
    seen: Dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in layers.items()]
    try:
        with torch.set_grad_enabled(train):
            out = module(*example_inputs)
            if train:
                loss = sum(t.float().sum() for t in (out if isinstance(out, (tuple, list)) else [out])
                           if isinstance(t, torch.Tensor) and t.requires_grad)
                if isinstance(loss, torch.Tensor):
                    loss.backward()
    finally:
        for h in hooks:
            h.remove()
    report = []
    for name, layer in layers.items():
        if name not in seen:
            continue
        x = seen[name].requires_grad_(train)
        base = nn.Conv1d if isinstance(layer, nn.Conv1d) else nn.Conv2d
        # Leaves: a parametrized weight is computed with a graph of its own.
        weight = layer.weight.detach().requires_grad_(train)
        bias = None if layer.bias is None else layer.bias.detach().requires_grad_(train)

        def run(conv, x=x, layer=layer, weight=weight, bias=bias):
            with torch.set_grad_enabled(train):
                y = conv(layer, x, weight, bias)
                if train:
                    y.backward(torch.ones_like(y))

        fast = type(layer)._conv_forward
        native = base._conv_forward
        run(native), run(fast)
        calls = max(1, min(100, int(_SAMPLE_MS / max(_mean_ms(lambda: run(native), 1), 1e-3))))
        t_torch, t_fast = [], []
        # A close call is timed longer (up to 4x the repeats): a layer a few percent either way
        # is where a noisy median flips the decision prune takes on it.
        while not t_torch or (len(t_torch) < 4 * repeats and
                              _CLOSE[0] < statistics.median(t_torch) / statistics.median(t_fast) < _CLOSE[1]):
            for _ in range(repeats):
                t_torch.append(_mean_ms(lambda: run(native), calls))
                t_fast.append(_mean_ms(lambda: run(fast), calls))
        x_eff, pad = _effective(layer, x.detach())
        args = (x_eff, weight.detach(), list(layer.stride), pad, list(layer.dilation), layer.groups, layer.algorithm)
        ops = ["forward", "input", "weight"] if train else ["forward"]
        paths = {op: torch.ops.fastconv._conv_path(*args, op) for op in ops}
        report.append({
            "name": name, "input": tuple(x.shape), "weight": tuple(weight.shape),
            "paths": paths,
            "native_only": set(paths.values()) == {"native"},
            "torch_ms": statistics.median(t_torch), "fastconv_ms": statistics.median(t_fast),
            "speedup": statistics.median(t_torch) / statistics.median(t_fast),
        })
    return report


def format_report(report: List[Dict[str, Any]]) -> str:
    """:func:`profile_layers`' list as a table."""
    lines = [f"{'layer':<40} {'input':<22} {'weight':<20} {'paths':<24} {'torch ms':>9} {'fastconv ms':>11} {'x':>6}"]
    for r in report:
        paths = "/".join(r["paths"].values()) + (" (reverted)" if r.get("pruned") else "")
        lines.append(f"{r['name'][-40:]:<40} {str(list(r['input'])):<22} {str(list(r['weight'])):<20} {paths:<24} "
                     f"{r['torch_ms']:>9.3f} {r['fastconv_ms']:>11.3f} {r['speedup']:>6.2f}")
    total_torch = sum(r["torch_ms"] for r in report)
    total_fast = sum(r["fastconv_ms"] for r in report)
    if report:
        lines.append(f"{'all layers':<108} {total_torch:>9.3f} {total_fast:>11.3f} {total_torch / total_fast:>6.2f}")
    return "\n".join(lines)
