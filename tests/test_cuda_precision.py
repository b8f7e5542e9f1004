"""The engines' automatic precision on CUDA: fp16 on every GPU, Colab's T4 (sm_75) included.

No GPU is needed: ``torch.cuda.is_available`` and ``get_device_capability`` are replaced, so the
choice is checked for a Turing T4, an Ampere A100 and a Hopper H100/H200 on any machine.
"""

from __future__ import annotations

import logging

import pytest
import torch

from speech2image_nb.server.engines.base import resolve_device_and_dtype
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine
from speech2image_nb.server.engines.dalle_mini.engine import resolve_precision
from speech2image_nb.server.engines.diffusers import DiffusersEngine

GPUS = {"T4 (sm_75)": (7, 5), "A100 (sm_80)": (8, 0), "H200 (sm_90)": (9, 0)}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch report one visible GPU of the given compute capability."""

    def install(capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)

    return install


@pytest.mark.parametrize("capability", GPUS.values(), ids=GPUS.keys())
def test_automatic_precision_is_fp16_on_every_gpu(fake_gpu, tmp_path, capability):
    """With no dtype asked for, both engines pick CUDA and fp16, whatever the GPU generation."""
    fake_gpu(capability)
    assert resolve_precision(None, None) == (torch.device("cuda"), "float16")
    assert resolve_device_and_dtype(None, None) == (torch.device("cuda"), "float16")
    assert DalleMiniEngine(model_dir=tmp_path).describe()["dtype"] == "float16"
    assert DiffusersEngine(model_dir=tmp_path).describe()["dtype"] == "float16"


@pytest.mark.parametrize("capability", GPUS.values(), ids=GPUS.keys())
def test_bf16_before_ampere_is_kept_but_warned_about(fake_gpu, tmp_path, caplog, capability):
    """Asking for bf16 gets bf16; on a GPU older than sm_80 (no bf16 tensor cores) a warning says use fp16."""
    fake_gpu(capability)
    with caplog.at_level(logging.WARNING):
        assert DalleMiniEngine(model_dir=tmp_path, dtype="bf16").dtype_name == "bfloat16"
        assert DiffusersEngine(model_dir=tmp_path, dtype="bf16").dtype_name == "bfloat16"
    warnings = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    if capability < (8, 0):
        assert len(warnings) == 2 and all("use dtype fp16" in w for w in warnings)
    else:
        assert warnings == []


def test_cpu_choice_is_unchanged(tmp_path, caplog):
    """Without a GPU the DALL-E engine stays on int8 (or fp32) and diffusers on fp32, with no warning."""
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("cpu", None)[1] in ("int8", "float32")
        assert resolve_device_and_dtype("cpu", None)[1] == "float32"
        assert resolve_device_and_dtype("cpu", "bf16")[1] == "bfloat16"
    assert caplog.records == []
