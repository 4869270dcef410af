"""Student export: torch -> ONNX (opset 17, dynamic batch/sequence) -> int8 (train extra only).

Uses the TorchScript exporter (``dynamo=False``): for this small LSTM model it
emits plain ``LSTM``/``Gather``/``MatMul`` nodes with all weights inlined in one
file, which is what ``quantize_dynamic`` handles best (it has int8 kernels
for ``LSTM``, ``MatMul`` and ``Gather``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

from cloud_controller.training.chat_nets import StudentTagger

__all__ = ["INPUT_NAMES", "OUTPUT_NAMES", "export_onnx", "quantize_int8"]

INPUT_NAMES = ["word_ids", "ngram_ids"]
OUTPUT_NAMES = ["intent_logits", "slot_logits"]


def export_onnx(model: StudentTagger, path: Path, max_ngrams: int, opset: int = 17) -> Path:
    """Write a single-file fp32 ONNX model with dynamic batch and sequence axes."""
    model.eval()
    words = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.long)  # valid for any vocabulary
    ngrams = torch.ones((2, 3, max_ngrams), dtype=torch.long)
    ngrams[1, 2] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (words, ngrams),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={
                "word_ids": {0: "batch", 1: "seq"},
                "ngram_ids": {0: "batch", 1: "seq"},
                "intent_logits": {0: "batch"},
                "slot_logits": {0: "batch", 1: "seq"},
            },
        )
    onnx.checker.check_model(str(path))
    return path


def quantize_int8(
    fp32_path: Path, int8_path: Path, *, per_channel: bool = True, op_types: list[str] | None = None
) -> Path:
    """Pre-process (shape inference, graph optimization) then dynamic int8 quantization of the weights.

    ``op_types`` selects which ops get int8 weights (default: all that onnxruntime
    supports: LSTM, MatMul, Gather); excluding one trades size for accuracy.
    Measured on SNIPS valid (distilled student, 5 epochs): fp32 F1 93.05; int8
    per-tensor 93.05 (4.26 MB); per-channel 93.10 (4.28 MB); int8 without Gather
    93.22 but 14.4 MB (the embedding tables dominate the size). Per-channel costs
    nothing and is the default; keeping Gather in fp32 is not worth 3x the size.
    """
    pre = int8_path.with_name(int8_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    try:
        quantize_dynamic(
            str(pre),
            str(int8_path),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=op_types,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        pre.unlink(missing_ok=True)
    return int8_path
