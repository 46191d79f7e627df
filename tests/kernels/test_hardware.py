"""The device facts the kernels' tuning reads (kernels/hardware.py): nothing off CUDA, and
on a GPU the SMs, the shared memory an SM holds and the most a program may take, which
fused_moe fits its tiles into."""
from __future__ import annotations

import pytest
import torch

from tessera.kernels import hardware


def test_nothing_off_cuda():
    cpu = torch.device("cpu")
    assert hardware.multiprocessors(cpu) == (0, 0)
    assert hardware.program_shared_memory(cpu) == 0
    assert not hardware.nvidia_sm90_or_later(cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpus_multiprocessors_and_shared_memory():
    from tessera.kernels import fused_moe
    device = torch.device("cuda", torch.cuda.current_device())
    sms, per_sm = hardware.multiprocessors(device)
    per_program = hardware.program_shared_memory(device)
    assert sms == torch.cuda.get_device_properties(device).multi_processor_count > 0
    assert 48 << 10 <= per_program < per_sm <= 256 << 10  # an H100 / H200: 227 KB, 228 KB
    assert fused_moe.shared_memory_bytes(device) == per_program - fused_moe.SMEM_MARGIN
