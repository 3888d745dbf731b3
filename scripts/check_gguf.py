#!/usr/bin/env python3
"""Validate a GGUF file written by `hearth model synth` with the reference `gguf` package reader.

Usage: check_gguf.py FILE QUANT

Checks the header parses, architecture keys and tokenizer metadata are present and consistent,
every tensor is one llama.cpp knows for the file's architecture (gguf-py's MODEL_TENSORS, which
mirror llama-arch.cpp), every tensor's declared type/shape matches its data size, and matrices
carry the requested type.
"""
import re
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType, MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES

# The tensors every block of each architecture must have (Phi-3's q/k/v and gate/up are fused).
BLOCK_TENSORS = {
    "llama": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"),
    "qwen2": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"),
    "qwen3": ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"),
    "phi3": ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"),
}


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        raise SystemExit(f"missing metadata key {key}")
    return f


def scalar(reader, key):
    f = field(reader, key)
    return f.parts[f.data[0]][0]


def string(reader, key):
    f = field(reader, key)
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def main():
    path, quant = sys.argv[1], sys.argv[2].upper()
    reader = GGUFReader(path)
    arch = string(reader, "general.architecture")
    assert arch in BLOCK_TENSORS, arch
    n_layers = int(scalar(reader, f"{arch}.block_count"))
    hidden = int(scalar(reader, f"{arch}.embedding_length"))
    vocab = int(scalar(reader, f"{arch}.vocab_size"))
    assert string(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens.data) == vocab, (len(tokens.data), vocab)
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(types.data) == vocab
    bos = int(scalar(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(scalar(reader, "tokenizer.ggml.eos_token_id"))
    assert 0 <= bos < vocab and 0 <= eos < vocab
    assert len(field(reader, "tokenizer.ggml.merges").data) >= 0
    field(reader, "tokenizer.chat_template")

    names = {t.name for t in reader.tensors}
    for i in range(n_layers):
        for suffix in BLOCK_TENSORS[arch]:
            assert f"blk.{i}.{suffix}.weight" in names, f"blk.{i}.{suffix}.weight missing"
    assert "token_embd.weight" in names and "output_norm.weight" in names
    arch_id = next(a for a, n in MODEL_ARCH_NAMES.items() if n == arch)
    known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[arch_id]}
    for name in names:
        base = re.sub(r"^blk\.\d+\.", "blk.{bid}.", name.rsplit(".", 1)[0])
        assert base in known, f"{name}: not a {arch} tensor for llama.cpp"

    want = GGMLQuantizationType[quant.replace("Q4_K", "Q4_K")]
    seen = set()
    for t in reader.tensors:
        seen.add(t.tensor_type.name)
        assert t.n_bytes == len(t.data.tobytes()), t.name
        if len(t.shape) == 1:
            assert t.tensor_type == GGMLQuantizationType.F32, (t.name, t.tensor_type)
        if t.name == "blk.0.ffn_up.weight":
            assert t.tensor_type == want, (t.name, t.tensor_type, want)
            assert [int(x) for x in t.shape] [0] == hidden
        if t.tensor_type == GGMLQuantizationType.F32:
            assert np.isfinite(t.data).all(), t.name
    print(f"{path}: OK ({arch}, {n_layers} blocks, {len(reader.tensors)} tensors, types {sorted(seen)})")


if __name__ == "__main__":
    main()
