#!/usr/bin/python3
"""Makes the TorchScript test inputs of tests/test_torchscript.cpp (committed; no python at test time).

A tiny Llama of ../shared/tools/export_llama.py's module code (the code stories260K was exported
with), random weights (seed 0), config dim 32, hidden 48, 2 layers, 4 heads, 2 KV heads,
vocab 48, max_seq_len 32:
  tiny_llama.traced.pt        torch.jit.trace of the fp32 model (tokens [1, 12] as the example)
  tiny_llama.fp32.onnx        torch.onnx.export of the same model, as export_llama.py does it
  tiny_llama.fp16.scripted.pt torch.jit.script of the model in float16 (CPU cannot trace fp16)
  tiny_llama.fp16.onnx        the fp32 ONNX with every float tensor in float16 (export_llama.to_float16)
  tiny_llama.bf16.traced.pt   torch.jit.trace of the model in bfloat16
  tiny_llama.ref.json         config, tokens, and logits computed by PyTorch in float32:
                              logits_fp32 (the fp32 weights), logits_fp16_weights /
                              logits_bf16_weights (the fp16 / bf16-rounded weights and tables)
and a module with ops kerf does not map:
  unsupported_op.pt           torch.jit.script of UnsupportedOps below (aten::gelu, aten::cumsum)

Needs Debian's python3-torch and python3-onnx. Usage (from the repository root):
  /usr/bin/python3 tests/data/make_torchscript_testdata.py [--shared ../shared]
"""
import argparse, copy, json, os, sys, tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class UnsupportedOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.proj = nn.Linear(8, 8, bias=False)

    def forward(self, tokens):
        h = self.proj(self.embed(tokens))
        h = F.gelu(h)  # aten::gelu: tests/test_torchscript.cpp expects it on line 37
        return torch.cumsum(h, -1)  # aten::cumsum: expected on line 38


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared"))
    ap.add_argument("--out", default=here)
    a = ap.parse_args()
    sys.path.insert(0, os.path.join(a.shared, "tools"))
    import export_llama as E

    torch.manual_seed(0)
    cfg = (32, 48, 2, 4, 2, 48, 32)  # dim, hidden, layers, heads, kv_heads, vocab, max_seq_len
    w = E.random_weights(cfg, 0)
    # Norm weights away from 1 so that a wrong norm weight shows in the logits.
    g = np.random.default_rng(1)
    w["attn_norm"] = (1 + 0.1 * g.standard_normal(w["attn_norm"].shape)).astype(np.float32)
    w["ffn_norm"] = (1 + 0.1 * g.standard_normal(w["ffn_norm"].shape)).astype(np.float32)
    w["final_norm"] = (1 + 0.1 * g.standard_normal(w["final_norm"].shape)).astype(np.float32)
    # Larger weights than export_llama's 0.02 so that the logits are not all near zero.
    for k in ("embed", "wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        w[k] = w[k] * 10
    w["lm_head"] = w["embed"]
    model = E.Llama(cfg, w).eval()
    tokens = [1] + [int(t) for t in np.random.default_rng(2).integers(3, cfg[5], 11)]
    example = torch.tensor([tokens])
    out = lambda name: os.path.join(a.out, name)

    with torch.no_grad():
        ref32 = E.NoCache(model)(example)[0]
        traced = torch.jit.trace(E.NoCache(model), example)
        traced.save(out("tiny_llama.traced.pt"))
        dyn = {"tokens": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
        torch.onnx.export(E.NoCache(model), example, out("tiny_llama.fp32.onnx"), input_names=["tokens"],
                          output_names=["logits"], dynamic_axes=dyn, opset_version=14)
        tmp = tempfile.mkdtemp()
        torch.onnx.export(E.NoCache(model), example, tmp + "/nocache.onnx", input_names=["tokens"],
                          output_names=["logits"], dynamic_axes=dyn, opset_version=17)
        E.to_float16(tmp + "/nocache.onnx", out("tiny_llama.fp16.onnx"))

        half = copy.deepcopy(model).half()
        torch.jit.script(E.NoCache(half)).save(out("tiny_llama.fp16.scripted.pt"))
        bf16 = copy.deepcopy(model).to(torch.bfloat16)
        torch.jit.trace(E.NoCache(bf16), example).save(out("tiny_llama.bf16.traced.pt"))
        # Float32 logits of the rounded weights and tables (what kerf's float32 reference computes).
        ref16 = E.NoCache(copy.deepcopy(half).float())(example)[0]
        refbf = E.NoCache(copy.deepcopy(bf16).float())(example)[0]

        torch.jit.script(UnsupportedOps()).save(out("unsupported_op.pt"))

    json.dump({"config": dict(zip(["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                                   "max_seq_len"], cfg)),
               "tokens": tokens,
               "logits_fp32": ref32.numpy().round(6).tolist(),
               "logits_fp16_weights": ref16.numpy().round(6).tolist(),
               "logits_bf16_weights": refbf.numpy().round(6).tolist()},
              open(out("tiny_llama.ref.json"), "w"))
    for f in sorted(os.listdir(a.out)):
        print("%8d  %s" % (os.path.getsize(os.path.join(a.out, f)), f))


if __name__ == "__main__":
    main()
