"""Our CUDA kernels, compiled by MLX at run time (``mx.fast.cuda_kernel``, NVRTC).

Each kernel is a ``.cu`` source shipped as package data beside its launcher: ``gemv.cu`` / ``gemv.py`` (the 4-bit
matrix-vector product for decoding) and ``qk_rope.cu`` / ``qk_rope.py`` (a one-token step's q/k norms and RoPE). A
launcher holds ``covers()`` (the shapes its kernel computes), the call, and ``reference()``: the MLX ops the kernel
replaces, which the tests compare it against. Whether the kernels run is the engine's choice; ``available()`` only
says whether they can.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import mlx.core as mx


def available() -> bool:
    """Whether MLX computes on a CUDA GPU here (the default device), so that our kernels can run."""
    return mx.default_device().type == mx.DeviceType.gpu and mx.cuda.is_available()


@cache
def read_source(filename: str) -> str:
    """A kernel source of this package (``gemv.cu``, ``qk_rope.cu``), as installed."""
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


@dataclass(frozen=True)
class KernelSource:
    """What ``mx.fast.cuda_kernel`` compiles: a ``.cu`` file as the header, and a body that calls into it.

    MLX generates the kernel's signature from the names (inputs ``const T* name``, plus ``name_shape`` where the body
    uses it; then the outputs) and declares the template arguments as constants before the body."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    header: str
    body: str

    @property
    def kernel_name(self) -> str:
        """The name with a hash of the source: MLX keys compiled kernels by name alone (in a process, and in its
        on-disk cache should it keep custom kernels there), so a changed source never finds an old build."""
        digest = hashlib.sha1((self.header + self.body).encode()).hexdigest()[:12]
        return f"{self.name}_{digest}"

    def build(self):
        return mx.fast.cuda_kernel(name=self.kernel_name, input_names=list(self.input_names),
                                   output_names=list(self.output_names), source=self.body, header=self.header)


def call(function: str, template: tuple[str, ...], arguments: tuple[str, ...]) -> str:
    """A kernel body calling ``bobby::function<template...>(arguments...)`` of the header."""
    return f"  bobby::{function}<{', '.join(template)}>({', '.join(arguments)});\n"
