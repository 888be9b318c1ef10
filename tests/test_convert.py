"""fastconv_ext.convert / revert: in-place conversion of a model's convolutions."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import fastconv_ext


class OwnForward(nn.Conv1d):
    def forward(self, x):
        return super().forward(x) * 2


class ExtraAttribute(nn.Conv2d):
    tag = "kept"


def make_model():
    torch.manual_seed(0)
    shared = nn.Conv1d(8, 8, 3, padding=1, groups=8)
    model = nn.ModuleDict({
        "stem": nn.Conv1d(4, 8, 5, padding=2),
        "a": shared,
        "b": shared,  # the same layer under two names
        "wn": parametrizations.weight_norm(nn.Conv1d(8, 8, 7, padding=3, groups=2)),
        "legacy": torch.nn.utils.weight_norm(nn.Conv1d(8, 8, 3, padding=1)),
        "own": OwnForward(8, 8, 1),
        "img": nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), ExtraAttribute(4, 4, 3, padding=1, groups=4),
                             parametrizations.spectral_norm(nn.Conv2d(4, 4, 1))),
    })
    return model


def run(model, x, image):
    h = model["stem"](x)
    h = model["a"](h) + model["b"](h)
    h = model["legacy"](model["wn"](h))
    return model["own"](h), model["img"](image)


def test_convert_keeps_parameters_state_hooks_and_results():
    model = make_model().double()
    reference = make_model().double()
    params = list(model.parameters())
    keys = list(model.state_dict().keys())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    model["stem"].register_forward_hook(lambda m, i, o: calls.append("hook"))
    model.eval()
    x, image = torch.randn(2, 4, 32, dtype=torch.float64), torch.randn(2, 2, 9, 9, dtype=torch.float64)
    expected = run(model, x, image)

    with pytest.warns(UserWarning, match=r"left these layers alone: own \(OwnForward overrides forward\)"):
        assert fastconv_ext.convert(model) is model
    assert isinstance(model["stem"], fastconv_ext.Conv1d) and type(model["a"]) is fastconv_ext.Conv1d
    assert isinstance(model["wn"], fastconv_ext.Conv1d) and isinstance(model["legacy"], fastconv_ext.Conv1d)
    assert type(model["own"]) is OwnForward
    assert isinstance(model["img"][1], fastconv_ext.Conv2d) and model["img"][1].tag == "kept"
    assert isinstance(model["img"][2], fastconv_ext.Conv2d)
    assert not model.training and model["stem"].algorithm == "auto"
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    assert list(model.state_dict().keys()) == keys
    got = run(model, x, image)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert calls == ["hook", "hook"]

    # The optimizer made before the call trains the converted model like the original.
    model.train(), reference.train()
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for m, opt in ((model, optimizer), (reference, ref_optimizer)):
        opt.zero_grad()
        sum(t.square().sum() for t in run(m, x, image)).backward()
        opt.step()
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_convert_twice_and_revert():
    model = make_model()
    x, image = torch.randn(2, 4, 32), torch.randn(2, 2, 9, 9)
    with pytest.warns(UserWarning):
        fastconv_ext.convert(model, algorithm="native")
    classes = {name: type(m) for name, m in model.named_modules()}
    with pytest.warns(UserWarning):
        fastconv_ext.convert(model)  # changes nothing: "own" is still left alone, the rest already converted
    assert {name: type(m) for name, m in model.named_modules()} == classes
    assert model["stem"].algorithm == "native"
    converted = run(model, x, image)
    fastconv_ext.revert(model)
    assert type(model["stem"]) is nn.Conv1d and type(model["img"][0]) is nn.Conv2d
    assert type(model["img"][1]) is ExtraAttribute and not hasattr(model["stem"], "algorithm")
    assert type(model["wn"]).__name__ == "ParametrizedConv1d"
    for g, e in zip(run(model, x, image), converted):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    # Parametrizations can still be removed after a revert.
    torch.nn.utils.parametrize.remove_parametrizations(model["wn"], "weight")
    assert type(model["wn"]) is nn.Conv1d


def test_include_exclude_and_verbose(capsys):
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Sequential(nn.Conv1d(2, 2, 3), nn.Conv2d(2, 2, 1)))
    fastconv_ext.convert(model, include=["1.*"], exclude=lambda name, m: isinstance(m, nn.Conv2d), verbose=True)
    assert type(model[0]) is nn.Conv1d and type(model[1][0]) is fastconv_ext.Conv1d and type(model[1][1]) is nn.Conv2d
    assert "converted 1 layer(s)\n  1.0 (Conv1d)" in capsys.readouterr().out
    with pytest.raises(TypeError, match=r"module must be a torch.nn.Module"):
        fastconv_ext.convert(torch.randn(3))
    with pytest.raises(ValueError, match=r"algorithm must be one of"):
        fastconv_ext.convert(nn.Conv1d(1, 1, 3), algorithm="fastest")


def test_report_with_example_inputs(capsys):
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1, groups=4), nn.ReLU(), nn.Conv1d(8, 8, 1, padding_mode="reflect"))
    fastconv_ext.convert(model, example_inputs=(torch.randn(2, 4, 64),), train=True, prune=False)
    out = capsys.readouterr().out
    assert "layer" in out and "torch ms" in out and "all layers" in out
    report = fastconv_ext.profile_layers(model, (torch.randn(2, 4, 64),))
    assert [r["name"] for r in report] == ["0", "2"]
    assert report[0]["input"] == (2, 4, 64) and report[0]["paths"]["forward"] in ("native", "direct", "fft")
    assert report[0]["torch_ms"] > 0 and report[0]["fastconv_ms"] > 0


class DepthwiseAndSqueeze(nn.Module):
    """A layer fastconv's own path runs (depthwise, K = 31) and one only PyTorch's kernel does
    (a dense 3x3 convolution on a small map)."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv1d(64, 64, 31, padding=15, groups=64)
        self.se = nn.Conv2d(96, 40, 3, padding=1)

    def forward(self, x, image):
        return self.dw(x), self.se(image)


@pytest.mark.parametrize("train", [False, True])
def test_prune_gives_layers_that_ran_pytorch_kernels_their_class_back(capsys, train):
    torch.manual_seed(0)
    model = DepthwiseAndSqueeze()
    inputs = (torch.randn(2, 64, 500), torch.randn(1, 96, 4, 4))
    expected = [y.detach() for y in model(*inputs)]
    ops = ("forward", "input", "weight") if train else ("forward",)
    paths = []
    for layer, x in ((model.dw, inputs[0]), (model.se, inputs[1])):
        args = (x, layer.weight.detach(), list(layer.stride), list(layer.padding), list(layer.dilation), layer.groups)
        paths.append({torch.ops.fastconv._conv_path(*args, "auto", op) for op in ops})
    assert paths[0] != {"native"} and paths[1] == {"native"}  # the case covers both outcomes
    fastconv_ext.convert(model, example_inputs=inputs, train=train)
    assert "(reverted)" in capsys.readouterr().out
    assert type(model.dw) is not nn.Conv1d and isinstance(model.dw, nn.Conv1d)  # fastconv's path ran: kept
    assert type(model.se) is nn.Conv2d  # every operator ran PyTorch's kernel: reverted
    for got, want in zip(model(*inputs), expected):
        torch.testing.assert_close(got, want)
    fastconv_ext.revert(model)
    assert type(model.dw) is nn.Conv1d


def test_prune_rule():
    from fastconv_ext.convert import _prunable

    def report(paths, torch_ms, fastconv_ms):
        return {"native_only": set(paths) == {"native"}, "torch_ms": torch_ms, "fastconv_ms": fastconv_ms}

    assert _prunable(report(["native", "native", "native"], 1.0, 0.9))  # nothing of fastconv's ran
    assert _prunable(report(["im2col", "native", "native"], 0.034, 0.047))  # measured slower as a layer
    assert not _prunable(report(["direct", "native", "native"], 1.0, 0.5))
    assert _prunable(report(["direct"], 1.0, 1.0))  # a tie: not worth the risk that noise hid a loss
    assert _prunable(report(["direct"], 1.01, 1.0))
    assert not _prunable(report(["direct"], 1.03, 1.0))


def test_converted_model_scripts_and_compiles():
    model = nn.Sequential(nn.Conv1d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 6, 1))
    fastconv_ext.convert(model)
    x = torch.randn(2, 3, 40)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x))
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
