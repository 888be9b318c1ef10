"""What one eager call costs beyond its kernel: small layers, where that cost decides the speedup.

For each layer (a few microseconds of arithmetic), microseconds per call of:

- ``torch``: the ``torch.nn`` module, and ``F.convNd``;
- ``fastconv``: fastconv's module and ``fastconv_ext.convNd``, as routed (``native`` where every
  operator of the call is PyTorch's kernel, then ``at::convNd`` from C++);
- ``operator``: ``torch.ops.fastconv.convNd`` called from Python on the same path: the call an
  eager call routed to fastconv made before it entered C++ once (``fastconv_ext._C``).

Without and with gradients (weights that require them, as in training). Usage:
``python benchmarks/bench_call.py [--calls N] [--repeats N]``.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import fastconv_ext  # noqa: E402
from common import format_table, progress, time_interleaved  # noqa: E402

# (name, input shape, Conv2d arguments): a squeeze-and-excitation 1x1, a MobileNet 1x1 on 7x7
# maps, a depthwise 3x3 on 7x7 maps, and a 1-D depthwise layer of a Conformer.
LAYERS = [
    ("SE 1x1, 1x1 map", (1, 96, 1, 1), dict(in_channels=96, out_channels=24, kernel_size=1)),
    ("1x1, 7x7 map", (1, 160, 7, 7), dict(in_channels=160, out_channels=960, kernel_size=1)),
    ("depthwise 3x3, 7x7 map", (1, 960, 7, 7), dict(in_channels=960, out_channels=960, kernel_size=3, padding=1,
                                                   groups=960)),
    ("conv1d depthwise K=31", (1, 256, 50), dict(in_channels=256, out_channels=256, kernel_size=31, padding=15,
                                                 groups=256)),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per timed sample")
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    progress(f"{len(LAYERS)} layers, {torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for name, shape, kwargs in LAYERS:
        dims = len(shape) - 2
        torch.manual_seed(0)
        reference = (torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d)(**kwargs)
        layer = (fastconv_ext.Conv1d if dims == 1 else fastconv_ext.Conv2d)(**kwargs)
        layer.load_state_dict(reference.state_dict())
        x = torch.randn(shape)
        w, b = layer.weight, layer.bias
        hp = ([layer.stride[i] for i in range(dims)], [layer.padding[i] for i in range(dims)],
              [layer.dilation[i] for i in range(dims)], layer.groups)
        conv = F.conv1d if dims == 1 else F.conv2d
        fc_conv = fastconv_ext.conv1d if dims == 1 else fastconv_ext.conv2d
        op = torch.ops.fastconv.conv1d if dims == 1 else torch.ops.fastconv.conv2d
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                ops = ["forward"] + (["input", "weight"] if grad else [])
                paths = [torch.ops.fastconv._conv_settled_path(x, w, *hp, "auto", o) for o in ops]
                algorithm = "native" if all(p == "native" for p in paths) else "auto"

                def loop(fn):
                    return lambda: [fn() for _ in range(args.calls)]

                fns = {
                    "torch module": loop(lambda: reference(x)),
                    "F.conv": loop(lambda: conv(x, w, b, *hp)),
                    "fastconv module": loop(lambda: layer(x)),
                    "fastconv function": loop(lambda: fc_conv(x, w, b, *hp)),
                    "operator": loop(lambda: op(x, w, b, *hp, algorithm)),
                }
                t = {k: v / args.calls * 1e6 for k, v in time_interleaved(fns, args.repeats).items()}
            rows.append([name, "yes" if grad else "no", "/".join(paths)] + [f"{t[k]:.1f}" for k in fns]
                        + [f"{t['torch module'] / t['fastconv module']:.2f}x"])
            progress(f"{name}, gradients {'on' if grad else 'off'}: module {rows[-1][-1]}")
    print(format_table(["layer", "grad", "paths", "torch module us", "F.conv us", "fastconv module us",
                        "fastconv function us", "operator from Python us", "module speedup"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
