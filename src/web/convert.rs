//! The streaming converter for the worker: a Hugging Face checkpoint becomes a weight pack while
//! it downloads (see `weights::stream`). The worker fetches the headers, asks for byte spans,
//! pushes what arrives, and commits each sealed shard with its checkpoint to IndexedDB.

use wasm_bindgen::prelude::*;

use crate::error::{Kind, WithKind as _};
use crate::weights::quant::Quant;
use crate::weights::stream::{header_len, Header, StreamConverter, SIDE_FILES};

/// Conversion fails on what the checkpoint holds (headers, shapes, damaged values): bad weights.
fn err(e: anyhow::Error) -> JsValue {
    super::err(Err::<(), _>(e).kind(Kind::BadWeights).unwrap_err())
}

fn get(o: &JsValue, k: &str) -> JsValue {
    js_sys::Reflect::get(o, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
}

fn bytes(v: &JsValue, what: &str) -> Result<Vec<u8>, JsValue> {
    if v.is_instance_of::<js_sys::Uint8Array>() {
        Ok(js_sys::Uint8Array::from(v.clone()).to_vec())
    } else {
        Err(super::bad_input(&format!("{what} must be a Uint8Array")))
    }
}

/// `{label, header: Uint8Array (the JSON after the first 8 bytes), size?: number, etag?: string}`.
fn header(v: &JsValue) -> Result<Header, JsValue> {
    let label = get(v, "label").as_string().unwrap_or_else(|| "safetensors file".into());
    let json = bytes(&get(v, "header"), "header")?;
    let h = Header::parse(&label, &json, get(v, "size").as_f64().map(|s| s as u64)).map_err(err)?;
    Ok(h.with_identity(&get(v, "etag").as_string().unwrap_or_default()))
}

/// Side files a pack carries, in pack order (the worker fetches these that exist).
#[wasm_bindgen(js_name = sideFiles)]
pub fn side_files() -> Vec<String> {
    SIDE_FILES.iter().map(|s| s.to_string()).collect()
}

/// The JSON header length of a safetensors file from its first 8 bytes (a clear error otherwise).
#[wasm_bindgen(js_name = safetensorsHeaderLength)]
pub fn safetensors_header_length(label: &str, first8: &[u8]) -> Result<f64, JsValue> {
    header_len(label, first8).map(|n| n as f64).map_err(err)
}

#[wasm_bindgen]
pub struct HfConverter(StreamConverter);

#[wasm_bindgen]
impl HfConverter {
    /// `spec`: `{quant, shardSize, config: Uint8Array, files: [[name, Uint8Array]], model:
    /// [header], vae: header | null, checkpoint: Uint8Array | null, range: [first, end] | null}`;
    /// a header is `{label, header, size}`. With `range`, the converter writes only those shards
    /// (one of several workers; see `planRanges`). Rejects a checkpoint of other files or settings
    /// (start again without it).
    #[wasm_bindgen(constructor)]
    pub fn new(spec: JsValue) -> Result<HfConverter, JsValue> {
        let quant = Quant::parse(&get(&spec, "quant").as_string().unwrap_or_else(|| "q4a".into())).map_err(err)?;
        let shard = get(&spec, "shardSize").as_f64().map(|s| s as usize).unwrap_or(crate::weights::pack::MAX_SHARD);
        let config = bytes(&get(&spec, "config"), "config")?;
        let mut files = Vec::new();
        for f in js_sys::Array::from(&get(&spec, "files")).iter() {
            let pair = js_sys::Array::from(&f);
            let name = pair.get(0).as_string().ok_or_else(|| super::bad_input("file names must be strings"))?;
            files.push((name.clone(), bytes(&pair.get(1), &name)?));
        }
        let model = js_sys::Array::from(&get(&spec, "model")).iter().map(|h| header(&h)).collect::<Result<Vec<_>, _>>()?;
        let vae = get(&spec, "vae");
        let vae = if vae.is_object() { Some(header(&vae)?) } else { None };
        let cp = get(&spec, "checkpoint");
        let cp = if cp.is_object() { Some(bytes(&cp, "checkpoint")?) } else { None };
        let range = get(&spec, "range");
        let range = if range.is_object() {
            let a = js_sys::Array::from(&range);
            let at = |i| a.get(i).as_f64().filter(|v| *v >= 0.0 && v.fract() == 0.0).map(|v| v as usize);
            match (at(0), at(1)) {
                (Some(first), Some(end)) => Some(first..end),
                _ => return Err(super::bad_input("range must be [first, end] shard indices")),
            }
        } else {
            None
        };
        StreamConverter::new_range(quant, shard, &config, files, &model, vae.as_ref(), range, cp.as_deref()).map(HfConverter).map_err(err)
    }

    /// Number of shards of the whole pack.
    #[wasm_bindgen(js_name = packShards)]
    pub fn pack_shards(&self) -> usize {
        self.0.pack_shards()
    }

    /// At most `n` shard ranges `[[first, end], …]` of about equal work, for `n` workers.
    #[wasm_bindgen(js_name = planRanges)]
    pub fn plan_ranges(&self, n: usize) -> js_sys::Array {
        self.0.plan_ranges(n).into_iter().map(|r| js_sys::Array::of2(&(r.start as u32).into(), &(r.end as u32).into())).collect()
    }

    /// The shards this converter writes, `[first, end]`.
    #[wasm_bindgen(js_name = shardRange)]
    pub fn shard_range(&self) -> Vec<u32> {
        let r = self.0.shard_range();
        vec![r.start as u32, r.end as u32]
    }

    /// Ends a range: seals its last shard when it ends the pack (collect it with `takeSealed`)
    /// and returns the range's shard entries as JSON text (`[{file, sha256, size}]`), for
    /// `manifest`. An error if input is missing.
    #[wasm_bindgen(js_name = finishRange)]
    pub fn finish_range(&mut self) -> Result<String, JsValue> {
        let shards = self.0.finish_range().map_err(err)?;
        serde_json::to_string(&shards).map_err(|e| err(e.into()))
    }

    /// manifest.json's text for the pack made of `shards` (JSON text: every range's entries from
    /// `finishRange`, concatenated in order), checked against the plan.
    pub fn manifest(&self, shards: &str) -> Result<String, JsValue> {
        let shards: Vec<crate::weights::pack::ShardEntry> = serde_json::from_str(shards).map_err(|e| err(e.into()))?;
        let m = self.0.manifest(&shards).map_err(err)?;
        serde_json::to_string_pretty(&m).map_err(|e| err(e.into()))
    }

    /// Bytes of the finished pack (what IndexedDB will hold).
    #[wasm_bindgen(js_name = packBytes)]
    pub fn pack_bytes(&self) -> f64 {
        self.0.total_bytes() as f64
    }

    /// `[bytes to read in all, bytes read]` (only needed tensors are read).
    #[wasm_bindgen(js_name = inputBytes)]
    pub fn input_bytes(&self) -> Vec<f64> {
        let (total, done) = self.0.input_bytes();
        vec![total as f64, done as f64]
    }

    #[wasm_bindgen(js_name = currentTensor)]
    pub fn current_tensor(&self) -> Option<String> {
        self.0.current_tensor().map(String::from)
    }

    /// Names of the shards committed before this converter started (a resumed conversion).
    #[wasm_bindgen(js_name = shardCount)]
    pub fn shard_count(&self) -> usize {
        self.0.shard_count()
    }

    /// The next byte range to fetch, `{input, start, end}` (end exclusive), or null when done.
    #[wasm_bindgen(js_name = nextSpan)]
    pub fn next_span(&mut self) -> JsValue {
        match self.0.next_span() {
            Some(s) => {
                let o = js_sys::Object::new();
                js_sys::Reflect::set(&o, &"input".into(), &(s.input as u32).into()).unwrap();
                js_sys::Reflect::set(&o, &"start".into(), &(s.start as f64).into()).unwrap();
                js_sys::Reflect::set(&o, &"end".into(), &(s.end as f64).into()).unwrap();
                o.into()
            }
            None => JsValue::NULL,
        }
    }

    /// Bytes of input `input` that start at file offset `offset`.
    pub fn push(&mut self, input: usize, offset: f64, data: &[u8]) -> Result<(), JsValue> {
        self.0.push(input, offset as u64, data).map_err(err)
    }

    /// Shards sealed since the last call, in order: `[{file, sha256, data, checkpoint}]`.
    #[wasm_bindgen(js_name = takeSealed)]
    pub fn take_sealed(&mut self) -> js_sys::Array {
        let out = js_sys::Array::new();
        for s in self.0.take_sealed() {
            let o = js_sys::Object::new();
            js_sys::Reflect::set(&o, &"file".into(), &s.file.into()).unwrap();
            js_sys::Reflect::set(&o, &"sha256".into(), &s.sha256.into()).unwrap();
            js_sys::Reflect::set(&o, &"data".into(), &js_sys::Uint8Array::from(s.data.as_slice()).into()).unwrap();
            js_sys::Reflect::set(&o, &"checkpoint".into(), &js_sys::Uint8Array::from(s.checkpoint.as_slice()).into()).unwrap();
            out.push(&o);
        }
        out
    }

    /// Seals the last shard (collect it with `takeSealed`) and returns manifest.json's text.
    pub fn finish(&mut self) -> Result<String, JsValue> {
        let m = self.0.finish().map_err(err)?;
        serde_json::to_string_pretty(&m).map_err(|e| err(e.into()))
    }
}
