#!/usr/bin/env python3
"""PyTorch check of the trained fixture's reference: Hugging Face `transformers`' own
LlamaForCausalLM, in float64 on CPU, against the float64 numpy forward that
`make_trained_fixture.py` writes as `ref_logits.npy` (and that tests/trained.rs holds the engine's
f32 logits to, within 1e-4).

`./build.sh test` runs it after `make_trained_fixture.py` when `target/torch-venv` exists, a venv
with PyTorch and transformers that `.ci/run` sets up from Debian 12's packaged torch:

    apt-get install python3-torch python3-venv
    /usr/bin/python3 -m venv --system-site-packages target/torch-venv
    target/torch-venv/bin/pip install transformers==4.38.2
    target/torch-venv/bin/python tests/reference/check_trained_torch.py [FIXTURE_DIR]

It loads `FIXTURE_DIR/f32/lm.safetensors` (the language model in the JanusFlow layout: each name
is `language_model.` + the Hugging Face Llama name) into a LlamaForCausalLM built from the
fixture's `language_config`, computes logits for `ref_ids.json`, prints the largest relative
difference from `ref_logits.npy` and fails above 1e-5 (the numpy file is float32).
"""

import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

out = sys.argv[1] if len(sys.argv) > 1 else "target/trained-fixture"
cfg = json.load(open(os.path.join(out, "config.json")))["language_config"]
ids = json.load(open(os.path.join(out, "ref_ids.json")))
want = np.load(os.path.join(out, "ref_logits.npy"))

lc = transformers.LlamaConfig(
    hidden_size=cfg["hidden_size"],
    intermediate_size=cfg["intermediate_size"],
    num_hidden_layers=cfg["num_hidden_layers"],
    num_attention_heads=cfg["num_attention_heads"],
    num_key_value_heads=cfg["num_key_value_heads"],
    rms_norm_eps=cfg["rms_norm_eps"],
    rope_theta=cfg["rope_theta"],
    vocab_size=cfg["vocab_size"],
    max_position_embeddings=cfg["max_position_embeddings"],
    tie_word_embeddings=False,
    attention_bias=False,
)
torch.set_num_threads(1)
model = transformers.LlamaForCausalLM(lc).to(torch.float64).eval()
raw = load_file(os.path.join(out, "f32", "lm.safetensors"))
state = {k[len("language_model."):]: torch.from_numpy(v.astype(np.float64)) for k, v in raw.items() if k.startswith("language_model.")}
missing, unexpected = model.load_state_dict(state, strict=False)
missing = [m for m in missing if "rotary_emb" not in m]
if missing or unexpected:
    sys.exit(f"weights do not match the model: missing {missing}, unexpected {unexpected}")
with torch.no_grad():
    got = model(torch.tensor([ids])).logits[0].numpy()
rel = float(np.abs(got - want).max() / np.abs(got).max())
top = float((got.argmax(-1) == want.argmax(-1)).mean())
print(f"transformers {transformers.__version__} / torch {torch.__version__}, float64, {len(ids)} positions: "
      f"max |Δ| / max |logit| = {rel:.2e} against ref_logits.npy; argmax equal at {top:.0%}")
if rel > 1e-5:
    sys.exit("the numpy reference disagrees with transformers' Llama")
