"""Causal convolution with state: the forward against memory speed, forward+backward, decoding
latency, and streaming a dilated TCN.

1. Forward, K = 4, SiLU, batch 1, C x L over the issue's range, fp32 and bf16, contiguous and
   channels-last input: fastconv.causal_conv1d against copying the input (into a reused buffer:
   memory speed; and x.clone(), a fresh buffer), the roofline floor (input read + output written
   at the copy bandwidth measured in this run), and PyTorch's F.pad + F.conv1d + F.silu; the
   forward without the activation against the copy (what SiLU's arithmetic adds).
   Forward+backward against the forward (target <= 3.5x) and against PyTorch's.
2. One decoding step, C = 4096, K = 4, B = 1..8: causal_conv1d_update against the reference a
   user writes (torch.cat of state and step, F.conv1d, copy the state back), in microseconds.
3. A 10-layer dilated TCN (64 channels, K = 3, dilations 1..512, ReLU) on a signal in 256-sample
   blocks: fastconv's stream (Conv1d.stream, state per layer) against recomputing each block
   with its receptive field (2047 samples) through PyTorch's layers, and against streaming by
   hand in PyTorch (torch.cat of state and block, F.conv1d).

Calls interleaved, medians after warm-up, one process.

    python benchmarks/bench_causal.py [--quick] [--out-dir DIR]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import allocator_mode, format_table, measure_machine, progress, time_interleaved  # noqa: E402

import fastconv_ext  # noqa: E402

FORWARD_SHAPES = [(1536, 4096), (1536, 16384), (4096, 8192), (12288, 4096)]
QUICK_SHAPES = [(1536, 4096), (4096, 8192)]


def make_input(C, L, dtype, layout):
    if layout == "channels_last":
        return torch.randn(1, L, C, dtype=dtype).transpose(1, 2)
    return torch.randn(1, C, L, dtype=dtype)


def torch_causal(x, w, b):
    """PyTorch's causal depthwise conv + SiLU: pad on the left, grouped conv."""
    return F.silu(F.conv1d(F.pad(x, (w.shape[1] - 1, 0)), w.unsqueeze(1), b, groups=x.shape[1]))


def forward_rows(shapes, gbps, repeats):
    rows = []
    for C, L in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("contiguous", "channels_last"):
                progress(f"forward C={C} L={L} {dtype} {layout}")
                x = make_input(C, L, dtype, layout)
                w, b = torch.randn(C, 4, dtype=dtype), torch.randn(C, dtype=dtype)
                reused = torch.empty_like(x)
                t = time_interleaved({
                    "copy": lambda: reused.copy_(x),
                    "clone": lambda: x.clone(),
                    "fastconv": lambda: fastconv_ext.causal_conv1d(x, w, b, activation="silu"),
                    "no_act": lambda: fastconv_ext.causal_conv1d(x, w, b),
                    "torch": lambda: torch_causal(x, w, b),
                }, repeats=repeats)
                xg, wg, bg = (v.detach().requires_grad_() for v in (x, w, b))
                gy = torch.randn_like(x)

                def fastconv_step():
                    y = fastconv_ext.causal_conv1d(xg, wg, bg, activation="silu")
                    torch.autograd.grad(y, (xg, wg, bg), gy)

                def torch_step():
                    torch.autograd.grad(torch_causal(xg, wg, bg), (xg, wg, bg), gy)

                tb = time_interleaved({"fastconv": fastconv_step, "torch": torch_step}, repeats=max(3, repeats // 2))
                floor = 2 * x.numel() * x.element_size() / (gbps * 1e9)
                rows.append(dict(C=C, L=L, dtype=str(dtype).replace("torch.", ""), layout=layout,
                                 copy_ms=t["copy"] * 1e3, clone_ms=t["clone"] * 1e3, fwd_ms=t["fastconv"] * 1e3,
                                 no_act_ms=t["no_act"] * 1e3,
                                 torch_ms=t["torch"] * 1e3, floor_ms=floor * 1e3,
                                 fwd_bwd_ms=tb["fastconv"] * 1e3, torch_fwd_bwd_ms=tb["torch"] * 1e3))
    return rows


def update_rows(repeats):
    rows = []
    C, K = 4096, 4
    for dtype in (torch.float32, torch.bfloat16):
        for B in (1, 2, 4, 8):
            progress(f"update B={B} {dtype}")
            w, b = torch.randn(C, K, dtype=dtype), torch.randn(C, dtype=dtype)
            x = torch.randn(B, C, dtype=dtype)
            state_fc = torch.randn(B, C, K - 1, dtype=dtype)
            state_ref = state_fc.clone()

            def reference():
                window = torch.cat([state_ref, x.unsqueeze(-1)], -1)
                state_ref.copy_(window[:, :, 1:])
                return F.silu(F.conv1d(window, w.unsqueeze(1), b, groups=C))[:, :, -1]

            step = lambda: fastconv_ext.causal_conv1d_update(x, state_fc, w, b, "silu")  # noqa: E731
            t = time_interleaved({"fastconv": step, "reference": reference}, repeats=repeats * 20, warmup=20)
            # Between the reference's calls a step finds its data and code out of the caches; step after
            # step, as a decoder runs the same layer's update for consecutive tokens of a batch, they stay.
            alone = time_interleaved({"fastconv": step}, repeats=repeats * 20, warmup=20)
            rows.append(dict(B=B, dtype=str(dtype).replace("torch.", ""), fastconv_us=t["fastconv"] * 1e6,
                             reference_us=t["reference"] * 1e6, fastconv_alone_us=alone["fastconv"] * 1e6))
    return rows


def tcn_rows(blocks, repeats):
    torch.manual_seed(0)
    channels, K, block = 64, 3, 256
    dilations = [2 ** i for i in range(10)]
    layers = [fastconv_ext.Conv1d(channels, channels, K, padding="causal", dilation=d) for d in dilations]
    plain = [torch.nn.Conv1d(channels, channels, K, dilation=d) for d in dilations]
    for p, layer in zip(plain, layers):
        p.load_state_dict(layer.state_dict())
    field = 1 + sum(d * (K - 1) for d in dilations)
    signal = torch.randn(1, channels, blocks * block)

    def whole(x):  # PyTorch, causal by left padding
        for p in plain:
            x = torch.relu(p(F.pad(x, (p.dilation[0] * (K - 1), 0))))
        return x

    def recompute():
        out = []
        with torch.no_grad():
            for i in range(blocks):
                end = (i + 1) * block
                out.append(whole(signal[:, :, max(0, end - field - block + 1): end])[:, :, -block:])
        return out

    def stream_fastconv():
        states = [None] * len(layers)
        out = []
        with torch.no_grad():
            for i in range(blocks):
                x = signal[:, :, i * block: (i + 1) * block]
                for j, layer in enumerate(layers):
                    y, states[j] = layer.stream(x, states[j])
                    x = torch.relu(y)
                out.append(x)
        return out

    def stream_torch():
        states = [torch.zeros(1, channels, p.dilation[0] * (K - 1)) for p in plain]
        out = []
        with torch.no_grad():
            for i in range(blocks):
                x = signal[:, :, i * block: (i + 1) * block]
                for j, p in enumerate(plain):
                    xs = torch.cat([states[j], x], 2)
                    states[j] = xs[:, :, -p.dilation[0] * (K - 1):]
                    x = torch.relu(p(xs))
                out.append(x)
        return out

    with torch.no_grad():
        want = whole(signal)
        for name, fn in (("recompute", recompute), ("stream_fastconv", stream_fastconv), ("stream_torch", stream_torch)):
            got = torch.cat(fn(), 2)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")
        progress(f"TCN: {blocks} blocks of {block}, receptive field {field}")
        t = time_interleaved({"recompute": recompute, "stream_fastconv": stream_fastconv,
                              "stream_torch": stream_torch}, repeats=repeats)
    return dict(blocks=blocks, block=block, field=field,
                **{f"{k}_ms_per_block": v * 1e3 / blocks for k, v in t.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two shapes, fewer repeats")
    parser.add_argument("--out-dir", type=Path, help="write causal.md and causal.json there")
    args = parser.parse_args()
    repeats = 5 if args.quick else 11
    machine = measure_machine(quick=True)
    progress(f"machine: {machine.gbps:.1f} GB/s copy, {machine.gflops:.0f} GFLOP/s fp32, {machine.threads} threads")
    fwd = forward_rows(QUICK_SHAPES if args.quick else FORWARD_SHAPES, machine.gbps, repeats)
    upd = update_rows(repeats)
    tcn = tcn_rows(8 if args.quick else 32, repeats)

    lines = [f"Threads: {machine.threads}; copy bandwidth {machine.gbps:.1f} GB/s, fp32 peak "
             f"{machine.gflops:.0f} GFLOP/s (measured in this run); allocator: {allocator_mode()}.", "",
             "Forward (K = 4, SiLU, batch 1): ms, and the forward against copying the input into a reused "
             "buffer (target <= 1.3x), x.clone() and the roofline floor; the same forward without the "
             "activation against the copy (what SiLU's arithmetic adds); forward+backward against the forward "
             "(target <= 3.5x).", ""]
    lines.append(format_table(
        ["C", "L", "dtype", "layout", "copy", "clone", "fastconv", "/copy", "/floor", "no act /copy", "torch",
         "speedup", "fwd+bwd", "/fwd", "torch fwd+bwd", "speedup"],
        [[r["C"], r["L"], r["dtype"], r["layout"], f"{r['copy_ms']:.2f}", f"{r['clone_ms']:.2f}",
          f"{r['fwd_ms']:.2f}", f"{r['fwd_ms'] / r['copy_ms']:.2f}x", f"{r['fwd_ms'] / r['floor_ms']:.2f}x",
          f"{r['no_act_ms'] / r['copy_ms']:.2f}x",
          f"{r['torch_ms']:.2f}", f"{r['torch_ms'] / r['fwd_ms']:.1f}x", f"{r['fwd_bwd_ms']:.2f}",
          f"{r['fwd_bwd_ms'] / r['fwd_ms']:.2f}x", f"{r['torch_fwd_bwd_ms']:.1f}",
          f"{r['torch_fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}x"] for r in fwd]))
    lines += ["", "One decoding step, C = 4096, K = 4, SiLU (target: >= 5x the torch.cat + F.conv1d reference), "
              "interleaved with the reference; and fastconv's step repeated alone (its data and code in the caches):",
              ""]
    lines.append(format_table(
        ["B", "dtype", "fastconv us", "reference us", "speedup", "fastconv alone us"],
        [[r["B"], r["dtype"], f"{r['fastconv_us']:.1f}", f"{r['reference_us']:.1f}",
          f"{r['reference_us'] / r['fastconv_us']:.1f}x", f"{r['fastconv_alone_us']:.1f}"] for r in upd]))
    lines += ["", f"TCN stream: 10 layers, 64 channels, K = 3, dilations 1..512, ReLU, {tcn['blocks']} blocks of "
              f"{tcn['block']} samples (receptive field {tcn['field']}); ms per block (target: stream >= 3x faster "
              f"than recomputing):", ""]
    lines.append(format_table(
        ["recompute (PyTorch)", "stream by hand (PyTorch)", "fastconv stream", "vs recompute", "vs by hand"],
        [[f"{tcn['recompute_ms_per_block']:.3f}", f"{tcn['stream_torch_ms_per_block']:.3f}",
          f"{tcn['stream_fastconv_ms_per_block']:.3f}",
          f"{tcn['recompute_ms_per_block'] / tcn['stream_fastconv_ms_per_block']:.1f}x",
          f"{tcn['stream_torch_ms_per_block'] / tcn['stream_fastconv_ms_per_block']:.1f}x"]]))
    text = "\n".join(lines)
    print(text)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "causal.md").write_text(text + "\n")
        (args.out_dir / "causal.json").write_text(json.dumps(
            dict(machine=vars(machine), allocator=allocator_mode(), forward=fwd, update=upd, tcn=tcn), indent=1))


if __name__ == "__main__":
    main()
