//! Property test of every parser that reads what a user or a server hands us: thousands of random
//! mutations of valid files (safetensors headers and indexes, pack manifests, config.json,
//! vae/config.json, preprocessor_config.json, images, `.npy`). Each must give an `Err` or a valid
//! result: never a panic, and never an allocation beyond a bound (the allocator below aborts the
//! test on any single request over `MAX_ALLOC`, which is what a size read from a hostile header
//! would cause).
//!
//! Deterministic (seeded), so a failure reproduces; `FUZZ_ITERS=N` runs longer locally.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;

use janusflow::config::{JanusConfig, VaeConfig};
use janusflow::image_io::{Picture, Preprocess};
use janusflow::weights::pack::{Manifest, MIN_SHARD};
use janusflow::weights::quant::Quant;
use janusflow::weights::source::{Pack, ReadFuture, ShardStore};
use janusflow::weights::stream::{header_len, Header, StreamConverter};
use janusflow::weights::{hf, ModelSource};

/// No parser may ask for more than this at once (the largest legitimate request in these inputs is
/// a decoded 640×480 image's buffers; a real model's tensors are not involved).
const MAX_ALLOC: usize = 256 << 20;

struct Capped;

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            // Null makes std report "memory allocation of N bytes failed" and abort: the test fails.
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fn iters(default: usize) -> usize {
    std::env::var("FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn fixture(p: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
}

/// Values that break size arithmetic and range checks.
fn interesting(rng: &mut ChaCha8Rng) -> Value {
    let nums = [
        "0",
        "1",
        "-1",
        "3",
        "1e30",
        "-1e30",
        "0.5",
        "4294967296",
        "4294967295",
        "9223372036854775807",
        "18446744073709551615",
        "1000000000",
        "262144",
        "65536",
        "2147483648",
        "1e15",
    ];
    match rng.next_u32() % 8 {
        0 => Value::Null,
        1 => Value::Bool(rng.next_u32() % 2 == 0),
        2 => Value::String(["", "../../../../etc/passwd", "/etc/passwd", "a/b.bin", "x.bin", "Q4", "q4", "F32", "\u{0}"][rng.next_u32() as usize % 9].into()),
        3 => Value::Array(vec![]),
        4 => Value::Array((0..rng.next_u32() % 5).map(|_| serde_json::from_str(nums[rng.next_u32() as usize % nums.len()]).unwrap()).collect()),
        5 => Value::Object(Default::default()),
        _ => serde_json::from_str(nums[rng.next_u32() as usize % nums.len()]).unwrap(),
    }
}

/// Replaces one random node of a JSON document (or a key of an object) with an interesting value.
fn mutate_json(v: &mut Value, rng: &mut ChaCha8Rng) {
    let mut nodes = 0usize;
    count(v, &mut nodes);
    let target = rng.next_u32() as usize % nodes.max(1);
    let mut i = 0usize;
    replace_at(v, target, &mut i, rng);
}

fn count(v: &Value, n: &mut usize) {
    *n += 1;
    match v {
        Value::Array(a) => a.iter().for_each(|x| count(x, n)),
        Value::Object(o) => o.values().for_each(|x| count(x, n)),
        _ => {}
    }
}

fn replace_at(v: &mut Value, target: usize, i: &mut usize, rng: &mut ChaCha8Rng) -> bool {
    if *i == target {
        match rng.next_u32() % 6 {
            // Drop an array element or an object member, or duplicate an array element.
            0 if v.as_array().is_some_and(|a| !a.is_empty()) => {
                let a = v.as_array_mut().unwrap();
                let k = rng.next_u32() as usize % a.len();
                if rng.next_u32() % 2 == 0 {
                    a.remove(k);
                } else {
                    let x = a[k].clone();
                    a.push(x);
                }
            }
            1 if v.as_object().is_some_and(|o| !o.is_empty()) => {
                let o = v.as_object_mut().unwrap();
                let k = o.keys().nth(rng.next_u32() as usize % o.len()).unwrap().clone();
                o.remove(&k);
            }
            _ => *v = interesting(rng),
        }
        return true;
    }
    *i += 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_at(x, target, i, rng)),
        Value::Object(o) => o.values_mut().any(|x| replace_at(x, target, i, rng)),
        _ => false,
    }
}

/// Byte-level damage: flips, overwrites, insertions, deletions, truncation.
fn mutate_bytes(b: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..1 + rng.next_u32() % 4 {
        if b.is_empty() {
            b.push(0);
        }
        let at = rng.next_u32() as usize % b.len();
        match rng.next_u32() % 7 {
            0 => b[at] ^= 1 << (rng.next_u32() % 8),
            1 => b[at] = [0, 0xff, 0x7f, 0x80, b'9', b'"'][rng.next_u32() as usize % 6],
            2 => b.truncate(at),
            3 => {
                let n = (rng.next_u32() as usize % 64).min(b.len() - at);
                b.drain(at..at + n);
            }
            4 => {
                let junk: Vec<u8> = (0..rng.next_u32() % 16).map(|_| rng.next_u32() as u8).collect();
                b.splice(at..at, junk);
            }
            5 => {
                // Overwrite 4 bytes with a large little/big-endian length.
                let v = [u32::MAX, 0x7fff_ffff, 1 << 30, 0][rng.next_u32() as usize % 4];
                let bytes = if rng.next_u32() % 2 == 0 { v.to_le_bytes() } else { v.to_be_bytes() };
                for (k, x) in bytes.iter().enumerate() {
                    if at + k < b.len() {
                        b[at + k] = *x;
                    }
                }
            }
            _ => b[at] = rng.next_u32() as u8,
        }
    }
}

/// Runs `check` on `n` mutations of `seed_input`: JSON-aware for JSON, byte-level otherwise.
fn fuzz(name: &str, seed_input: &[u8], json: bool, n: usize, mut check: impl FnMut(&[u8])) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed ^ name.len() as u64);
    let parsed: Option<Value> = if json { serde_json::from_slice(seed_input).ok() } else { None };
    check(seed_input); // the valid input itself
    for i in 0..n {
        let input = match &parsed {
            Some(v) if rng.next_u32() % 4 != 0 => {
                let mut v = v.clone();
                for _ in 0..1 + rng.next_u32() % 3 {
                    mutate_json(&mut v, &mut rng);
                }
                serde_json::to_vec(&v).unwrap()
            }
            _ => {
                let mut b = seed_input.to_vec();
                mutate_bytes(&mut b, &mut rng);
                b
            }
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&input))) {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            let shown = String::from_utf8_lossy(&input[..input.len().min(600)]).into_owned();
            panic!("{name}: mutation {i} panicked: {msg}\ninput (first 600 bytes): {shown}");
        }
    }
}

#[test]
fn config_parsers_never_panic() {
    let cfg = std::fs::read(fixture("tiny/config.json")).unwrap();
    let real = std::fs::read(fixture("janusflow-1.3b-config.json")).unwrap();
    let n = iters(3000);
    let mut ok = 0;
    for (name, input) in [("config.json", &cfg), ("real config.json", &real)] {
        fuzz(name, input, true, n, |b| {
            if let Ok(c) = std::str::from_utf8(b).map_err(anyhow::Error::from).and_then(JanusConfig::from_json_str) {
                ok += 1;
                // A config that parses has sizes every later step can compute with.
                let total: u64 = c.expected_tensors().iter().map(|(_, s)| s.iter().map(|&d| d as u64).product::<u64>()).sum();
                assert!(total > 0);
                let _ = c.gen.tokens();
            }
        });
    }
    assert!(ok > 10, "too few mutations parsed ({ok}): the fuzzer is not reaching the checks");
    let vae = std::fs::read(fixture("tiny/vae/config.json")).unwrap();
    fuzz("vae/config.json", &vae, true, n, |b| {
        if let Ok(c) = VaeConfig::from_json(b) {
            let _ = c.factor();
            let _ = c.decoder_tensors();
        }
    });
    let pre = std::fs::read(fixture("tiny/preprocessor_config.json")).unwrap();
    fuzz("preprocessor_config.json", &pre, true, n, |b| {
        let _ = Preprocess::from_json(b, 384);
    });
}

#[test]
fn safetensors_header_and_index_parsers_never_panic() {
    let file = std::fs::read(fixture("tiny/model.safetensors")).unwrap();
    let hl = header_len("model", &file).unwrap() as usize;
    let json = &file[8..8 + hl];
    let n = iters(2000);
    fuzz("safetensors header", json, true, n, |b| {
        let _ = Header::parse("model", b, Some(file.len() as u64));
        let _ = Header::parse("model", b, None);
    });
    fuzz("safetensors prefix", &file[..64], false, n, |b| {
        let _ = header_len("model", b);
    });
    let index = br#"{"metadata": {"total_size": 1000}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}"#;
    fuzz("safetensors index", index, true, n, |b| {
        if let Ok(files) = hf::index_files(b) {
            assert!(files.iter().all(|f| hf::plain_file_name(f)), "{files:?}");
        }
    });
    // The browser plans a conversion from a config plus headers before asking for consent.
    let cfg = std::fs::read(fixture("tiny/config.json")).unwrap();
    let tok = std::fs::read(fixture("tiny/tokenizer.json")).unwrap();
    let header = Header::parse("model", json, Some(file.len() as u64)).unwrap();
    fuzz("converter plan", &cfg, true, n / 4, |b| {
        let files = vec![("tokenizer.json".to_string(), tok.clone())];
        let _ = StreamConverter::new(Quant::Q4, MIN_SHARD, b, files, std::slice::from_ref(&header), None, None);
    });
}

/// Shards held in memory, for reading packs whose manifest was mutated.
struct MemShards(HashMap<String, Vec<u8>>);

impl ShardStore for MemShards {
    fn read<'a>(&'a self, shard: &'a str, offset: u64, len: u64) -> ReadFuture<'a> {
        let r = self
            .0
            .get(shard)
            .and_then(|d| d.get(offset as usize..offset.checked_add(len)? as usize))
            .map(|s| s.to_vec())
            .ok_or_else(|| anyhow::anyhow!("no such range"));
        Box::pin(std::future::ready(r))
    }
}

#[test]
fn manifest_parser_and_pack_reads_never_panic() {
    let dir = std::env::temp_dir().join(format!("janusflow-fuzz-pack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = ModelSource::open(&fixture("tiny")).unwrap();
    let m = janusflow::weights::source::convert_with(&src, None, Quant::Q4, &dir, MIN_SHARD, |_, _, _| {}).unwrap();
    let shards: HashMap<String, Vec<u8>> = m.shards.iter().map(|s| (s.file.clone(), std::fs::read(dir.join(&s.file)).unwrap())).collect();
    let text = std::fs::read(dir.join("manifest.json")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // Mutating the (large) config inside the manifest is covered above; aim at the pack structure.
    let mut lean: Value = serde_json::from_slice(&text).unwrap();
    lean["tensors"].as_array_mut().unwrap().truncate(12);
    let lean = serde_json::to_vec(&lean).unwrap();
    let mut ok = 0;
    fuzz("manifest.json", &lean, true, iters(2000), |b| {
        let Ok(m) = Manifest::parse(b) else { return };
        ok += 1;
        let (files, tensors) = (m.files.clone(), m.tensors.clone());
        let preset = m.preset;
        let src = ModelSource::Pack(Pack::new(m, Box::new(MemShards(shards.clone()))));
        // Everything a valid-looking manifest points at can be read without panicking.
        for f in &files {
            let _ = pollster::block_on(src.file(&f.name));
        }
        for t in &tensors {
            let _ = pollster::block_on(src.blob(&t.name, &t.shape, preset));
        }
    });
    assert!(ok > 10, "too few mutations parsed ({ok})");
}

#[test]
fn image_and_npy_decoders_never_panic() {
    let n = iters(400);
    for f in ["square_80.png", "rgba_64x48.png", "rgb16_40x30.png", "pic.webp", "pic.bmp", "anim.gif", "exif_rot6.jpg", "photo_640x480.jpg"] {
        let bytes = std::fs::read(fixture(&format!("images/{f}"))).unwrap();
        fuzz(f, &bytes, false, n, |b| {
            if let Ok(p) = Picture::decode(b) {
                assert_eq!(p.rgb.len(), p.width * p.height * 3);
            }
        });
    }
    let noise = std::fs::read(fixture("tiny-ref-gen/noise.npy")).unwrap();
    fuzz("noise.npy", &noise, false, iters(3000), |b| {
        if let Ok((shape, v)) = janusflow::npy::read_f32(b) {
            assert_eq!(shape.iter().product::<u64>() as usize, v.len());
        }
    });
}

#[test]
fn truncated_files_are_refused() {
    // A cut-off JPEG used to decode "successfully" as a grey-filled picture. (A GIF cut after its
    // first frame is still a whole picture: only that frame is used.)
    for f in ["photo_640x480.jpg", "exif_rot6.jpg", "square_80.png", "pic.webp", "pic.bmp"] {
        let bytes = std::fs::read(fixture(&format!("images/{f}"))).unwrap();
        assert!(Picture::decode(&bytes).is_ok(), "{f}");
        for cut in [bytes.len() * 2 / 3, bytes.len() - 40] {
            let e = Picture::decode(&bytes[..cut]);
            assert!(e.is_err(), "{f} cut to {cut} of {} bytes was accepted", bytes.len());
        }
    }
}
