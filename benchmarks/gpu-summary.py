#!/usr/bin/env python3
"""The figures the issues ask for, from gpu-run.sh's bench.jsonl: one line per tagged bench.

    python3 benchmarks/gpu-summary.py bench-out/bench.jsonl

gpu-device.sh prints this last, so the call's output already holds the answer even if its files
do not come back. Standard library only (the GPU machine's python3 has nothing of ours).
"""
import json
import sys


def fmt_matvec(m):
    shapes = ", ".join(f"[{s['n']},{s['k']}] {s['us']:.1f} µs {s['gb_per_s']:.0f} GB/s ({100 * s['share_of_copy']:.0f} %)" for s in m["shapes"])
    return f"matvec {m['preset']} vs copy {m['copy_gb_per_s']:.0f} GB/s: {shapes}"


def fmt_chat(b):
    c = b["chat"]
    out = [
        f"prefill {c['prompt_tokens']} tokens {c['prefill_tokens_per_s']:.0f} tokens/s",
        f"decode {c['decode_tokens_per_s']:.1f} tokens/s",
        f"{c['dispatches_per_token']:.0f} dispatches/token ({c['dispatches_per_layer']:.1f}/layer)",
    ]
    if "steps_sent_ahead" in c:
        out.append(f"{c['steps_sent_ahead']} steps sent ahead, {c['steps_redone']} redone" if c["pipelined"] else "not pipelined")
    if "decode_by_context" in b:
        out.append("by context: " + ", ".join(f"{r['context']}: {r['decode_tokens_per_s']:.1f}" for r in b["decode_by_context"]))
    if "decode_split_ms" in b:
        d = b["decode_split_ms"]
        out.append(f"per token {d['wall']:.2f} ms = GPU {d['gpu_kernels']:.2f} + host/gaps {d['host_and_gaps']:.2f}")
    if "image_question" in b:
        out.append(f"image question first token {b['image_question']['time_to_first_token_s']:.3f} s")
    return "; ".join(out)


def fmt_generation(g):
    out = [f"flow step {g['step_s']:.3f} s", f"VAE {g['vae_s']:.3f} s", f"{g['steps']} steps + VAE {g['total_s']:.2f} s", f"{g['dispatches_per_step']:.0f} dispatches/step"]
    gemms = g.get("step_gemms") or []
    if gemms:
        out.append("step GEMMs " + ", ".join(f"{x['name']} {x['tflop_per_s']:.1f}" for x in gemms) + " TFLOP/s")
    out.append(f"attention {g['attention_ms_per_step']:.1f} ms/step")
    return "; ".join(out)


def fmt_attention(rows):
    parts = []
    for r in rows if isinstance(rows, list) else []:
        times = ", ".join(f"{k} {v['ms']:.3f} ms" + (f" {v['kv_gb_per_s']:.0f} GB/s" if "kv_gb_per_s" in v else "") for k, v in r["kernels"].items())
        parts.append(f"{r['what']}: {times}")
    return "attention " + " | ".join(parts)


def main(path):
    for line in open(path):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        b, parts = r["bench"], []
        if b.get("subgroup_check", {}).get("probes"):
            c = b["subgroup_check"]
            worst = max(c["probes"], key=lambda p: float("inf") if p["diff"] is None else p["diff"])
            verdict = "passed" if c["passed"] else "FAILED, subgroups off"
            parts.append(f"subgroup self-check at {c['width']} lanes {verdict} ({len(c['probes'])} kernels, worst {worst['kernel']} {worst['diff']})")
        if b.get("shape_check", {}).get("probes"):
            c = b["shape_check"]
            worst = max(c["probes"], key=lambda p: float("inf") if p["diff"] is None else p["diff"])
            verdict = "passed" if c["passed"] else "FAILED, CPU shapes taken"
            parts.append(f"GPU-shape self-check {verdict} ({len(c['probes'])} kernels, worst {worst['kernel']} {worst['diff']})")
        if "matmul_f32_512x2048x2048_ms" in b:
            parts.append(f"matmul f32 512x2048x2048 {b['matmul_f32_512x2048x2048_ms']:.2f} ms")
        if "matvec" in b:
            parts.append(fmt_matvec(b["matvec"]))
        if "chat" in b:
            parts.append(fmt_chat(b))
        if "generation" in b:
            parts.append(fmt_generation(b["generation"]))
        if "fast_fidelity" in b:
            f = b["fast_fidelity"]
            parts.append(f"fast vs f32: latent cosine {f['latent_cosine']:.6f}, PSNR {f['psnr_db']}")
        if "attention" in b:
            parts.append(fmt_attention(b["attention"]))
        print(f"{r['tag']}: " + " || ".join(parts))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out/bench.jsonl")
