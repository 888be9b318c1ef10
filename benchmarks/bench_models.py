"""Real models: each one as PyTorch runs it against the same model converted to fastconv.

    python benchmarks/bench_models.py [--quick] [--models NAME ...] [--dtype float32|bfloat16]
                                      [--compile] [--repeats N] [--out-dir DIR]

The models are public architectures defined by maintained packages (``transformers`` for the
speech, vision and audio-codec models, ``mambapy`` for Mamba), built from their
configurations with random weights -- nothing is downloaded. These packages are benchmark
dependencies only (``requirements-bench.txt``). Where a configuration is cut down (fewer
transformer layers), the convolutions are the original's; the note beside each model says so.

For each model: inference (no_grad) and a training step (forward, backward of the summed
output), against the untouched model in the same process, calls interleaved, medians after
warm-up, converted two ways: ``convert(model)`` with fastconv's default rules, and autotuned as
a user tunes a model, ``convert(model, example_inputs=..., train=...)`` with autotuning on (it
runs the model once, tuning every layer -- its cost is reported -- and gives the layers that
ran only PyTorch's kernels, or measured slower than PyTorch's, their class back). Then a
per-layer table of the model tuned for training, measured again: every layer it kept
(PyTorch's time and fastconv's, forward+backward, the chosen paths) and those it gave back. ``--compile`` puts both sides under
``torch.compile``.
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import fastconv_ext  # noqa: E402
from common import format_table, geomean, progress, time_interleaved  # noqa: E402

warnings.filterwarnings("ignore", message=".*left these layers alone.*")

Builder = Callable[[], Tuple[nn.Module, Tuple[torch.Tensor, ...]]]


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    return transformers


def wav2vec2(quick):
    t = _transformers()
    cfg = t.Wav2Vec2Config(num_hidden_layers=2 if quick else 4)
    return t.Wav2Vec2Model(cfg), (torch.randn(1, 16000 if quick else 32000),)


def wav2vec2_conformer(quick):
    t = _transformers()
    cfg = t.Wav2Vec2ConformerConfig(num_hidden_layers=2 if quick else 4)
    return t.Wav2Vec2ConformerModel(cfg), (torch.randn(1, 16000 if quick else 32000),)


def whisper_encoder(quick):
    t = _transformers()
    cfg = t.WhisperConfig(d_model=384, encoder_layers=2, encoder_attention_heads=6, decoder_layers=1,
                          num_mel_bins=80, max_source_positions=1500)
    return t.WhisperModel(cfg).encoder, (torch.randn(1, 80, 3000),)


def convnext(quick):
    t = _transformers()
    cfg = t.ConvNextConfig(depths=[1, 1, 3, 1] if quick else [3, 3, 9, 3])
    return t.ConvNextModel(cfg), (torch.randn(1, 3, 224, 224),)


def mobilenet_v2(quick):
    t = _transformers()
    return t.MobileNetV2Model(t.MobileNetV2Config()), (torch.randn(1, 3, 224, 224),)


def efficientnet_b0(quick):
    t = _transformers()
    cfg = t.EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280)
    return t.EfficientNetModel(cfg), (torch.randn(1, 3, 224, 224),)


def mamba(quick):
    from mambapy.mamba import Mamba, MambaConfig

    # mamba.py's pure-PyTorch Mamba: each block's depthwise causal conv1d (1536 channels, K = 4)
    # is its nn.Conv1d module, the selective scan a parallel scan in PyTorch.
    model = Mamba(MambaConfig(d_model=768, n_layers=2))
    return model, (torch.randn(1, 128 if quick else 256, 768),)


def dac_encoder(quick):
    t = _transformers()
    # The Descript audio codec's encoder: a dilated TCN -- residual units of dilated K = 7
    # convolutions (dilations 1, 3, 9, weight-normed) between strided downsampling ones.
    return t.DacModel(t.DacConfig()).encoder, (torch.randn(1, 1, 8000 if quick else 16000),)


MODELS: Dict[str, Callable[[bool], Tuple[nn.Module, Tuple[torch.Tensor, ...]]]] = {
    "wav2vec2": wav2vec2,
    "wav2vec2-conformer": wav2vec2_conformer,
    "whisper-encoder": whisper_encoder,
    "convnext": convnext,
    "mobilenet-v2": mobilenet_v2,
    "efficientnet-b0": efficientnet_b0,
    "mamba": mamba,
    "dac-encoder": dac_encoder,
}
QUICK = ["wav2vec2", "mobilenet-v2"]


def output_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return output_tensor(out[0])
    raise TypeError(f"cannot find the output tensor in {type(out).__name__}")


def build(name, quick, dtype, converted):
    torch.manual_seed(0)
    model, inputs = MODELS[name](quick)
    model = model.to(dtype)
    inputs = tuple(x.to(dtype) for x in inputs)
    if converted:
        fastconv_ext.convert(model)
    return model, inputs


def step_fns(model, inputs, train):
    if not train:
        model.eval()

        def infer():
            with torch.no_grad():
                return output_tensor(model(*inputs))
        return infer
    model.train()

    def train_step():
        model.zero_grad(set_to_none=True)
        output_tensor(model(*inputs)).float().sum().backward()
    return train_step


def bench_model(name, args) -> Dict:
    base, inputs = build(name, args.quick, args.dtype, converted=False)
    fast, _ = build(name, args.quick, args.dtype, converted=True)
    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in fast.modules())
    row = {"model": name, "convs": convs}
    tuned = {}
    for train in (False, True):
        phase = "train" if train else "infer"
        for mode in ("default", "autotuned"):
            fastconv_ext.set_autotune(mode == "autotuned")
            misses0, tune0 = (fastconv_ext.autotune_cache_info()[k] for k in ("misses", "tuning_seconds"))
            if mode == "autotuned":
                # As a user tunes a model: convert with example inputs runs it once (tuning every
                # layer) and gives the layers that ran only PyTorch's kernels their class back.
                model, _ = build(name, args.quick, args.dtype, converted=False)
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    fastconv_ext.convert(model, example_inputs=inputs, train=train)
                tuned[phase] = model
            else:
                model = fast
                t0 = time.perf_counter()
            ref = step_fns(base, inputs, train)
            ours = step_fns(model, inputs, train)
            ours()  # tunes every signature still new when autotuning is on
            if args.compile:
                # Traced afresh in each mode, after that eager call: a call whose path is
                # settled as PyTorch's kernel is traced as PyTorch's convolution, so what the
                # graph holds depends on autotuning (fastconv_ext/routing.py). The reset also
                # keeps dynamo's recompilation limit from leaving later models eager.
                torch._dynamo.reset()
                ref, ours = torch.compile(ref), torch.compile(ours)
                ours()  # a signature new under the compiler's layouts is tuned here
            info = fastconv_ext.autotune_cache_info()
            first = time.perf_counter() - t0
            # Compiled steps may still recompile after their first call.
            times = time_interleaved({"torch": ref, "fastconv": ours}, repeats=args.repeats,
                                     warmup=3 if args.compile else 1)
            row[f"{phase}_{mode}"] = times["torch"] / times["fastconv"]
            row[f"{phase}_{mode}_ms"] = (1e3 * times["torch"], 1e3 * times["fastconv"])
            if mode == "autotuned":
                row[f"{phase}_tuned_signatures"] = info["misses"] - misses0
                row[f"{phase}_tuning_s"] = info["tuning_seconds"] - tune0
                row[f"{phase}_first_call_s"] = first
    # Every layer of the model tuned for training, measured again (not the measurement convert
    # decided on): the layers it kept, and those it gave back to PyTorch.
    fastconv_ext.set_autotune(True)
    row["layers"] = fastconv_ext.profile_layers(tuned["train"], inputs, train=True, repeats=args.layer_repeats)
    fastconv_ext.set_autotune(False)
    # And every layer of the model with the default rules (converted, nothing given back).
    row["layers_default"] = fastconv_ext.profile_layers(fast, inputs, train=True, repeats=args.layer_repeats)
    fastconv_layers = (fastconv_ext.Conv1d, fastconv_ext.Conv2d)
    kept = {n for n, m in tuned["train"].named_modules() if isinstance(m, fastconv_layers)}
    row["reverted"] = [n for n, m in fast.named_modules() if isinstance(m, fastconv_layers) and n not in kept]
    return row


def slowest_layer(row) -> float:
    """The slowest layer of the tuned model; one convert gave back to PyTorch runs at 1.00x."""
    return min([x["speedup"] for x in row["layers"]] + [1.0] * len(row["reverted"]), default=float("nan"))


def slowest_default_layer(row) -> float:
    return min([x["speedup"] for x in row["layers_default"]], default=float("nan"))


def layer_class(r) -> str:
    w = r["weight"]
    kind = f"conv{len(w) - 2}d"
    channels = r["input"][-(len(w) - 1)]
    if w[1] == 1 and channels > 1:
        return f"{kind} depthwise"
    if all(k == 1 for k in w[2:]):
        return f"{kind} pointwise"
    return f"{kind} dense"


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        progress("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = [r["model"] for r in rows]
    x = range(len(rows))
    for i, (key, label) in enumerate([("infer_default", "inference, default"), ("infer_autotuned", "inference, autotuned"),
                                      ("train_default", "training, default"), ("train_autotuned", "training, autotuned")]):
        axes[0].bar([p + 0.2 * i - 0.3 for p in x], [r[key] for r in rows], width=0.2, label=label)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_xticks(list(x), names, rotation=30, ha="right")
    axes[0].set_ylabel("speedup over PyTorch (x)")
    axes[0].set_title("per model")
    axes[0].legend(fontsize=7)
    classes: Dict[str, List[float]] = {}
    for r in rows:
        for layer in r["layers"]:
            classes.setdefault(layer_class(layer), []).append(layer["speedup"])
    keys = sorted(classes)
    axes[1].boxplot([classes[k] for k in keys], tick_labels=keys)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_yscale("log")
    axes[1].set_title("per layer (autotuned, forward+backward)")
    axes[1].tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"two small models ({', '.join(QUICK)}), cut down")
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), help="default: all (or the quick ones)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="both sides under torch.compile")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layer-repeats", type=int, default=5)
    parser.add_argument("--out-dir", default=None, help="write models_<dtype>[_compile].{json,md,png} here")
    args = parser.parse_args(argv)
    args.dtype = getattr(torch, args.dtype)
    names = args.models or (QUICK if args.quick else list(MODELS))
    if args.compile:
        # Both sides' step functions share their code; dynamo guards each model's variant (its
        # classes, graph breaks of a training step) as a recompilation of that code, and past its
        # default limit of 8 a side would run eagerly.
        torch._dynamo.config.recompile_limit = 64
    fastconv_ext.clear_autotune_cache()
    progress(f"{len(names)} models, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}"
             f"{', torch.compile' if args.compile else ''}")
    rows = []
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        row = bench_model(name, args)
        rows.append(row)
        progress(f"[{i + 1}/{len(names)}] {name}: inference {row['infer_default']:.2f}x default, "
                 f"{row['infer_autotuned']:.2f}x autotuned; training {row['train_default']:.2f}x / "
                 f"{row['train_autotuned']:.2f}x; slowest layer {slowest_default_layer(row):.2f}x default, "
                 f"{slowest_layer(row):.2f}x tuned ({time.perf_counter() - t0:.0f} s)")
    headers = ["model", "convs", "infer default", "infer tuned", "train default", "train tuned",
               "torch infer ms", "torch train ms", "tuned signatures", "tuning s", "s / signature", "slowest layer default",
               "slowest layer tuned"]
    table = [[r["model"], str(r["convs"]), f"{r['infer_default']:.2f}x", f"{r['infer_autotuned']:.2f}x",
              f"{r['train_default']:.2f}x", f"{r['train_autotuned']:.2f}x", f"{r['infer_default_ms'][0]:.1f}",
              f"{r['train_default_ms'][0]:.1f}", str(r["infer_tuned_signatures"] + r["train_tuned_signatures"]),
              f"{r['infer_tuning_s'] + r['train_tuning_s']:.2f}",
              f"{(r['infer_tuning_s'] + r['train_tuning_s']) / max(1, r['infer_tuned_signatures'] + r['train_tuned_signatures']):.3f}",
              f"{slowest_default_layer(r):.2f}x", f"{slowest_layer(r):.2f}x"] for r in rows]
    text = format_table(headers, table)
    geo = {k: geomean([r[k] for r in rows]) for k in ("infer_default", "infer_autotuned", "train_default",
                                                      "train_autotuned")}
    text += "\n\ngeomean: " + ", ".join(f"{k} {v:.2f}x" for k, v in geo.items())
    layer_rows = []
    for r in rows:
        tuned = {layer["name"]: layer for layer in r["layers"]}
        for layer in r["layers_default"]:
            t = tuned.get(layer["name"])
            layer_rows.append([r["model"], layer["name"][-32:], str(list(layer["input"])), str(list(layer["weight"])),
                               f"{layer['torch_ms']:.3f}", "/".join(layer["paths"].values()),
                               f"{layer['speedup']:.2f}x",
                               "/".join(t["paths"].values()) if t else "given back to PyTorch",
                               f"{t['speedup']:.2f}x" if t else "1.00x"])
    layers = format_table(["model", "layer", "input", "weight", "torch ms", "default paths (fwd/in/wt)", "default x",
                           "tuned paths", "tuned x"], layer_rows)
    # The per-layer detail first, the speedup per model last (what a first run wants to see).
    print("per layer, forward+backward:\n" + layers)
    print("\nspeedup per model (PyTorch's time / fastconv's):\n" + text)
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"models_{str(args.dtype).split('.')[-1]}{'_compile' if args.compile else ''}"
        (out / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=str))
        (out / f"{stem}.md").write_text(text + "\n\nPer layer, forward+backward:\n\n" + layers + "\n")
        plot(rows, out / f"{stem}.png")
        progress(f"written to {out}/{stem}.*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
