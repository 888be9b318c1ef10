"""The cache of CPU result buffers: reuse, limits, and results that never see stale data."""

import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import fastconv_ext

ops = torch.ops.fastconv


@pytest.fixture
def cache():
    """A cache emptied before the test, with its default limit restored after it."""
    limit = fastconv_ext.cpu_cache_info()["limit_bytes"]
    fastconv_ext.empty_cpu_cache()
    yield
    fastconv_ext.set_cpu_cache_limit(limit)


def _conv1d_case():
    x = torch.randn(4, 8, 4096, dtype=torch.float64)
    w = torch.randn(8, 1, 5, dtype=torch.float64)
    return x, w


# Each producer makes a result of 128 KiB or more through empty_output; the
# reference is computed by ATen.
PRODUCERS = {
    "conv1d": (lambda x, w: fastconv_ext.conv1d(x, w, padding=2, groups=8),
               lambda x, w: F.conv1d(x, w, padding=2, groups=8)),
    "conv1d_fft": (lambda x, w: fastconv_ext.conv1d(x, w, padding=2, groups=8, algorithm="fft"),
                   lambda x, w: F.conv1d(x, w, padding=2, groups=8)),
    "conv1d_input_backward": (
        lambda x, w: ops.conv1d_input_backward(x, w, 4096, [1], [2], [1], 8),
        lambda x, w: torch.nn.grad.conv1d_input((4, 8, 4096), w, x, padding=2, groups=8)),
    # Row (b, c) of x convolved with w[c, 0]: a correlation with the flipped taps.
    "convolve": (lambda x, w: fastconv_ext.convolve(x, w[:, 0]),
                 lambda x, w: F.conv1d(x, w.flip(-1), padding=4, groups=8)),
    "conv2d": (lambda x, w: fastconv_ext.conv2d(x.view(4, 8, 64, 64), w[..., None].expand(8, 1, 5, 5),
                                                padding=2, groups=8, algorithm="direct"),
               lambda x, w: F.conv2d(x.view(4, 8, 64, 64), w[..., None].expand(8, 1, 5, 5),
                                     padding=2, groups=8)),
}


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_reused_buffer_is_fully_overwritten(name, cache):
    """A freed result's buffer comes back for the next one of its size, and stale NaNs never leak."""
    produce, reference = PRODUCERS[name]
    x, w = _conv1d_case()
    first = produce(x, w)
    assert first.nbytes >= 128 << 10
    address = first.data_ptr()
    first.fill_(float("nan"))
    del first
    before = fastconv_ext.cpu_cache_info()
    assert before["cached_buffers"] >= 1
    second = produce(x, w)
    after = fastconv_ext.cpu_cache_info()
    assert second.data_ptr() == address
    assert after["hits"] == before["hits"] + 1
    torch.testing.assert_close(second, reference(x, w))


def test_small_results_bypass_the_cache(cache):
    before = fastconv_ext.cpu_cache_info()
    y = fastconv_ext.conv1d(torch.randn(1, 1, 100), torch.randn(1, 1, 3))
    del y
    after = fastconv_ext.cpu_cache_info()
    assert (after["hits"], after["misses"], after["cached_buffers"]) == (
        before["hits"], before["misses"], before["cached_buffers"])


def test_limit_bounds_what_stays_cached(cache):
    x, w = _conv1d_case()
    fastconv_ext.set_cpu_cache_limit(0)
    y = fastconv_ext.conv1d(x, w, groups=8)
    del y
    assert fastconv_ext.cpu_cache_info()["cached_bytes"] == 0
    fastconv_ext.set_cpu_cache_limit(1 << 20)  # 1 MiB: two of three 512 KiB results stay
    xf, wf = x.float(), w.float()
    ys = [fastconv_ext.conv1d(xf, wf, groups=8) for _ in range(3)]
    assert ys[0].nbytes == 4 * 8 * 4092 * 4  # 512 KiB, rounded up
    del ys
    info = fastconv_ext.cpu_cache_info()
    assert info["limit_bytes"] == 1 << 20
    assert info["cached_bytes"] == 1 << 20 and info["cached_buffers"] == 2
    fastconv_ext.set_cpu_cache_limit(0)
    assert fastconv_ext.cpu_cache_info()["cached_bytes"] == 0


def test_empty_cpu_cache_frees_everything_cached(cache):
    x, w = _conv1d_case()
    ys = [fastconv_ext.conv1d(x, w, groups=8, padding=p) for p in range(3)]
    del ys
    assert fastconv_ext.cpu_cache_info()["cached_buffers"] >= 1
    fastconv_ext.empty_cpu_cache()
    info = fastconv_ext.cpu_cache_info()
    assert info["cached_bytes"] == 0 and info["cached_buffers"] == 0


def test_cached_results_are_ordinary_tensors(cache):
    """Resizing past the buffer reallocates through the cache; the data survives; numpy shares it."""
    x, w = _conv1d_case()
    y = fastconv_ext.conv1d(x, w, groups=8)
    ref = y.clone()
    flat = y.view(-1)
    flat.resize_(flat.numel() * 3)
    torch.testing.assert_close(flat[: ref.numel()].view_as(ref), ref)
    flat[ref.numel():] = 1
    assert flat.numpy()[-1] == 1
    assert torch.equal(torch.from_numpy(flat.numpy()[: ref.numel()]).view_as(ref), ref)


def test_results_freed_on_other_threads(cache):
    """Results made and freed on several threads at once come out right."""
    x, w = _conv1d_case()
    ref = F.conv1d(x, w, groups=8)
    errors = []

    def work():
        for _ in range(20):
            y = fastconv_ext.conv1d(x, w, groups=8)
            if not torch.equal(y, fastconv_ext.conv1d(x, w, groups=8)) or not torch.allclose(y, ref):
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match=r"limit_bytes must be an int >= 0"):
        fastconv_ext.set_cpu_cache_limit(-1)
    with pytest.raises(RuntimeError, match=r"limit_bytes must be >= 0, got -5"):
        ops._cpu_cache(-5)


@pytest.mark.parametrize("value,limit,warns", [("3", 3 << 20, False), ("0", 0, False),
                                               ("lots", 512 << 20, True), ("-1", 512 << 20, True)])
def test_limit_from_environment(value, limit, warns, tmp_path):
    # cwd outside the checkout: the installed package, not the source tree, must be imported
    code = ("import warnings, fastconv_ext\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    info = fastconv_ext.cpu_cache_info()\n"
            "print(info['limit_bytes'], any('FASTCONV_CPU_CACHE_MB' in str(x.message) for x in w))\n")
    env = dict(os.environ, FASTCONV_CPU_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    got_limit, got_warning = out.stdout.split()
    assert int(got_limit) == limit
    assert (got_warning == "True" or "FASTCONV_CPU_CACHE_MB" in out.stderr) == warns


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_cache_works_in_a_forked_child(cache):
    """A forked child (DataLoader workers) reuses and frees cached buffers of its own copy."""
    x, w = _conv1d_case()
    ref = F.conv1d(x, w, groups=8)
    del ref  # its buffer is ATen's; make one of ours cached before the fork
    y = fastconv_ext.conv1d(x, w, groups=8)
    del y
    pid = os.fork()
    if pid == 0:  # child: any failure becomes a non-zero exit status
        ok = False
        try:
            torch.set_num_threads(1)  # as DataLoader workers do: OpenMP's pool did not fork
            for _ in range(3):
                ok = torch.allclose(fastconv_ext.conv1d(x, w, groups=8), F.conv1d(x, w, groups=8))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _transparent_huge_pages():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _transparent_huge_pages(),
                    reason="needs Linux with transparent huge pages enabled (always or madvise)")
def test_large_results_get_huge_pages_from_a_reused_heap(tmp_path):
    """With glibc told to reuse memory and a heap already faulted in at 4 KiB, a result of
    32 MiB or more still gets a fresh mapping advised onto huge pages before its first touch."""
    code = (
        "import re, torch, fastconv_ext\n"
        "x = torch.empty(256 << 20, dtype=torch.uint8).fill_(1)\n"
        "del x  # stays in the heap: MALLOC_TRIM_THRESHOLD_\n"
        "y = fastconv_ext.convolve(torch.randn(10**6, 6), torch.randn(10**6, 6))\n"
        "for block in re.split(r'\\n(?=[0-9a-f]+-[0-9a-f]+ )', open('/proc/self/smaps').read()):\n"
        "    lo, hi = (int(s, 16) for s in block.split()[0].split('-'))\n"
        "    if lo <= y.data_ptr() < hi:\n"
        "        huge = int(re.search(r'AnonHugePages:\\s+(\\d+)', block).group(1))\n"
        "        print(y.data_ptr() % (2 << 20), ' hg ' in block.split('VmFlags:')[1] + ' ', huge)\n")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 40), MALLOC_TRIM_THRESHOLD_=str(1 << 40))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    offset, advised, huge_kib = out.stdout.split()
    assert (offset, advised) == ("0", "True")
    assert int(huge_kib) > 0, "no huge page in the result's mapping"
