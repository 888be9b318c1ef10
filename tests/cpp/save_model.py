"""Saves the TorchScript model the C++ test runs, and the results it must reproduce.

    python tests/cpp/save_model.py OUT_DIR

OUT_DIR/model.pt     a scripted model using fastconv's Conv2d, Conv1d and convolve
OUT_DIR/expected.pt  a scripted module whose buffers hold the input, the output, the
                     output gradient, and the gradients of the input and of every parameter
"""

import sys
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor, nn

import fastconv_ext


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv2d = fastconv_ext.Conv2d(3, 4, 3, padding=1)
        self.conv1d = fastconv_ext.Conv1d(4, 4, 5, padding="same", groups=4, padding_mode="reflect")
        self.taps = nn.Parameter(torch.randn(4, 7))

    def forward(self, image: Tensor) -> Tensor:
        features = self.conv2d(image).tanh()  # (N, 4, H, W)
        rows = self.conv1d(features.flatten(2))  # (N, 4, H * W)
        return fastconv_ext.convolve(rows, self.taps, "same")


class Tensors(nn.Module):
    def __init__(self, tensors: Dict[str, Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def forward(self, x: Tensor) -> Tensor:
        return x


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = Model().double()
    scripted = torch.jit.script(model)
    scripted.save(str(out / "model.pt"))

    image = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    output = scripted(image)
    grad_output = torch.randn_like(output)
    names = ["input"] + [name for name, _ in model.named_parameters()]
    grads = torch.autograd.grad(output, [image] + list(model.parameters()), grad_output)
    tensors = {"input": image.detach(), "output": output.detach(), "grad_output": grad_output}
    tensors.update({"grad_" + n.replace(".", "_"): g for n, g in zip(names, grads)})
    torch.jit.script(Tensors(tensors)).save(str(out / "expected.pt"))
    print(f"saved {out / 'model.pt'} and {out / 'expected.pt'} ({', '.join(tensors)})")


if __name__ == "__main__":
    main(sys.argv[1])
