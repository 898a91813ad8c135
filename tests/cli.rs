//! The command line under bad input, as a careless or hostile user would try it: every case must
//! end with a non-zero exit and a clear message naming the problem, never a panic, an abort or a
//! silent wrong result (each case here once did one of those).

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_janusflow"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// Runs the CLI and checks it fails cleanly with a message containing `expect`.
fn refuses(args: &[&str], expect: &str) {
    let out = bin().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: janusflow {}\nstdout: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
    // 1: the engine refused; 2: clap refused the arguments. Anything else is a crash.
    assert!(matches!(out.status.code(), Some(1 | 2)), "janusflow {}: not a clean exit (a crash?)\n{stderr}", args.join(" "));
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "janusflow {} crashed:\n{stderr}", args.join(" "));
    assert!(stderr.to_lowercase().contains(&expect.to_lowercase()), "janusflow {}: expected '{expect}' in\n{stderr}", args.join(" "));
}

/// Runs the CLI, which must succeed; returns its standard output.
fn succeeds(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "janusflow {}\n{stdout}\n{stderr}", args.join(" "));
    stdout.into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A copy of the tiny checkpoint with `edit` applied to its config.json.
fn tiny_with_config(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let dir = tempdir(name);
    copy_dir(&fixture("tiny"), &dir);
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_configs_are_refused_before_allocating() {
    let big_layers = tiny_with_config("cli-layers", |v| v["language_config"]["num_hidden_layers"] = 1_000_000_000.into());
    refuses(&["chat", "--model", s(&big_layers), "--prompt", "hi"], "num_hidden_layers");
    refuses(&["convert", "--model", s(&big_layers), "--out", s(&big_layers.join("pack"))], "num_hidden_layers");
    let select = tiny_with_config("cli-select", |v| v["vision_und_enc_config"]["params"]["select_layer"] = 1_000_000_000.into());
    refuses(&["chat", "--model", s(&select), "--prompt", "hi"], "select_layer");
    let wide = tiny_with_config("cli-wide", |v| v["language_config"]["intermediate_size"] = 262144.into());
    refuses(&["chat", "--model", s(&wide), "--prompt", "hi"], "intermediate_size");
    let vocab = tiny_with_config("cli-vocab", |v| v["language_config"]["vocab_size"] = serde_json::json!(1e15));
    refuses(&["chat", "--model", s(&vocab), "--prompt", "hi"], "vocab_size");
    let vae = tempdir("cli-vae");
    copy_dir(&fixture("tiny/vae"), &vae);
    let vcfg = vae.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&vcfg).unwrap()).unwrap();
    v["norm_num_groups"] = 0.into();
    std::fs::write(&vcfg, serde_json::to_vec(&v).unwrap()).unwrap();
    refuses(&["convert", "--model", s(&fixture("tiny")), "--vae", s(&vae), "--out", s(&vae.join("pack"))], "norm_num_groups");
}

#[test]
fn bad_packs_are_refused() {
    let dir = tempdir("cli-pack");
    let pack = dir.join("pack");
    succeeds(&["convert", "--model", s(&fixture("tiny")), "--out", s(&pack), "--shard-size", "262144"]);
    refuses(&["convert", "--model", s(&fixture("tiny")), "--out", s(&dir.join("p4")), "--shard-size", "4"], "shard size");
    let text = std::fs::read(pack.join("manifest.json")).unwrap();
    let edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let d = dir.join(name);
        copy_dir(&pack, &d);
        let mut v: serde_json::Value = serde_json::from_slice(&text).unwrap();
        f(&mut v);
        std::fs::write(d.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();
        d
    };
    let huge = edit("huge", &|v| v["tensors"][0]["length"] = serde_json::json!(1u64 << 63));
    refuses(&["chat", "--model", s(&huge), "--prompt", "hi"], "length");
    let big = edit("big", &|v| v["tensors"][0]["length"] = serde_json::json!(1e15));
    refuses(&["chat", "--model", s(&big), "--prompt", "hi"], "manifest.json");
    let empty = edit("empty", &|v| v["shards"] = serde_json::json!([]));
    refuses(&["chat", "--model", s(&empty), "--prompt", "hi"], "no shards");
    let path = edit("path", &|v| {
        v["shards"][0]["file"] = "../../../../etc/passwd".into();
    });
    refuses(&["chat", "--model", s(&path), "--prompt", "hi"], "bad shard name");

    // A sharded checkpoint whose index points outside its folder is never opened.
    let idx = dir.join("index");
    copy_dir(&fixture("tiny"), &idx);
    std::fs::rename(idx.join("model.safetensors"), idx.join("model-00001-of-00001.safetensors")).unwrap();
    let map = serde_json::json!({"weight_map": {"beg_of_und_embed": "../../../../../../etc/passwd"}});
    std::fs::write(idx.join("model.safetensors.index.json"), serde_json::to_vec(&map).unwrap()).unwrap();
    refuses(&["chat", "--model", s(&idx), "--prompt", "hi"], "not a plain file name");
}

/// The tiny checkpoint with a NaN in `lm_head` (its dtype is bf16).
fn tiny_with_nan(name: &str) -> PathBuf {
    let dir = tempdir(name);
    copy_dir(&fixture("tiny"), &dir);
    let path = dir.join("model.safetensors");
    let mut b = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let t = &h["language_model.lm_head.weight"];
    assert_eq!(t["dtype"], "BF16");
    let at = 8 + n + t["data_offsets"][0].as_u64().unwrap() as usize + 2 * 77;
    b[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    std::fs::write(&path, b).unwrap();
    dir
}

#[test]
fn damaged_weights_are_named() {
    let nan = tiny_with_nan("cli-nan");
    refuses(&["chat", "--model", s(&nan), "--prompt", "hi", "--max-tokens", "2"], "language_model.lm_head.weight");
    refuses(&["convert", "--model", s(&nan), "--out", s(&nan.join("pack"))], "language_model.lm_head.weight");
    // f16 packs are checked as they load, not only at conversion.
    let pack = tempdir("cli-nan-pack");
    succeeds(&["convert", "--model", s(&fixture("tiny")), "--out", s(&pack), "--quant", "f16"]);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(pack.join("manifest.json")).unwrap()).unwrap();
    let t = m["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "language_model.lm_head.weight").unwrap().clone();
    let part = &t["parts"][0];
    let shard = pack.join(part["shard"].as_str().unwrap());
    let mut data = std::fs::read(&shard).unwrap();
    let at = part["offset"].as_u64().unwrap() as usize + 10;
    data[at..at + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    // Re-seal the shard under its new hash so only the value check can catch it.
    let sha = janusflow::weights::pack::sha256_hex(&data);
    let text = String::from_utf8(std::fs::read(pack.join("manifest.json")).unwrap()).unwrap();
    let old = part["shard"].as_str().unwrap().trim_end_matches(".bin").to_string();
    std::fs::write(pack.join(format!("{sha}.bin")), &data).unwrap();
    std::fs::write(pack.join("manifest.json"), text.replace(&old, &sha)).unwrap();
    refuses(&["chat", "--model", s(&pack), "--quant", "f16", "--prompt", "hi"], "language_model.lm_head.weight");
}

#[test]
fn bad_requests_are_refused() {
    let tiny = fixture("tiny");
    let m = s(&tiny);
    let chat = |extra: &[&str], expect: &str| {
        let mut a = vec!["chat", "--model", m, "--prompt", "hi"];
        a.extend_from_slice(extra);
        refuses(&a, expect);
    };
    chat(&["--max-tokens", "0"], "at least one token");
    chat(&["--temperature", "nan"], "temperature");
    chat(&["--temperature=-1"], "temperature");
    chat(&["--top-p", "nan"], "top-p");
    chat(&["--top-p", "0"], "top-p");
    let dir = tempdir("cli-req");
    let jpg = std::fs::read(fixture("images/photo_640x480.jpg")).unwrap();
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &jpg[..jpg.len() / 2]).unwrap();
    chat(&["--image", s(&cut)], "truncated");

    let out = dir.join("x.png");
    let gen = |extra: &[&str], expect: &str| {
        let mut a = vec!["generate", "--model", m, "--prompt", "a fox", "--steps", "1", "--out", s(&out)];
        a.extend_from_slice(extra);
        refuses(&a, expect);
        assert!(!out.exists(), "a picture was written for a refused request");
    };
    gen(&["--count", "0"], "count");
    gen(&["--cfg", "1e30"], "guidance");
    gen(&["--cfg", "nan"], "guidance");
    gen(&["--steps", "0"], "steps");
    // The right number of values in the wrong layout, and non-finite values.
    let noise = |name: &str, shape: &[u64], v: f32| -> PathBuf {
        let p = dir.join(name);
        let n: u64 = shape.iter().product();
        let f = std::fs::File::create(&p).unwrap();
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(shape).writer(std::io::BufWriter::new(f)).begin_nd().unwrap();
        w.extend((0..n).map(|i| if i == 5 { v } else { 0.1 })).unwrap();
        w.finish().unwrap();
        p
    };
    gen(&["--noise", s(&noise("t.npy", &[16, 16, 4], 0.1))], "shape");
    gen(&["--noise", s(&noise("nan.npy", &[4, 16, 16], f32::NAN))], "NaN");
    gen(&["--noise", s(&noise("inf.npy", &[1, 4, 16, 16], f32::INFINITY))], "NaN");
    let bad = dir.join("bad.npy");
    std::fs::write(&bad, b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000,), }").unwrap();
    gen(&["--noise", s(&bad)], "npy");
}

/// `bench` on a model far smaller than the real one, with every part it can time: the benchmark
/// is a user-facing command too (the GPU script runs it at full size). The model is `synth`'s
/// random checkpoint for the tiny config, whose real-size VAE leaves a 32-pixel picture only
/// 2×2 latent tokens; on so few the flow step's attention once read more keys than its input
/// pattern held (a panic).
#[test]
fn bench_times_every_part_of_a_small_model() {
    let dir = tempdir("cli-bench");
    let m = dir.join("model");
    succeeds(&["synth", "--config", s(&fixture("tiny/config.json")), "--out", s(&m), "--seed", "3"]);
    let args = [
        "bench",
        "--model",
        s(&m),
        "--quant",
        "q4",
        "--no-matmul",
        "--prompt-tokens",
        "512",
        "--decode-tokens",
        "4",
        "--contexts",
        "64,512",
        "--image",
        "--generate",
        "--flow-steps",
        "2",
        "--vae-convs",
        "--json",
    ];
    let stdout = succeeds(&args);
    let fig: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(fig["chat"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{fig}");
    assert_eq!(fig["decode_by_context"].as_array().unwrap().len(), 2, "{fig}");
    assert!(fig["image_question"]["time_to_first_token_s"].as_f64().unwrap() > 0.0, "{fig}");
    let g = &fig["generation"];
    assert!(g["step_s"].as_f64().unwrap() > 0.0 && g["vae_s"].as_f64().unwrap() > 0.0, "{fig}");
    assert_eq!(g["step_gemms"].as_array().unwrap().len(), 4, "{fig}");
    assert!(!g["vae_convs"].as_array().unwrap().is_empty(), "{fig}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `info` describes the adapter and what the device self-check finds on its own kernel shapes.
#[test]
fn info_reports_the_adapter_and_the_device_self_check() {
    let out = succeeds(&["info"]);
    let json_end = out.find("\n}").expect("the adapter as JSON first") + 2;
    let adapter: serde_json::Value = serde_json::from_str(&out[..json_end]).unwrap();
    let line = out.lines().find(|l| l.starts_with("device self-check")).unwrap_or_else(|| panic!("no self-check line in\n{out}"));
    if adapter["features"]["subgroup_size"].is_u64() {
        assert!(line.contains("agree with the workgroup tree") && !line.contains("disagree"), "{line}");
    }
}
