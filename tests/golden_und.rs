//! Image understanding against the PyTorch reference (tests/reference/make_und_refs.py): image
//! decoding and preprocessing against Pillow, the SigLIP tower and aligner, the embedding splice,
//! logits and greedy replies of image prompts, quantized encoder, and bad input.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::sync::Arc;

use janusflow::engine::Conversation;
use janusflow::image_io::{Picture, Preprocess};
use janusflow::text::sampling::SamplingParams;
use janusflow::text::template::{Message, Role};
use janusflow::weights::quant::Quant;

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    system: String,
    messages: Vec<Msg>,
    expanded_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Msg {
    role: String,
    content: String,
    images: Vec<String>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("tiny-ref-und/cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

fn picture(file: &str) -> Arc<Picture> {
    let bytes = std::fs::read(fixture("images").join(file)).unwrap();
    Arc::new(Picture::decode(&bytes).unwrap_or_else(|e| panic!("{file}: {e:#}")))
}

fn messages(c: &Case) -> Vec<Message> {
    c.messages
        .iter()
        .map(|m| Message {
            role: if m.role.eq_ignore_ascii_case("user") { Role::User } else { Role::Assistant },
            content: m.content.clone(),
            images: m.images.iter().map(|f| picture(f)).collect(),
        })
        .collect()
}

fn stem(file: &str) -> String {
    match file {
        "pic.webp" => "pic_webp".into(),
        "pic.bmp" => "pic_bmp".into(),
        f => f.rsplit_once('.').unwrap().0.to_string(),
    }
}

#[derive(serde::Deserialize)]
struct PreIndex {
    files: BTreeMap<String, PreFile>,
}

#[derive(serde::Deserialize)]
struct PreFile {
    format: String,
    targets: BTreeMap<String, PreTarget>,
}

#[derive(serde::Deserialize)]
struct PreTarget {
    file: String,
    resized: [usize; 2],
    offset: [usize; 2],
}

fn preprocess_at(size: usize) -> Preprocess {
    let json = std::fs::read(fixture("tiny/preprocessor_config.json")).unwrap();
    Preprocess { image_size: size, ..Preprocess::from_json(&json, 64).unwrap() }
}

/// Every fixture image, at the tiny (64) and the real (384) encoder size: the padded RGB square
/// equals Pillow's bit for bit for lossless formats; JPEG decoders may differ by a few levels.
#[test]
fn preprocessing_matches_pillow() {
    let index: PreIndex = serde_json::from_slice(&std::fs::read(fixture("tiny-ref-und/pre/index.json")).unwrap()).unwrap();
    assert_eq!(index.files.len(), 11);
    for (file, info) in &index.files {
        let pic = picture(file);
        for (size, t) in &info.targets {
            let pre = preprocess_at(size.parse().unwrap());
            let (w, h) = pre.resized_dims(pic.width, pic.height);
            assert_eq!([w, h], t.resized, "{file} @{size}: resized dims");
            let (s, _) = (pre.image_size, 0);
            assert_eq!([(s - w) / 2, (s - h) / 2], t.offset, "{file} @{size}: offset");
            let want = image::open(fixture("tiny-ref-und/pre").join(&t.file)).unwrap().to_rgb8().into_raw();
            let got = pre.square(&pic);
            let diffs: Vec<i32> = got.iter().zip(&want).map(|(&a, &b)| (a as i32 - b as i32).abs()).collect();
            let max = *diffs.iter().max().unwrap();
            let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
            if info.format == "JPEG" {
                assert!(mean < 1.0 && max <= 12, "{file} @{size}: JPEG decode differs too much (max {max}, mean {mean:.3})");
            } else {
                assert_eq!(max, 0, "{file} @{size}: differs from Pillow by up to {max} levels (mean {mean:.4})");
            }
        }
    }
}

#[test]
fn normalised_pixels_match_reference() {
    let pre = preprocess_at(64);
    for f in ["square_80.png", "wide_101x70.png", "tall_33x40.png", "gray_50x64.png"] {
        let want = read_npy(&fixture("tiny-ref-und/pre").join(format!("{}_64_pixels.npy", stem(f))));
        let got = pre.pixels(&picture(f));
        let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d < 1e-6, "{f}: {d}");
    }
}

#[test]
fn bad_images_get_clear_errors() {
    let err = |bytes: &[u8]| format!("{:#}", Picture::decode(bytes).unwrap_err());
    assert!(err(b"").contains("empty"));
    assert!(err(b"hello, this is not an image at all").contains("not an image"));
    let png = std::fs::read(fixture("images/square_80.png")).unwrap();
    let e = err(&png[..png.len() / 2]);
    assert!(e.contains("cannot decode"), "{e}");
    // A 30000×30000 PNG header: refused from the header, before any allocation.
    let mut huge = png.clone();
    huge[16..20].copy_from_slice(&30000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&30000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let e = err(&huge);
    assert!(e.contains("megapixel"), "{e}");
    assert!(format!("{:#}", Picture::from_rgb8(0, 5, vec![]).unwrap_err()).contains("empty"));
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn preprocessor_config_is_checked() {
    let ok = std::fs::read_to_string(fixture("tiny/preprocessor_config.json")).unwrap();
    assert!(Preprocess::from_json(ok.as_bytes(), 384).unwrap_err().to_string().contains("image_size"));
    let bad = ok.replace("127", "128");
    assert!(Preprocess::from_json(bad.as_bytes(), 64).unwrap_err().to_string().contains("background_color"));
    let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
    let mut m = v.as_object().unwrap().clone();
    m.remove("image_mean");
    assert!(Preprocess::from_json(serde_json::to_string(&m).unwrap().as_bytes(), 64).unwrap_err().to_string().contains("image_mean"));
}

#[test]
fn siglip_features_match_reference_f32_and_q8() {
    let e = engine(Quant::F32);
    let q = engine(Quant::Q8);
    for f in ["square_80.png", "wide_101x70.png", "tall_33x40.png", "gray_50x64.png"] {
        let s = stem(f);
        let (tower, aligned) = pollster::block_on(e.image_features(&picture(f))).unwrap();
        let want_t = read_npy(&fixture("tiny-ref-und").join(format!("siglip_{s}.npy")));
        let want_a = read_npy(&fixture("tiny-ref-und").join(format!("aligned_{s}.npy")));
        let (rt, ra) = (max_rel(&tower, &want_t), max_rel(&aligned, &want_a));
        println!("{f}: tower rel {rt:.2e}, aligned rel {ra:.2e}");
        assert!(rt < 1e-4 && ra < 1e-4, "{f}: tower {rt}, aligned {ra}");
        let (qt, qa) = pollster::block_on(q.image_features(&picture(f))).unwrap();
        let (ct, ca) = (cosine(&qt, &want_t), cosine(&qa, &want_a));
        println!("{f}: q8 cosine tower {ct:.6}, aligned {ca:.6}");
        assert!(ct >= 0.999 && ca >= 0.999, "{f}: q8 cosine {ct} / {ca}");
    }
}

#[test]
fn spliced_prompts_logits_and_greedy_replies_match_reference() {
    let mut e = engine(Quant::F32);
    for c in cases() {
        let msgs = messages(&c);
        let sys = Some(c.system.as_str()).filter(|s| !s.is_empty());
        assert_eq!(e.encode_chat(sys, &msgs).unwrap(), c.expanded_ids, "{}: expanded ids", c.name);
        let emb = pollster::block_on(e.input_embeddings(sys, &msgs)).unwrap();
        let want = read_npy(&fixture("tiny-ref-und").join(format!("embeds_{}.npy", c.name)));
        let r = max_rel(&emb, &want);
        assert!(r < 1e-4, "{}: spliced embeddings rel {r}", c.name);
        let logits = pollster::block_on(e.logits(sys, &msgs)).unwrap();
        let want = read_npy(&fixture("tiny-ref-und").join(format!("logits_{}.npy", c.name)));
        let r = max_rel(&logits, &want);
        println!("{}: T={} logits rel {r:.2e}", c.name, c.expanded_ids.len());
        assert!(r < 1e-4, "{}: logits rel {r}", c.name);
        // Greedy reply: identical up to and including the first EOS (at least 24 tokens compared).
        let mut conv = Conversation::new();
        conv.system = sys.map(String::from);
        conv.messages = msgs;
        let reply = pollster::block_on(e.chat(&mut conv, &SamplingParams::greedy(32), |_| true)).unwrap();
        let eos = e.tok.eos;
        let want: Vec<u32> = c.greedy_ids.iter().copied().take_while(|&i| i != eos).collect();
        assert_eq!(reply.ids, want, "{}: greedy reply", c.name);
        assert!(want.len() >= 24 || c.greedy_ids.contains(&eos), "{}", c.name);
    }
}

/// A second turn with a new image reuses the first turn's K/V (image slots included) and gives
/// the same reply as a fresh prefill; a different image in the same place is not mistaken for it.
#[test]
fn image_turns_reuse_the_cache_correctly() {
    let mut e = engine(Quant::F32);
    let (a, b) = (picture("square_80.png"), picture("gray_50x64.png"));
    let mut conv = Conversation::new();
    conv.messages.push(Message::user_with_images("What is this?", vec![a.clone()]));
    pollster::block_on(e.chat(&mut conv, &SamplingParams::greedy(6), |_| true)).unwrap();
    conv.messages.push(Message::user_with_images("And this one?", vec![b.clone()]));
    let second = pollster::block_on(e.chat(&mut conv, &SamplingParams::greedy(8), |_| true)).unwrap();
    assert!(second.reused_tokens > e.image_tokens(), "reused {}", second.reused_tokens);
    let mut fresh = Conversation::new();
    fresh.messages = conv.messages[..3].to_vec();
    let again = pollster::block_on(e.chat(&mut fresh, &SamplingParams::greedy(8), |_| true)).unwrap();
    assert_eq!(second.ids, again.ids);
    // Same text, other image: the cache must stop at the image.
    let mut swapped = Conversation::new();
    swapped.messages.push(Message::user_with_images("What is this?", vec![a]));
    pollster::block_on(e.chat(&mut swapped, &SamplingParams::greedy(2), |_| true)).unwrap();
    swapped.messages.clear();
    swapped.messages.push(Message::user_with_images("What is this?", vec![b]));
    let r = pollster::block_on(e.chat(&mut swapped, &SamplingParams::greedy(2), |_| true)).unwrap();
    let boi = e.encode_chat(swapped.system.as_deref(), &swapped.messages[..1]).unwrap().iter().position(|&i| i == e.tok.boi).unwrap();
    assert_eq!(r.reused_tokens, boi + 1, "the begin tag is shared, the image slots are not");
}

#[test]
fn image_count_must_match_placeholders() {
    let e = engine(Quant::F32);
    let pic = picture("square_80.png");
    let m = Message { role: Role::User, content: "<image_placeholder> and <image_placeholder>".into(), images: vec![pic] };
    let err = e.encode_chat(None, &[m]).unwrap_err().to_string();
    assert!(err.contains("1 image(s) but 2"), "{err}");
}
