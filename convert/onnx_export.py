"""Export a Whisper or LiteWhisper folder to ONNX, in the layout transformers.js reads from a Hub repo.

    report = export_onnx("lite-whisper-tiny.en-fast")            # writes lite-whisper-tiny.en-fast/onnx/
    report = export_onnx("whisper-tiny.en", out_dir="tiny-onnx", dtypes=("fp32", "q8"))

Files (transformers.js and optimum names; one repo then serves transformers, ONNX Runtime and transformers.js):
- `onnx/encoder_model.onnx`: `input_features` [batch_size, n_mels, 3000] -> `last_hidden_state` [batch_size, T, d].
- `onnx/decoder_model_merged.onnx`: the decoder with and without past key/values in one graph. Inputs `input_ids`
  [batch_size, decoder_sequence_length], `encoder_hidden_states`, `past_key_values.{i}.{decoder,encoder}.{key,value}`
  [batch_size, heads, past length, head_dim] and `use_cache_branch` (bool [1]); outputs `logits` and
  `present.{i}.{decoder,encoder}.{key,value}`. With `use_cache_branch` false (the first step: the past inputs
  are then empty tensors, as transformers.js feeds them) the decoder reads the whole prompt and computes the
  cross-attention keys/values from `encoder_hidden_states`; with true it reads the new tokens and the past, and
  returns empty cross-attention keys/values (the caller keeps the first step's, as transformers.js does).
- Variants with transformers.js' suffixes: `_quantized` (q8: int8 dynamic quantisation of the MatMul/Gemm weights
  by onnxruntime.quantization, the decoder's tied logits projection included, see `fold_weight_transposes` and
  `smooth_logits`; the low-rank slots' rank channels are balanced first, see `balance_low_rank_factors`; the
  convolution stem stays float, since ONNX Runtime Web has no ConvInteger, and so does the encoder's fc2, see
  `float_matmuls`) and `_fp16` (weights and compute in float16, inputs and outputs float32).

How: each graph is exported from the PyTorch model by `torch.onnx.export(dynamo=True)` (transformers' own
decoder and cache classes), the two decoder graphs are joined under one `If` node with the `onnx` helper API
(weights shared), and quantisation/fp16 use onnxruntime.quantization and onnxconverter-common. A LiteWhisper
encoder is exported in its factored form: every low-rank slot stays two MatMuls (rescaled, the same function, by
`balance_low_rank_factors`), and the in-memory inference layout of `modeling_lite_whisper.py` (merging near
break-even, shared first factors, reduced attention) is switched off for the export, since its thresholds were
measured for PyTorch, not for ONNX Runtime.

Checks, before anything is moved into place: on a real speech clip, the encoder output and the decoder's logits
(first step without past, then steps with past) of every written variant are compared with PyTorch's; a variant
outside its tolerance raises `OnnxMismatchError` naming the file and the error (fp32 and fp16 by their largest
element; the q8 encoder by its RMS: see CHECKS).
"""

import hashlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

ONNX_FOLDER = "onnx"
ENCODER = "encoder_model"
DECODER = "decoder_model_merged"
# transformers.js dtype name -> file-name suffix (its DEFAULT_DTYPE_SUFFIX_MAPPING).
SUFFIXES = {"fp32": "", "q8": "_quantized", "fp16": "_fp16"}
DEFAULT_DTYPES = ("fp32", "q8", "fp16")
OPSET = 18
# q8 weights get one int8 scale per output column: on tiny.en (librispeech-test-other-60) q8 WER was 16.19 % per
# column and 16.73 % per tensor, against 15.04 % in fp32.
PER_CHANNEL = True
OP_TYPES_Q8 = ["MatMul", "Gemm"]
# Largest relative error (max |onnx - torch| / max |torch|) accepted per variant, for the encoder output and the
# decoder logits. fp32 differs from PyTorch by summation order only; fp16 and int8 by their rounding.
# How far each variant may be from PyTorch on the check clip, per part: (measure, tolerance). fp32 and fp16 only
# round, so they are held to their largest element's error (relative to the largest reference value). q8 adds noise
# everywhere, and one element of the encoder output says little: on the tiny.en fast preset one element was off by
# 0.77 of the largest value while the relative RMS error was 0.031 and greedy WER rose by 0.63 (15.21 % to 15.84 %,
# librispeech-test-other-60), so the q8 encoder is held to its relative RMS error. Logits are held to their
# largest element in every dtype (their RMS is dominated by the many unlikely tokens).
CHECKS = {
    "fp32": {"encoder": ("max", 1e-3), "decoder": ("max", 1e-3)},
    "fp16": {"encoder": ("max", 2e-2), "decoder": ("max", 2e-2)},
    "q8": {"encoder": ("rms", 0.15), "decoder": ("max", 0.25)},
}
ERROR_NAMES = {"max": "relative, largest element", "rms": "relative RMS"}
DEFAULT_CHECK_AUDIO = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "librispeech-test-clean-mini"
                       / "1089-134686-0000.flac")


class OnnxExportError(ValueError):
    """The model cannot be exported as asked (bad folder, unknown dtype, missing check clip, exporter failure)."""


class OnnxMismatchError(OnnxExportError):
    """An exported graph computes something other than the PyTorch model it came from."""


@dataclass
class ExportReport:
    folder: Path  # the onnx/ folder written
    files: Dict[str, int] = field(default_factory=dict)  # file name -> bytes
    errors: Dict[str, Dict[str, float]] = field(default_factory=dict)  # variant -> {"encoder": e, "decoder": e}
    check_audio: Optional[str] = None


def file_name(part: str, dtype: str) -> str:
    return f"{part}{SUFFIXES[dtype]}.onnx"


# ----------------------------------------------------------------------------------------------- PyTorch side


class EncoderGraph(torch.nn.Module):
    """input_features [B, n_mels, 3000] -> last_hidden_state [B, T, d]."""

    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_features):
        return self.encoder(input_features).last_hidden_state


class DecoderGraph(torch.nn.Module):
    """One decoder step as transformers.js feeds it, without (`with_past=False`) or with past key/values.

    Inputs: input_ids [B, S], encoder_hidden_states [B, T, d], then (with past) for each layer the self-attention
    key, value [B, H, P, hd] and the cross-attention key, value [B, H, T, hd]. Outputs: logits [B, S, vocab],
    then for each layer the self-attention key, value [B, H, P + S, hd] and (without past) the cross-attention
    key, value.
    """

    def __init__(self, model, with_past: bool):
        super().__init__()
        self.decoder = model.get_decoder()
        self.proj_out = model.proj_out
        self.layers = model.config.decoder_layers
        self.with_past = with_past

    def forward(self, input_ids, encoder_hidden_states, *past):
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if self.with_past:
            cache = EncoderDecoderCache(
                DynamicCache([(past[4 * i], past[4 * i + 1]) for i in range(self.layers)]),
                DynamicCache([(past[4 * i + 2], past[4 * i + 3]) for i in range(self.layers)]),
            )
        else:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output = self.decoder(input_ids=input_ids, encoder_hidden_states=encoder_hidden_states, cache=cache,
                              use_cache=True)
        outputs = [self.proj_out(output.last_hidden_state)]
        for index in range(self.layers):
            own, cross = cache.self_attention_cache.layers[index], cache.cross_attention_cache.layers[index]
            outputs += [own.keys, own.values]
            if not self.with_past:
                outputs += [cross.keys, cross.values]
        return tuple(outputs)


def past_names(layers: int, prefix: str = "past_key_values") -> List[str]:
    """past_key_values.{i}.decoder.key, .decoder.value, .encoder.key, .encoder.value for each layer, in order."""
    return [f"{prefix}.{i}.{part}.{kind}" for i in range(layers) for part in ("decoder", "encoder")
            for kind in ("key", "value")]


def _load_for_export(model_path):
    """The model in float32 on the CPU, eval mode, with any LiteWhisper inference layout switched off."""
    from .evaluation import load_model

    model, processor = load_model(model_path, device="cpu", dtype=torch.float32)
    switch = getattr(sys.modules.get(type(model).__module__), "set_inference_layout", None)
    if switch is not None:  # LiteWhisper: export the factored form (two MatMuls per low-rank slot)
        switch(model, False)
    return model, processor


def balance_low_rank_factors(model, features: torch.Tensor) -> int:
    """Rescale every low-rank slot's rank channels so that z = x @ weight1 has the same RMS in each channel on
    `features` (the check clip): weight1's column j is divided by channel j's RMS and weight2's row j multiplied by
    it, the same function in exact arithmetic. Returns the number of slots rescaled (0 for stock Whisper).

    Why: z holds principal components of the layer's output, whose scales span orders of magnitude, and int8
    dynamic quantisation gives the second factor's input one scale per tensor, which rounded the small components
    to nothing (the encoder output's relative error 1.0 on a tiny.en preset). Balanced, the second factors quantise
    like any MatMul (tiny.en `fast` q8 encoder: RMS error 0.038 with them int8, 0.031 with them float; greedy WER
    on librispeech-test-other-60 15.39 % and 15.04 %, fp32 15.21 %). The first factors' int8 scales are per output
    column, so the rescale does not change their rounding."""
    low_rank = getattr(sys.modules.get(type(model).__module__), "LowRankLinear", None)
    if low_rank is None:
        return 0
    slots = [module for module in model.get_encoder().modules() if isinstance(module, low_rank)]
    rms = {}

    def record(module, args):
        rank_channels = args[0].reshape(-1, module.in_features) @ module.weight1  # [positions, r]
        rms[module] = rank_channels.double().pow(2).mean(0).sqrt()

    hooks = [slot.register_forward_pre_hook(record) for slot in slots]
    try:
        with torch.inference_mode():
            model.get_encoder()(features)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for slot, channel_rms in rms.items():
            scale = channel_rms.clamp_min(channel_rms.max() * 1e-6).to(slot.weight1.dtype)
            slot.weight1.div_(scale)
            slot.weight2.mul_(scale[:, None])
    return len(rms)


def _to_onnx(module, args, input_names, output_names, dynamic_shapes):
    """One graph through torch.onnx's dynamo exporter, as an onnx.ModelProto holding its weights."""
    import warnings

    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it notes every missing optional library (torchvision ops) as a warning
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, args, dynamo=True, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic_shapes, opset_version=OPSET, verbose=False,
                                    optimize=True)
    exporter_log.setLevel(level)
    return _outputs_as_identities(program.model_proto)


def _outputs_as_identities(model):
    """Give every graph output its own Identity node. The exporter lets nodes read a graph output (the decoder
    reads the present key it returns), which onnxconverter-common's fp16 pass breaks (it casts the output back
    to float32 under the same name); with an Identity in between, the internal value keeps its own name."""
    from onnx import helper

    graph = model.graph
    for value in graph.output:
        internal = f"{value.name}/internal"
        for node in graph.node:
            node.input[:] = [internal if name == value.name else name for name in node.input]
            node.output[:] = [internal if name == value.name else name for name in node.output]
        graph.node.append(helper.make_node("Identity", [internal], [value.name], name=f"{value.name}/identity"))
    return model


def export_encoder(model, features: torch.Tensor):
    batch = torch.export.Dim("batch_size")
    return _to_onnx(EncoderGraph(model).eval(), (features,), ["input_features"], ["last_hidden_state"],
                    ({0: batch},))


def export_decoders(model, encoder_hidden_states: torch.Tensor):
    """(decoder without past, decoder with past) as ModelProtos, to be merged.

    The decoder is traced with transformers' eager attention rather than SDPA: the exporter's SDPA decomposition
    transposes each layer's cross-attention keys [B, H, T, hd] at every step (on tiny.en q8, 1.6 of 15 ms per
    step), where ONNX Runtime fuses eager's `query @ key.transpose` into one MatMul."""
    attention = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        return _trace_decoders(model, encoder_hidden_states)
    finally:
        model.config._attn_implementation = attention


def _trace_decoders(model, encoder_hidden_states: torch.Tensor):
    config = model.config
    layers = config.decoder_layers
    heads, head_dim = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    batch = torch.export.Dim("batch_size")
    sequence = torch.export.Dim("decoder_sequence_length", max=config.max_target_positions)
    encoder_positions = encoder_hidden_states.shape[1]
    prompt = torch.full((1, 4), config.decoder_start_token_id, dtype=torch.long)
    present = ["logits"] + past_names(layers, "present")
    no_past = _to_onnx(DecoderGraph(model, False).eval(), (prompt, encoder_hidden_states),
                       ["input_ids", "encoder_hidden_states"], present, ({0: batch, 1: sequence}, {0: batch}))

    past_length = torch.export.Dim("past_sequence_length", max=config.max_target_positions)
    past = []
    for _ in range(layers):
        past += [torch.zeros(1, heads, 4, head_dim), torch.zeros(1, heads, 4, head_dim),
                 torch.zeros(1, heads, encoder_positions, head_dim), torch.zeros(1, heads, encoder_positions, head_dim)]
    past_shapes = [{0: batch, 2: past_length}, {0: batch, 2: past_length}, {0: batch}, {0: batch}] * layers
    present_self = ["logits"] + [name for name in past_names(layers, "present") if ".decoder." in name]
    with_past = _to_onnx(DecoderGraph(model, True).eval(), (prompt[:, :1], encoder_hidden_states, *past),
                         ["input_ids", "encoder_hidden_states"] + past_names(layers), present_self,
                         ({0: batch}, {0: batch}, tuple(past_shapes)))  # *past is one argument to torch.export
    return no_past, with_past


# ----------------------------------------------------------------------------------------------- merging


def _subgraph_names(graph) -> set:
    """Every value a graph's nodes produce (outputs of nodes, recursively into nested subgraphs)."""
    names = set()
    for node in graph.node:
        names.update(name for name in node.output if name)
        for attribute in node.attribute:
            subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
            for subgraph in subgraphs:
                names |= _subgraph_names(subgraph)
    return names


def _rename(graph, mapping: Dict[str, str], node_prefix: str) -> None:
    """Rename values in `graph` (nodes, outputs, value_info; recursively into subgraphs) by `mapping`."""
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
        if node.name:
            node.name = node_prefix + node.name
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _rename(attribute.g, mapping, node_prefix)
            for subgraph in attribute.graphs:
                _rename(subgraph, mapping, node_prefix)
    for value in list(graph.output) + list(graph.value_info):
        value.name = mapping.get(value.name, value.name)


def _shared_initializers(models) -> Dict[str, object]:
    """Move every initializer of the given models' graphs into one table named by content (identical weights
    of the two decoder graphs become one tensor); returns {name: TensorProto} and rewrites the references."""
    table = {}
    for model in models:
        graph = model.graph
        mapping = {}
        for tensor in graph.initializer:
            copy = type(tensor)()
            copy.CopyFrom(tensor)
            copy.name = ""
            name = "shared." + hashlib.sha1(copy.SerializeToString(deterministic=True)).hexdigest()[:16]
            mapping[tensor.name] = name
            copy.name = name
            table.setdefault(name, copy)
        _rename(graph, mapping, "")
        del graph.initializer[:]
    return table


def merge_decoders(no_past, with_past, layers: int):
    """One decoder graph: `If(use_cache_branch)` chooses the with-past graph or the no-past graph.

    Both branches read the outer graph's inputs by name and the shared weights. The with-past branch returns
    empty `present.*.encoder.*` tensors ([B, H, 0, hd]): the cross-attention keys/values never change after the
    first step, and transformers.js (like optimum) keeps the first step's. Passing them through instead cost a
    copy of every layer's keys and values per step (on tiny.en q8, 3.2 of 15 ms per step).
    """
    import onnx
    from onnx import TensorProto, helper

    branches = {"no_past": no_past, "with_past": with_past}
    initializers = _shared_initializers(branches.values())
    graph_inputs = {}
    for prefix, model in branches.items():
        graph = model.graph
        for value in graph.input:
            graph_inputs.setdefault(value.name, value)
        produced = _subgraph_names(graph) | {value.name for value in graph.output}
        _rename(graph, {name: f"{prefix}/{name}" for name in produced}, f"{prefix}/")

    outputs = ["logits"] + past_names(layers, "present")
    with_past_graph = with_past.graph
    nothing, sequence_axis = "with_past/zero", "with_past/sequence_axis"
    with_past_graph.node.extend([
        helper.make_node("Constant", [], [nothing], value=helper.make_tensor(nothing, TensorProto.INT64, [1], [0])),
        helper.make_node("Constant", [], [sequence_axis],
                         value=helper.make_tensor(sequence_axis, TensorProto.INT64, [1], [2]))])
    produced = {value.name.split("/", 1)[1]: value for value in with_past_graph.output}
    ordered = []
    for name in outputs:
        if name in produced:
            ordered.append(produced[name])
        else:  # a cross-attention key/value: an empty [B, H, 0, hd] slice of the past one, not a copy of it
            source = name.replace("present", "past_key_values")
            target = f"with_past/{name}"
            with_past_graph.node.append(helper.make_node("Slice", [source, nothing, nothing, sequence_axis],
                                                         [target], name=f"with_past/{name}"))
            value = onnx.ValueInfoProto()
            value.CopyFrom(graph_inputs[source])
            value.name = target
            value.type.tensor_type.shape.dim[2].dim_param = "encoder_sequence_length_out"  # 0 here, T without past
            ordered.append(value)
    del with_past_graph.output[:]
    with_past_graph.output.extend(ordered)
    no_past_outputs = {value.name.split("/", 1)[1]: value for value in no_past.graph.output}
    reordered = [no_past_outputs[name] for name in outputs]
    del no_past.graph.output[:]
    no_past.graph.output.extend(reordered)
    for graph in (with_past_graph, no_past.graph):
        del graph.input[:]
        del graph.value_info[:]  # optional shape hints, stale after an fp16 conversion; ONNX Runtime infers them
        graph.name = graph.name or "branch"

    use_cache = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    order = ["input_ids", "encoder_hidden_states"] + past_names(layers)
    inputs = [graph_inputs[name] for name in order] + [use_cache]
    merged_outputs = []
    for name, value in zip(outputs, no_past.graph.output):
        element = value.type.tensor_type.elem_type
        shape = ["batch_size", "decoder_sequence_length", value.type.tensor_type.shape.dim[2].dim_value] \
            if name == "logits" else ["batch_size", value.type.tensor_type.shape.dim[1].dim_value,
                                      f"{name.split('.', 2)[2].split('.')[0]}_sequence_length_out",
                                      value.type.tensor_type.shape.dim[3].dim_value]
        merged_outputs.append(helper.make_tensor_value_info(name, element, shape))
    node = helper.make_node("If", ["use_cache_branch"], outputs, name="optimum::if",
                            then_branch=with_past_graph, else_branch=no_past.graph)
    graph = helper.make_graph([node], "decoder_model_merged", inputs, merged_outputs,
                              initializer=list(initializers.values()))
    opsets = {}
    for model in branches.values():
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)
                                                     for domain, version in opsets.items()],
                               producer_name="lite-whisper")
    merged.ir_version = max(model.ir_version for model in branches.values())
    functions = {(function.domain, function.name): function for model in branches.values()
                 for function in model.functions}
    merged.functions.extend(functions.values())
    return merged


# ----------------------------------------------------------------------------------------------- variants


def quantize_q8(source: Path, target: Path, float_widths: Sequence[int] = (),
                logit_scales: Optional[np.ndarray] = None) -> None:
    """int8 dynamic quantisation of the MatMul/Gemm weights (per output column; activations per tensor at run time),
    except the MatMuls `float_matmuls` names, which stay float32. For a decoder, `logit_scales` smooths the logits
    projection's input first (see `smooth_logits`)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = fold_weight_transposes(onnx.load(str(source)))
    if logit_scales is not None:
        smooth_logits(model, logit_scales)
    keep_float = float_matmuls(model, float_widths)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises pre-processing on every call (shape inference we do not need)
    try:
        quantize_dynamic(model, str(target), weight_type=QuantType.QInt8, per_channel=PER_CHANNEL,
                         op_types_to_quantize=OP_TYPES_Q8, nodes_to_exclude=keep_float)
    finally:
        root.setLevel(level)


def fold_weight_transposes(model):
    """Replace each Transpose of a weight by the transposed weight, so that the MatMul reading it sees an initializer
    that the quantizer can quantise. The decoder's logits are `hidden @ embed_tokens.weight.T` (the projection is
    tied to the embedding): without this the largest matrix of the decoder stayed float32, and reading its
    vocab x d floats was the largest cost of a decoder step (tiny.en q8: 3.7 of 15.2 ms). The embedding lookup keeps
    the untransposed weight."""
    from onnx import numpy_helper

    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    renamed, kept = {}, []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in weights and len(weights[node.input[0]].dims) == 2:
            array = numpy_helper.to_array(weights[node.input[0]]).T
            name = f"{node.input[0]}.T"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            renamed[node.output[0]] = name
        else:
            kept.append(node)
    for node in kept:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def logit_input_scales(model, features: torch.Tensor) -> np.ndarray:
    """Per-channel scales [d] that balance the logits projection's int8 rounding between its input and its weight
    (SmoothQuant, alpha 0.5): sqrt(max |h_j| / max_k |W_kj|), with h the decoder's final hidden states over a greedy
    transcript of `features` (the check clip) and W the projection [vocab, d]."""
    from .evaluation import generation_kwargs

    decoder = model.get_decoder()
    largest = []
    hook = decoder.layer_norm.register_forward_hook(
        lambda module, args, output: largest.append(output.detach().abs().flatten(0, -2).amax(0)))
    try:
        with torch.inference_mode():
            model.generate(features, **generation_kwargs(model, "en"))
    finally:
        hook.remove()
    activations = torch.stack(largest).amax(0).double()
    weights = model.proj_out.weight.detach().abs().amax(0).double()
    return torch.sqrt(activations.clamp_min(1e-5) / weights.clamp_min(1e-5)).numpy()


def smooth_logits(model, scales: np.ndarray) -> None:
    """Divide the logits projection's input channels by `scales` and multiply its weight's rows by them: the same
    logits in exact arithmetic. The input is the final layer norm's output, so its scale and bias absorb the division.

    Why: dynamic quantisation gives the projection's input one int8 scale per token, and a few channels of Whisper's
    final hidden state are 4-5 times larger than the median channel (tiny.en: 140 against 31), so the rest keep few
    levels. Simulated on tiny.en's greedy decoding of 8 calibration clips (400 tokens), the largest logit error falls
    from 0.045 to 0.013 of the largest logit (median per token) with these scales."""
    from onnx import numpy_helper

    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    for node in graph.node:
        norm = producers.get(node.input[0])
        if node.op_type != "MatMul" or not node.input[1].endswith(".T") or node.input[1] not in weights \
                or norm is None or norm.op_type != "LayerNormalization":
            continue
        weight = weights[node.input[1]]
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * scales[:, None].astype(np.float32),
                                                weight.name))
        for index in (1, 2):  # the layer norm's scale and bias, as copies of their own
            name = norm.input[index]
            smoothed = numpy_helper.to_array(weights[name]) / scales.astype(np.float32)
            norm.input[index] = f"{name}.smoothed"
            graph.initializer.append(numpy_helper.from_array(smoothed.astype(np.float32), norm.input[index]))
        return
    raise OnnxExportError("no logits projection after a layer norm found in the decoder graph to smooth")


def float_matmuls(model, float_widths: Sequence[int] = ()) -> List[str]:
    """Names of the MatMuls whose activations one per-tensor int8 scale (dynamic quantisation) cannot carry: those
    whose weight's input dimension is in `float_widths`. The exporter passes the encoder's ffn_dim, so fc2 (dense,
    or its first factor) stays float: its input is GELU's output, a few large values among many near zero.
    Measured on stock tiny.en (librispeech-test-other-60, 16 clips for the error): the q8 encoder's relative
    error 0.069 with fc2 quantised, 0.034 without; greedy WER with the q8 decoder 16.19 % and 14.86 % (fp32
    15.04 %). Neither the attention projections, fc1, out_proj nor a whole first or last layer mattered as much
    (0.062-0.067 each). The low-rank slots' second factors are quantised once their inputs are balanced
    (`balance_low_rank_factors`).
    """
    initializers = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        weights = [initializers[name] for name in node.input[1:] if name in initializers]
        if node.op_type == "MatMul" and weights and len(weights[0]) == 2 and weights[0][0] in float_widths:
            names.append(node.name)
    return names


def make_variant(dtype: str, source: Path, target: Path, float_widths: Sequence[int] = (),
                 logit_scales: Optional[np.ndarray] = None) -> None:
    if dtype == "q8":
        quantize_q8(source, target, float_widths, logit_scales)
    else:
        convert_fp16(source, target)


def convert_fp16(source: Path, target: Path) -> None:
    """Weights and compute in float16; the graph's inputs and outputs stay float32. Constants beyond float16's range
    are clipped to +-10000: the decoder's causal mask (float32's lowest value) then still gives exp(-10000) = 0."""
    import warnings

    import onnx
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the float32 number .* will be truncated to")
        model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True,
                                                 disable_shape_infer=True)
    onnx.save(model, str(target))


# ----------------------------------------------------------------------------------------------- checks


def session(path: Path, threads: Optional[int] = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def empty_past(decoder_session, batch: int) -> Dict[str, np.ndarray]:
    """Zero-length past key/values for the first step, shaped from the graph's input metadata (as transformers.js
    does: batch_size resolved, every other named dimension 0)."""
    feeds = {}
    for value in decoder_session.get_inputs():
        if value.name.startswith("past_key_values."):
            shape = [dim if isinstance(dim, int) else (batch if dim == "batch_size" else 0) for dim in value.shape]
            feeds[value.name] = np.zeros(shape, dtype=np.float32)
    return feeds


def next_past(outputs: Dict[str, np.ndarray], past: Optional[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The past key/values for the next decoder step from a step's outputs: the new self-attention ones, and the
    cross-attention ones of the first step (the with-past branch returns those empty), as transformers.js keeps them."""
    new = {name.replace("present", "past_key_values"): value for name, value in outputs.items()
           if name.startswith("present.")}
    if past is not None:
        new.update({name: value for name, value in past.items() if ".encoder." in name})
    return new


def relative_error(reference: np.ndarray, value: np.ndarray, measure: str = "max") -> float:
    """"max": the largest absolute difference over the largest absolute reference value; "rms": the RMS of the
    difference over the RMS of the reference."""
    reference = reference.astype(np.float64)
    difference = reference - value
    if measure == "rms":
        return float(np.sqrt(np.mean(difference ** 2)) / max(float(np.sqrt(np.mean(reference ** 2))), 1e-12))
    return float(np.max(np.abs(difference)) / max(float(np.max(np.abs(reference))), 1e-12))


def check_variant(model, features: torch.Tensor, prompt: List[int], folder: Path, dtype: str, steps: int = 3) -> dict:
    """Relative errors (as CHECKS measures them for `dtype`) of one variant's encoder output and decoder logits (no past, then
    `steps` with past) against PyTorch, on the given features and prompt; the PyTorch side follows its own greedy
    tokens."""
    encoder = session(folder / file_name(ENCODER, dtype))
    decoder = session(folder / file_name(DECODER, dtype))
    with torch.inference_mode():
        reference_states = model.get_encoder()(features).last_hidden_state
    states = encoder.run(["last_hidden_state"], {"input_features": features.numpy()})[0]
    errors = {"encoder": relative_error(reference_states.numpy(), states, CHECKS[dtype]["encoder"][0])}

    tokens = torch.tensor([prompt], dtype=torch.long)
    names = [value.name for value in decoder.get_outputs()]
    feeds = {"input_ids": tokens.numpy(), "encoder_hidden_states": reference_states.numpy(),
             "use_cache_branch": np.array([False]), **empty_past(decoder, 1)}
    decoder_errors, past = [], None
    for step in range(steps + 1):
        with torch.inference_mode():
            reference = model(encoder_outputs=(reference_states,), decoder_input_ids=tokens).logits[:, -1]
        outputs = dict(zip(names, decoder.run(names, feeds)))
        decoder_errors.append(relative_error(reference.numpy(), outputs["logits"][:, -1], CHECKS[dtype]["decoder"][0]))
        next_token = reference.argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, next_token], dim=1)
        past = next_past(outputs, past)
        feeds = {"input_ids": next_token.numpy(), "encoder_hidden_states": reference_states.numpy(),
                 "use_cache_branch": np.array([True]), **past}
    errors["decoder"] = max(decoder_errors)
    return errors


def decoder_prompt(model) -> List[int]:
    """<|startoftranscript|> [<|en|> <|transcribe|>] <|notimestamps|>, as `generate` starts an English greedy decode."""
    generation = model.generation_config
    prompt = [model.config.decoder_start_token_id]
    if getattr(generation, "is_multilingual", False) and getattr(generation, "lang_to_id", None):
        prompt += [generation.lang_to_id["<|en|>"], generation.task_to_id["transcribe"]]
    if getattr(generation, "no_timestamps_token_id", None) is not None:
        prompt.append(generation.no_timestamps_token_id)
    return prompt


# ----------------------------------------------------------------------------------------------- the command


def _check_clip(check_audio) -> Path:
    path = Path(check_audio) if check_audio else DEFAULT_CHECK_AUDIO
    if not path.is_file():
        raise OnnxExportError(
            f"the numerical check needs a real speech clip: {path} not found; pass --check-audio FILE (any speech)"
        )
    return path


def export_onnx(model_path, out_dir=None, dtypes: Sequence[str] = DEFAULT_DTYPES, check_audio=None,
                log=print) -> ExportReport:
    """Write `onnx/` with the encoder, the merged decoder and their `dtypes` variants into `out_dir` (default: the
    model's own folder), after checking every variant against PyTorch on `check_audio` (a speech file)."""
    import onnx

    from .audio import SAMPLING_RATE, load_audio

    unknown = [dtype for dtype in dtypes if dtype not in SUFFIXES]
    if unknown or not dtypes:
        raise OnnxExportError(f"unknown dtype(s) {', '.join(unknown) or '(none given)'}; choose from "
                              f"{', '.join(SUFFIXES)}")
    if "fp32" not in dtypes:
        dtypes = ["fp32", *dtypes]  # the other variants are made from it
    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise OnnxExportError(f"{model_path}: not a local model folder (no config.json)")
    out_dir = Path(out_dir) if out_dir else model_path
    clip = _check_clip(check_audio)

    model, processor = _load_for_export(model_path)
    audio = load_audio(clip)
    features = processor.feature_extractor(audio, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ONNX_FOLDER}.partial-", dir=out_dir))
    report = ExportReport(folder=out_dir / ONNX_FOLDER, check_audio=str(clip))
    try:
        balance_low_rank_factors(model, features)  # before any export, so that every file and check agree
        log("exporting the encoder (torch.onnx, dynamo)")
        onnx.save(export_encoder(model, features), str(staging / file_name(ENCODER, "fp32")))
        log("exporting the decoder without and with past key/values")
        with torch.inference_mode():
            states = model.get_encoder()(features).last_hidden_state
        config = model.config
        parts = dict(zip(("no_past", "with_past"), export_decoders(model, states)))
        for name, part in parts.items():
            onnx.save(part, str(staging / f"{name}.part"))
        logit_scales = logit_input_scales(model, features) if "q8" in dtypes else None
        for dtype in dtypes:  # variants of the two decoder graphs are made apart, then merged
            log(f"writing the {dtype} files")
            if dtype != "fp32":
                make_variant(dtype, staging / file_name(ENCODER, "fp32"), staging / file_name(ENCODER, dtype),
                             float_widths=(config.encoder_ffn_dim,))
                for name in parts:
                    make_variant(dtype, staging / f"{name}.part", staging / f"{name}.{dtype}.part",
                                 logit_scales=logit_scales)
            suffix = "" if dtype == "fp32" else f".{dtype}"
            merged = merge_decoders(onnx.load(str(staging / f"no_past{suffix}.part")),
                                    onnx.load(str(staging / f"with_past{suffix}.part")), model.config.decoder_layers)
            onnx.checker.check_model(merged)
            onnx.save(merged, str(staging / file_name(DECODER, dtype)))
        prompt = decoder_prompt(model)
        for dtype in dtypes:
            errors = check_variant(model, features, prompt, staging, dtype)
            report.errors[dtype] = errors
            log(f"check {dtype} on {clip.name}: " + ", ".join(
                f"{part} {errors[part]:.2e} ({ERROR_NAMES[measure]}, tolerance {tolerance:g})"
                for part, (measure, tolerance) in CHECKS[dtype].items()))
            for part, error in errors.items():
                measure, tolerance = CHECKS[dtype][part]
                if not error <= tolerance:
                    raise OnnxMismatchError(
                        f"{file_name(ENCODER if part == 'encoder' else DECODER, dtype)}: its {part} output differs "
                        f"from PyTorch by {error:.3g} ({ERROR_NAMES[measure]}), above the {dtype} tolerance "
                        f"{tolerance:g}; the export is wrong, nothing was written"
                    )
        for name in sorted(os.listdir(staging)):
            if name.endswith(".onnx"):
                report.files[f"{ONNX_FOLDER}/{name}"] = (staging / name).stat().st_size
        _move_into_place(staging, out_dir / ONNX_FOLDER)
        if out_dir.resolve() != model_path.resolve():  # the rest of the repo: weights, code, config, tokenizer...
            for source in model_path.iterdir():
                if source.is_file() and not source.name.startswith("."):
                    shutil.copyfile(source, out_dir / source.name)
        if not (out_dir / "preprocessor_config.json").is_file():  # transformers.js reads the feature extractor here
            processor.feature_extractor.save_pretrained(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _move_into_place(staging: Path, target: Path) -> None:
    """Move the staging folder's finished .onnx files into `target` (created when absent), replacing same-named
    ones; the intermediate decoder graphs stay behind and are deleted with the staging folder."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(staging.glob("*.onnx")):
        os.replace(source, target / source.name)
