"""Make this CPU behave like a 2-core AVX2-only one (no AVX512, no bf16) for every Python process.

Put this folder first on PYTHONPATH (bench/bench_suite.py does): the environment keeps torch's own
kernels, oneDNN and MKL at AVX2, and this hook makes torch report no bf16 support, so `bf16: auto`
trains in fp32 as it does on such a CPU.
"""

import importlib.abc
import importlib.machinery
import os
import sys

for key, value in {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}.items():
    os.environ.setdefault(key, value)


def _no_bf16() -> bool:
    return False


class _PatchTorchCpu(importlib.abc.MetaPathFinder):
    """After `torch.cpu` is imported, its bf16/AMX probes answer False."""

    def find_spec(self, name, path, target=None):
        if name != "torch.cpu":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module._is_avx512_bf16_supported = _no_bf16
            module._is_amx_tile_supported = _no_bf16

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchTorchCpu())
