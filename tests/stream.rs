//! The streaming HF → pack converter (what the browser runs while downloading): identical to
//! `janusflow convert`, indifferent to how bytes are chunked, resumable after any shard, and
//! strict about bad input. No GPU needed.

mod common;
use common::*;

use janusflow::weights::pack::Manifest;
use janusflow::weights::quant::Quant;
use janusflow::weights::stream::{header_len, Header, Sealed, StreamConverter, SIDE_FILES};
use janusflow::weights::{source, ModelSource};

const SHARD: usize = 64 << 10;

/// The tiny checkpoint as the browser fetches it: config, side files, and the two safetensors files.
struct Inputs {
    config: Vec<u8>,
    side: Vec<(String, Vec<u8>)>,
    files: Vec<Vec<u8>>,
}

fn inputs() -> Inputs {
    let dir = fixture("tiny");
    let side = SIDE_FILES.iter().filter(|n| dir.join(n).exists()).map(|n| (n.to_string(), std::fs::read(dir.join(n)).unwrap())).collect();
    Inputs {
        config: std::fs::read(dir.join("config.json")).unwrap(),
        side,
        files: vec![std::fs::read(dir.join("model.safetensors")).unwrap(), std::fs::read(dir.join("vae/diffusion_pytorch_model.safetensors")).unwrap()],
    }
}

fn header(label: &str, bytes: &[u8]) -> anyhow::Result<Header> {
    let n = header_len(label, bytes)? as usize;
    Header::parse(label, &bytes[8..8 + n], Some(bytes.len() as u64))
}

fn converter(inp: &Inputs, preset: Quant, checkpoint: Option<&[u8]>) -> anyhow::Result<StreamConverter> {
    let model = header("model.safetensors", &inp.files[0])?;
    let vae = header("vae", &inp.files[1])?;
    StreamConverter::new(preset, SHARD, &inp.config, inp.side.clone(), &[model], Some(&vae), checkpoint)
}

/// Runs to the end, feeding `chunk`-byte pieces, each preceded by `overlap` bytes already seen
/// (as a retried request would resend them). Returns the sealed shards and the manifest.
fn run(inp: &Inputs, mut c: StreamConverter, chunk: usize, overlap: u64) -> (Vec<Sealed>, Manifest) {
    let (mut sealed, _) = feed(inp, &mut c, chunk, overlap);
    let m = c.finish().unwrap();
    sealed.extend(c.take_sealed());
    (sealed, m)
}

/// Feeds every span the converter asks for; returns the shards sealed and the bytes requested.
fn feed(inp: &Inputs, c: &mut StreamConverter, chunk: usize, overlap: u64) -> (Vec<Sealed>, u64) {
    let mut sealed = c.take_sealed();
    let mut read = 0;
    while let Some(span) = c.next_span() {
        read += span.end - span.start;
        let mut at = span.start;
        while at < span.end {
            let from = at.saturating_sub(overlap);
            let to = (at + chunk as u64).min(span.end);
            c.push(span.input, from, &inp.files[span.input][from as usize..to as usize]).unwrap();
            sealed.extend(c.take_sealed());
            at = to;
        }
    }
    (sealed, read)
}

#[test]
fn streaming_matches_convert_and_resumes_after_any_shard() {
    let inp = inputs();
    for quant in [Quant::Q4A, Quant::Q4] {
        let native = tempdir(&format!("stream-native-{quant}"));
        let src = ModelSource::open(&fixture("tiny")).unwrap();
        let want = source::convert_with(&src, None, quant, &native, SHARD, |_, _, _| {}).unwrap();
        assert!(want.shards.len() >= 5, "the test needs several shards");
        let (sealed, got) = run(&inp, converter(&inp, quant, None).unwrap(), 777, 100);
        assert_eq!(got.shards, want.shards);
        assert_eq!(serde_json::to_value(&got.tensors).unwrap(), serde_json::to_value(&want.tensors).unwrap());
        assert_eq!(sealed.iter().map(|s| s.file.clone()).collect::<Vec<_>>(), want.shards.iter().map(|s| s.file.clone()).collect::<Vec<_>>());
        for s in &sealed {
            assert_eq!(std::fs::read(native.join(&s.file)).unwrap(), s.data);
        }
        // Resume after each committed shard: the rest comes out identical, and reading restarts
        // further on each time (never from the beginning once past the first tensors).
        let mut last_start = 0;
        for (k, s) in sealed.iter().enumerate() {
            let mut c = converter(&inp, quant, Some(&s.checkpoint)).unwrap();
            assert_eq!(c.shard_count(), k + 1);
            let start = c.next_span().map(|sp| (sp.input as u64) << 40 | sp.start).unwrap_or(u64::MAX);
            assert!(start >= last_start, "shard {k}: resumes at {start:#x}, before {last_start:#x}");
            last_start = start;
            let (rest, m) = run(&inp, c, 4096, 0);
            assert_eq!(
                rest.iter().map(|s| &s.data).collect::<Vec<_>>(),
                sealed[k + 1..].iter().map(|s| &s.data).collect::<Vec<_>>(),
                "{quant}: resumed after shard {k}"
            );
            assert_eq!(m.shards, want.shards);
            assert_eq!(serde_json::to_value(&m.files).unwrap(), serde_json::to_value(&want.files).unwrap());
        }
        assert!(last_start > 0);
    }
    // Skipped bytes are never requested: attn_pool and the VAE encoder.
    let mut c = converter(&inp, Quant::Q4, None).unwrap();
    let (total, _) = c.input_bytes();
    let mut requested = 0;
    while let Some(sp) = c.next_span() {
        requested += sp.end - sp.start;
        c.push(sp.input, sp.start, &inp.files[sp.input][sp.start as usize..sp.end as usize]).unwrap();
    }
    let on_disk = (inp.files[0].len() + inp.files[1].len()) as u64;
    assert!(requested < on_disk && total <= requested, "requested {requested} of {on_disk} bytes, {total} needed");
}

fn range_converter(inp: &Inputs, preset: Quant, shards: Option<std::ops::Range<usize>>, checkpoint: Option<&[u8]>) -> anyhow::Result<StreamConverter> {
    let model = header("model.safetensors", &inp.files[0])?;
    let vae = header("vae", &inp.files[1])?;
    StreamConverter::new_range(preset, SHARD, &inp.config, inp.side.clone(), &[model], Some(&vae), shards, checkpoint)
}

/// Runs a range converter to its end; returns its sealed shards, its entries and the input read.
fn run_range(inp: &Inputs, mut c: StreamConverter, chunk: usize) -> (Vec<Sealed>, Vec<janusflow::weights::pack::ShardEntry>, u64) {
    let (mut sealed, read) = feed(inp, &mut c, chunk, 0);
    let entries = c.finish_range().unwrap();
    sealed.extend(c.take_sealed());
    (sealed, entries, read)
}

/// Several converters, each writing a range of shards (the browser's parallel first load), make
/// the single converter's pack byte for byte, whatever the cuts; each range resumes after any of
/// its shards; and the planned ranges read little more than one converter does.
#[test]
fn ranges_make_the_same_pack_and_resume() {
    let inp = inputs();
    for quant in [Quant::Q4A, Quant::Q8] {
        let (want_sealed, want) = run(&inp, converter(&inp, quant, None).unwrap(), 1 << 20, 0);
        let n = want.shards.len();
        assert!(n >= 5, "the test needs several shards");
        let whole = converter(&inp, quant, None).unwrap();
        assert_eq!(whole.pack_shards(), n);
        let (single_total, _) = whole.input_bytes();
        // Planned ranges, and every shard alone (cuts anywhere: in tensors' rows, their scales,
        // the side files).
        let planned: Vec<Vec<std::ops::Range<usize>>> = (2..=5).map(|k| whole.plan_ranges(k)).collect();
        let singles: Vec<std::ops::Range<usize>> = (0..n).map(|i| i..i + 1).collect();
        for (k, ranges) in planned.iter().chain([&singles]).enumerate() {
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, n);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start && w[0].start < w[0].end), "{ranges:?}");
            let mut entries = Vec::new();
            let mut data = Vec::new();
            let mut read = 0;
            for r in ranges {
                let c = range_converter(&inp, quant, Some(r.clone()), None).unwrap();
                assert_eq!(c.shard_range(), r.clone());
                let (sealed, e, bytes) = run_range(&inp, c, 3000);
                assert_eq!(sealed.len(), r.len(), "{quant} range {r:?}");
                read += bytes;
                entries.extend(e);
                data.extend(sealed.into_iter().map(|s| s.data));
            }
            assert_eq!(data, want_sealed.iter().map(|s| s.data.clone()).collect::<Vec<_>>(), "{quant}: ranges {ranges:?}");
            let m = whole.manifest(&entries).unwrap();
            assert_eq!(serde_json::to_string(&m).unwrap(), serde_json::to_string(&want).unwrap());
            if k < planned.len() {
                assert!(ranges.len() >= 2, "{ranges:?}");
                assert!(read as f64 <= single_total as f64 * 1.35, "{quant} {ranges:?}: read {read} bytes, one converter reads {single_total}");
            }
        }
        // Each one-shard range (ends anywhere: in rows, scales, padding) resumes from its last
        // checkpoint as finished: nothing more to read, the same entries.
        for r in &singles {
            let (sealed, entries, _) = run_range(&inp, range_converter(&inp, quant, Some(r.clone()), None).unwrap(), 1 << 20);
            let mut c = range_converter(&inp, quant, None, Some(&sealed.last().unwrap().checkpoint)).unwrap();
            assert_eq!(c.next_span(), None, "{quant} range {r:?}");
            assert_eq!(c.finish_range().unwrap(), entries);
            assert!(c.take_sealed().is_empty());
        }
        // A range resumes after each of its shards, from the checkpoint alone.
        let r = planned[1][1].clone();
        let (sealed, entries, _) = run_range(&inp, range_converter(&inp, quant, Some(r.clone()), None).unwrap(), 5000);
        for (k, s) in sealed.iter().enumerate() {
            let c = range_converter(&inp, quant, None, Some(&s.checkpoint)).unwrap();
            assert_eq!(c.shard_range(), r);
            assert_eq!(c.shard_count(), k + 1);
            let (rest, e, _) = run_range(&inp, c, 700);
            assert_eq!(rest.iter().map(|s| &s.data).collect::<Vec<_>>(), sealed[k + 1..].iter().map(|s| &s.data).collect::<Vec<_>>());
            assert_eq!(e, entries);
        }
        // A checkpoint of one range is refused for another; bad ranges and incomplete sets too.
        let e = format!("{:#}", range_converter(&inp, quant, Some(0..1), Some(&sealed[0].checkpoint)).err().unwrap());
        assert!(e.contains("other files or settings"), "{e}");
        assert!(range_converter(&inp, quant, Some(2..2), None).is_err());
        assert!(range_converter(&inp, quant, Some(0..n + 1), None).is_err());
        assert!(whole.manifest(&want.shards[1..]).is_err());
        let mut c = range_converter(&inp, quant, Some(1..2), None).unwrap();
        assert!(format!("{:#}", c.finish().err().unwrap()).contains("finish_range"));
    }
}

#[test]
fn streaming_rejects_bad_input_clearly() {
    let inp = inputs();
    let err = |r: anyhow::Result<StreamConverter>| format!("{:#}", r.err().expect("should fail"));
    // A checkpoint of another preset.
    let (sealed, _) = run(&inp, converter(&inp, Quant::Q8, None).unwrap(), 1 << 20, 0);
    let e = err(converter(&inp, Quant::Q4, Some(&sealed[1].checkpoint)));
    assert!(e.contains("other files or settings"), "{e}");
    let e = err(converter(&inp, Quant::Q8, Some(&sealed[1].checkpoint[..20])));
    assert!(e.contains("damaged"), "{e}");
    // Truncated file: refused from its header when the size is known, at the end otherwise.
    let m = &inp.files[0];
    let n = header_len("m", m).unwrap() as usize;
    let e = format!("{:#}", Header::parse("model.safetensors", &m[8..8 + n], Some(m.len() as u64 / 2)).err().unwrap());
    assert!(e.contains("model.safetensors is truncated"), "{e}");
    let mut c = converter(&inp, Quant::Q4, None).unwrap();
    let sp = c.next_span().unwrap();
    c.push(sp.input, sp.start, &inp.files[sp.input][sp.start as usize..(sp.start + sp.end) as usize / 2]).unwrap();
    let e = format!("{:#}", c.finish().err().unwrap());
    assert!(e.contains("ended early"), "{e}");
    // A gap in what was pushed.
    let mut c = converter(&inp, Quant::Q4, None).unwrap();
    let sp = c.next_span().unwrap();
    let e = format!("{:#}", c.push(sp.input, sp.start + 10, &inp.files[0][sp.start as usize + 10..sp.start as usize + 20]).err().unwrap());
    assert!(e.contains("bytes missing"), "{e}");
    // Garbage header, missing tensor, wrong shape, missing tokenizer.
    assert!(format!("{:#}", header("x", b"\xff\xff\xff\xff\xff\xff\xff\x00junk").err().unwrap()).contains("not a valid safetensors file"));
    let mut h: serde_json::Value = serde_json::from_slice(&m[8..8 + n]).unwrap();
    let name = "language_model.model.layers.0.mlp.up_proj.weight";
    let t = h.as_object_mut().unwrap().remove(name).unwrap();
    let without = Header::parse("model.safetensors", &serde_json::to_vec(&h).unwrap(), None).unwrap();
    let e = format!("{:#}", StreamConverter::new(Quant::Q4, SHARD, &inp.config, inp.side.clone(), &[without], None, None).err().unwrap());
    assert!(e.contains(name), "{e}");
    let mut t2 = t.clone();
    t2["shape"] = serde_json::json!([1, 1]);
    h[name] = t2;
    let e = format!("{:#}", Header::parse("model.safetensors", &serde_json::to_vec(&h).unwrap(), None).err().unwrap());
    assert!(e.contains(name) && e.contains("data bytes"), "{e}");
    h[name] = t;
    let ok = Header::parse("model.safetensors", &serde_json::to_vec(&h).unwrap(), None).unwrap();
    let side: Vec<_> = inp.side.iter().filter(|(n, _)| n != "tokenizer.json").cloned().collect();
    let e = format!("{:#}", StreamConverter::new(Quant::Q4, SHARD, &inp.config, side, &[ok], None, None).err().unwrap());
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn a_checkpoint_is_refused_when_a_file_changed_upstream() {
    // Same shapes, new bytes (a re-upload): the server's ETag is part of the plan's fingerprint.
    let inp = inputs();
    let with_etag = |etag: &str| -> anyhow::Result<StreamConverter> {
        let model = header("model.safetensors", &inp.files[0])?.with_identity(etag);
        StreamConverter::new(Quant::Q4, SHARD, &inp.config, inp.side.clone(), &[model], None, None)
    };
    let (sealed, _) = run(&inp, with_etag("\"aaaa\"").unwrap(), 1 << 20, 0);
    let model = header("model.safetensors", &inp.files[0]).unwrap().with_identity("\"bbbb\"");
    let e = StreamConverter::new(Quant::Q4, SHARD, &inp.config, inp.side.clone(), &[model], None, Some(&sealed[0].checkpoint)).err().expect("should fail");
    assert!(format!("{e:#}").contains("other files"), "{e:#}");
    let model = header("model.safetensors", &inp.files[0]).unwrap().with_identity("\"aaaa\"");
    assert!(StreamConverter::new(Quant::Q4, SHARD, &inp.config, inp.side.clone(), &[model], None, Some(&sealed[0].checkpoint)).is_ok());
}
