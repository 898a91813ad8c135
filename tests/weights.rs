//! Checkpoint loading, the expected tensor table, the web weight pack, and bad-input errors.

mod common;
use common::*;

use janusflow::config::JanusConfig;
use janusflow::engine::{Engine, EngineOptions};
use janusflow::gpu::Gpu;
use janusflow::weights::quant::Quant;
use janusflow::weights::{source, ModelSource};

#[test]
fn real_config_gives_the_spec_tensor_table() {
    let text = std::fs::read_to_string(fixture("janusflow-1.3b-config.json")).unwrap();
    let cfg = JanusConfig::from_json_str(&text).unwrap();
    let t = cfg.expected_tensors();
    assert_eq!(t.len(), 587);
    assert_eq!(t.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>(), 2_046_367_504);
    assert_eq!(t.iter().filter(|(n, _)| n.contains("attn_pool")).count(), 13);
    let llm: usize = t.iter().filter(|(n, _)| n.starts_with("language_model.")).map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(llm, 1_652_656_128);
    assert_eq!(cfg.llm.head_dim, 128);
    assert_eq!(cfg.siglip.tokens(), 576);
}

#[test]
fn tiny_checkpoint_has_exactly_the_expected_tensors() {
    let src = ModelSource::open(&fixture("tiny")).unwrap();
    let cfg = src.config().unwrap();
    let mut want: Vec<String> = cfg.expected_tensors().into_iter().map(|(n, _)| n).collect();
    want.sort();
    assert_eq!(src.hf_files().unwrap().names(), want);
}

fn read_all_weights(e: &Engine) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut ws = vec![&e.llm.embed, &e.llm.lm_head];
    for l in &e.llm.layers {
        ws.extend(l.weights());
    }
    for w in ws {
        for c in &w.chunks {
            out.push(pollster::block_on(e.gpu.read_bytes(&c.buf, 0, c.buf.size())).unwrap());
        }
    }
    out
}

#[test]
fn pack_loads_bit_identical_gpu_tensors() {
    for preset in [Quant::Q4A, Quant::Q4, Quant::F32] {
        let dir = tempdir(&format!("pack-{preset}"));
        let src = ModelSource::open(&fixture("tiny")).unwrap();
        let m = source::convert(&src, preset, &dir, |_, _, _| {}).unwrap();
        assert!(m.shards.iter().all(|s| s.size as usize <= janusflow::weights::pack::MAX_SHARD));
        for s in &m.shards {
            let data = std::fs::read(dir.join(&s.file)).unwrap();
            assert_eq!(janusflow::weights::pack::sha256_hex(&data), s.sha256);
        }
        assert!(m.tensors.iter().all(|t| !t.name.contains("attn_pool")));
        let a = engine_from(&fixture("tiny"), preset, 64);
        let b = engine_from(&dir, preset, 64);
        assert_eq!(read_all_weights(&a), read_all_weights(&b), "{preset}");
        // Every other part too: the pack's encoders, UViT and VAE give identical results.
        assert!(b.vae.is_some(), "the pack carries the VAE");
        let params = janusflow::engine::GenerateParams { steps: 2, seed: 3, ..Default::default() };
        let gen = |e: &Engine| pollster::block_on(e.generate_image("a red fox", &params, |_| true)).unwrap().unwrap();
        let (ia, ib) = (gen(&a), gen(&b));
        assert_eq!((ia.latent, ia.rgb), (ib.latent, ib.rgb), "{preset}: generated image");
        let pic = janusflow::image_io::Picture::from_rgb8(3, 2, (0..18).map(|i| i * 13).collect()).unwrap();
        let feats = |e: &Engine| pollster::block_on(e.image_features(&pic)).unwrap();
        assert_eq!(feats(&a), feats(&b), "{preset}: image features");
        // Converting twice gives the same shards (reproducible packs).
        let dir2 = tempdir(&format!("pack2-{preset}"));
        let m2 = source::convert(&src, preset, &dir2, |_, _, _| {}).unwrap();
        assert_eq!(m.shards, m2.shards);
    }
}

/// Pack versions: version 1 packs (no q4a) are still read; q4a needs version 2; a newer version is
/// named as such, not as invalid JSON, even when it holds formats this engine does not know.
#[test]
fn pack_versions_are_checked_before_the_contents() {
    use janusflow::weights::pack::Manifest;
    let src = ModelSource::open(&fixture("tiny")).unwrap();
    for preset in [Quant::Q4, Quant::Q4A] {
        let dir = tempdir(&format!("pack-version-{preset}"));
        source::convert(&src, preset, &dir, |_, _, _| {}).unwrap();
        let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 2);
        v["version"] = 1.into();
        let v1 = Manifest::parse(&serde_json::to_vec(&v).unwrap());
        match preset {
            Quant::Q4 => assert!(v1.is_ok(), "a version 1 q4 pack is read: {v1:?}"),
            _ => assert!(format!("{:#}", v1.unwrap_err()).contains("cannot hold q4a")),
        }
        v["version"] = 3.into();
        v["preset"] = "q3z".into();
        let e = format!("{:#}", Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap_err());
        assert!(e.contains("pack version 3 is not supported") && e.contains("newer app"), "{e}");
    }
}

fn load_err(dir: &std::path::Path, preset: Quant) -> String {
    let gpu = pollster::block_on(Gpu::new()).unwrap();
    match ModelSource::open(dir)
        .and_then(|src| pollster::block_on(Engine::load(gpu, &src, EngineOptions { preset, context: 64, prefill_chunk: 64, fast: false }, |_, _, _| {})))
    {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn copy_fixture(name: &str) -> std::path::PathBuf {
    let dir = tempdir(name);
    for f in std::fs::read_dir(fixture("tiny")).unwrap() {
        let f = f.unwrap();
        if f.path().is_file() {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn corrupt_and_truncated_inputs_give_clear_errors() {
    // Truncated safetensors.
    let dir = copy_fixture("truncated");
    let data = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &data[..data.len() / 2]).unwrap();
    let e = load_err(&dir, Quant::F32);
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    // Bad header.
    std::fs::write(dir.join("model.safetensors"), b"\xff\xff\xff\xff\xff\xff\xff\x00garbage").unwrap();
    let e = load_err(&dir, Quant::F32);
    assert!(e.contains("not a valid safetensors file"), "{e}");
    // Config that disagrees with the tensors.
    let dir = copy_fixture("badshape");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"intermediate_size\": 160", "\"intermediate_size\": 192");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = load_err(&dir, Quant::F32);
    assert!(e.contains("mlp.gate_proj.weight") && e.contains("shape"), "{e}");
    // Inconsistent config.
    let cfg = std::fs::read_to_string(fixture("tiny/config.json")).unwrap().replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let e = load_err(&dir, Quant::F32);
    assert!(e.contains("not divisible"), "{e}");
    // Corrupted pack shard.
    let pack = tempdir("corrupt-pack");
    let src = ModelSource::open(&fixture("tiny")).unwrap();
    let m = source::convert(&src, Quant::Q4, &pack, |_, _, _| {}).unwrap();
    let shard = pack.join(&m.shards[0].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let e = load_err(&pack, Quant::Q4);
    assert!(e.contains("corrupt"), "{e}");
    // A pack used with another preset.
    let pack2 = tempdir("preset-pack");
    source::convert(&src, Quant::Q8, &pack2, |_, _, _| {}).unwrap();
    let e = load_err(&pack2, Quant::Q4);
    assert!(e.contains("q8 preset"), "{e}");
}
