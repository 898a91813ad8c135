//! The wasm-bindgen API used by the web worker (`www/worker.js`): open the device, load the
//! engine from a weight pack whose shards live in IndexedDB (read through a JS callback, one
//! tensor at a time, so the model never sits whole in the wasm heap), chat with streaming,
//! questions about images, image generation with progress and previews, and cancel.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::engine::{Conversation, Engine, EngineOptions, GenerateParams};
use crate::error::{foreign_kind, kind_of, Foreign, Kind, WithKind as _};
use crate::gpu::Gpu;
use crate::image_io::Picture;
use crate::text::sampling::SamplingParams;
use crate::text::template::Message;
use crate::weights::pack::Manifest;
use crate::weights::quant::Quant;
use crate::weights::source::{Pack, ReadFuture, ShardStore};
use crate::weights::ModelSource;

pub mod convert;

#[wasm_bindgen(start)]
pub fn start() {
    // A panic traps the wasm instance, and the promise of the call that panicked never settles:
    // tell the worker (`globalThis.__janusPanic(message)`) so it can fail every pending call and
    // be replaced, instead of the page waiting forever.
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info);
        let report = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("__janusPanic")).ok();
        if let Some(f) = report.as_ref().and_then(|f| f.dyn_ref::<js_sys::Function>()) {
            let _ = f.call1(&JsValue::NULL, &JsValue::from_str(&info.to_string()));
        }
    }));
}

/// Panics on purpose, so the tests can check that a trapped engine never hangs the page.
#[wasm_bindgen(js_name = debugPanic)]
pub fn debug_panic() {
    panic!("debugPanic: a deliberate panic (tests of the worker's recovery)");
}

/// An error for JavaScript: an `Error` whose `kind` says what failed (see [`Kind`]); a kind that
/// came from a JS callback (a failed shard read, say) is passed through unchanged.
fn err(e: anyhow::Error) -> JsValue {
    let kind = foreign_kind(&e).map(str::to_string).unwrap_or_else(|| kind_of(&e).as_str().to_string());
    js_error(&format!("{e:#}"), &kind)
}

fn js_error(message: &str, kind: &str) -> JsValue {
    let js = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&js, &JsValue::from_str("kind"), &JsValue::from_str(kind));
    js.into()
}

/// A request the engine refuses (bad options, messages or images).
fn bad_input(message: &str) -> JsValue {
    js_error(message, Kind::BadInput.as_str())
}

/// A JS callback's rejection, keeping the `kind` it carried.
fn js_failure(context: &str, v: &JsValue) -> anyhow::Error {
    let kind = js_sys::Reflect::get(v, &JsValue::from_str("kind")).ok().and_then(|k| k.as_string()).unwrap_or_else(|| Kind::Internal.as_str().into());
    anyhow::Error::new(Foreign { kind, message: format!("{context}: {}", js_message(v)) })
}

fn to_js<T: serde::Serialize + ?Sized>(v: &T) -> Result<JsValue, JsValue> {
    v.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(|e| js_error(&e.to_string(), Kind::Internal.as_str()))
}

/// Opens the WebGPU device and describes the adapter (name, limits, optional features).
/// Rejects with a readable message when WebGPU is missing or too limited.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<JsValue, JsValue> {
    let gpu = Gpu::new().await.map_err(err)?;
    to_js(&gpu.summary)
}

/// Shard reads through `read(file, offset, length) → Promise<Uint8Array>` (IndexedDB in the worker).
struct JsShards {
    read: js_sys::Function,
}

impl ShardStore for JsShards {
    fn read<'a>(&'a self, shard: &'a str, offset: u64, len: u64) -> ReadFuture<'a> {
        Box::pin(async move {
            let call = self.read.call3(&JsValue::NULL, &JsValue::from_str(shard), &JsValue::from_f64(offset as f64), &JsValue::from_f64(len as f64));
            let promise = call.map_err(|e| js_failure(&format!("reading shard {shard}"), &e))?;
            let value = JsFuture::from(js_sys::Promise::from(promise)).await.map_err(|e| js_failure(&format!("reading shard {shard}"), &e))?;
            let bytes = js_sys::Uint8Array::new(&value).to_vec();
            if bytes.len() as u64 != len {
                crate::fail!(Kind::BadWeights, "shard {shard}: got {} bytes at {offset}, expected {len}", bytes.len());
            }
            Ok(bytes)
        })
    }
}

fn js_message(v: &JsValue) -> String {
    v.as_string().or_else(|| js_sys::Reflect::get(v, &"message".into()).ok().and_then(|m| m.as_string())).unwrap_or_else(|| format!("{v:?}"))
}

/// `[{role, content, images?: Uint8Array[]}]` → messages (images decoded here).
fn messages_from_js(messages: &JsValue) -> Result<Vec<Message>, JsValue> {
    if !js_sys::Array::is_array(messages) {
        return Err(bad_input("messages must be an array of {role, content, images?}"));
    }
    let get = |o: &JsValue, k: &str| js_sys::Reflect::get(o, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED);
    let mut out = Vec::new();
    for (i, m) in js_sys::Array::from(messages).iter().enumerate() {
        let role = get(&m, "role").as_string().unwrap_or_default();
        let content = get(&m, "content").as_string().ok_or_else(|| bad_input(&format!("message {}: content must be a string", i + 1)))?;
        let mut images = Vec::new();
        let imgs = get(&m, "images");
        if js_sys::Array::is_array(&imgs) {
            for (j, b) in js_sys::Array::from(&imgs).iter().enumerate() {
                let bytes = js_sys::Uint8Array::new(&b).to_vec();
                let pic = Picture::decode(&bytes).map_err(|e| bad_input(&format!("message {}, image {}: {e:#}", i + 1, j + 1)))?;
                images.push(Arc::new(pic));
            }
        }
        out.push(match role.to_ascii_lowercase().as_str() {
            "user" => Message::user_with_images(&content, images),
            "assistant" => Message::assistant(content),
            r => return Err(bad_input(&format!("message {}: unknown role '{r}' (use 'user' or 'assistant')", i + 1))),
        });
    }
    Ok(out)
}

/// An options object, or the defaults when it is undefined or null.
fn options_from_js<T: serde::de::DeserializeOwned + Default>(options: JsValue) -> Result<T, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(options).map_err(|e| bad_input(&format!("bad options: {e}")))
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ChatOptions {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    max_tokens: Option<usize>,
    /// The opt-in `fast` setting (f16 KV caches) for this turn.
    fast: bool,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GenerateOptions {
    steps: Option<usize>,
    cfg: Option<f32>,
    seed: Option<u64>,
    preview: bool,
    /// The opt-in `fast` setting (f16 KV caches) for this picture.
    fast: bool,
}

/// A loaded engine with its conversation (the KV cache of the last exchange is kept, so a
/// follow-up question only prefills the new part).
#[wasm_bindgen]
pub struct WebEngine {
    engine: Engine,
    conv: Conversation,
    cancel: Rc<Cell<bool>>,
}

#[wasm_bindgen]
pub struct CancelHandle(Rc<Cell<bool>>);

#[wasm_bindgen]
impl CancelHandle {
    pub fn cancel(&self) {
        self.0.set(true);
    }
}

/// Loads the engine from a pack: `manifest` is manifest.json's text, `read_shard(file, offset,
/// length)` returns a Promise of the bytes, `on_progress(done, total, what)` reports the upload.
#[wasm_bindgen(js_name = loadEngine)]
pub async fn load_engine(manifest: String, read_shard: js_sys::Function, quant: String, on_progress: js_sys::Function) -> Result<WebEngine, JsValue> {
    let manifest = Manifest::parse(manifest.as_bytes()).kind(Kind::BadWeights).map_err(err)?;
    let preset = if quant.is_empty() { manifest.preset } else { Quant::parse(&quant).kind(Kind::BadInput).map_err(err)? };
    let src = ModelSource::Pack(Pack::new(manifest, Box::new(JsShards { read: read_shard })));
    let gpu = Gpu::new().await.map_err(err)?;
    let opts = EngineOptions { preset, ..Default::default() };
    let engine = Engine::load(gpu, &src, opts, |done, total, what| {
        let _ = on_progress.call3(&JsValue::NULL, &JsValue::from(done as u32), &JsValue::from(total as u32), &JsValue::from_str(what));
    })
    .await
    .map_err(err)?;
    Ok(WebEngine { engine, conv: Conversation::new(), cancel: Rc::new(Cell::new(false)) })
}

#[wasm_bindgen]
impl WebEngine {
    /// Adapter and model facts for the UI.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let c = &self.engine.cfg;
        let info = serde_json::json!({
            "adapter": self.engine.gpu.summary,
            "preset": self.engine.opts.preset.to_string(),
            "context": self.engine.opts.context,
            "imageSize": c.gen.image_size,
            "latent": self.engine.latent_shape(),
            "hasVae": self.engine.vae.is_some(),
            "gpuTuning": self.engine.gpu.gpu_tuned(),
            "subgroupReductions": self.engine.gpu.subgroup_reduce(),
            "subgroupCheck": self.engine.gpu.subgroup_check(),
            "shapeCheck": self.engine.gpu.shape_check(),
        });
        to_js(&info)
    }

    /// Chooses kernel shapes for a real GPU (the default) or for a CPU rasteriser such as
    /// SwiftShader, which wgpu cannot recognise from inside the browser. Call before `compileKernels`.
    #[wasm_bindgen(js_name = setGpuTuning)]
    pub fn set_gpu_tuning(&self, on: bool) {
        self.engine.gpu.set_gpu_tuned(on);
    }

    /// Chooses staged activations in the GPU-shape matrix–vector kernels (off by default; see
    /// `Gpu::stage_x`), so that tests compile and run that path in the browser.
    #[wasm_bindgen(js_name = setStagedActivations)]
    pub fn set_staged_activations(&self, on: bool) {
        self.engine.gpu.set_stage_x(on);
    }

    /// Chooses how many passes of weight loads a GPU-shape matrix–vector lane batches (1, the
    /// default, to 8; see `Gpu::matvec_loads`), so that tests compile and run the batches in the
    /// browser.
    #[wasm_bindgen(js_name = setMatvecLoads)]
    pub fn set_matvec_loads(&self, n: u32) {
        self.engine.gpu.set_matvec_loads(n);
    }

    /// Allows (the default) or forbids subgroup operations in the workgroup reductions, so that
    /// tests run both paths in the browser.
    #[wasm_bindgen(js_name = setSubgroupReductions)]
    pub fn set_subgroup_reductions(&self, on: bool) {
        self.engine.gpu.set_subgroup_reduce_allowed(on);
    }

    /// Test hook: makes the kernels assume subgroups of `width` lanes (undefined: the device's own
    /// width), allows subgroups again and runs the subgroup self-check (`gpu::selfcheck`), which
    /// turns them off where they disagree with the workgroup tree. Resolves to its verdict.
    #[wasm_bindgen(js_name = debugSubgroupCheck)]
    pub async fn debug_subgroup_check(&self, width: Option<u32>) -> Result<JsValue, JsValue> {
        let gpu = &self.engine.gpu;
        gpu.pretend_subgroup_width(width);
        gpu.set_subgroup_reduce_allowed(true);
        gpu.set_sg8_allowed(true);
        let check = crate::gpu::selfcheck::check_subgroups(gpu).await.map_err(err)?;
        // Through serde_json, as `info()`: a difference that is not finite becomes null.
        to_js(&serde_json::to_value(&check).map_err(|e| js_error(&e.to_string(), Kind::Internal.as_str()))?)
    }

    /// Checks the device's subgroup kernels against the workgroup tree (see `info().subgroupCheck`),
    /// then compiles the chat and image-question shaders (the load's last phase), so the first
    /// message does not wait for them; returns the number of pipelines compiled.
    #[wasm_bindgen(js_name = compileKernels)]
    pub async fn compile_kernels(&self) -> Result<u32, JsValue> {
        self.engine.compile_kernels().await.map(|n| n as u32).map_err(err)
    }

    /// A handle whose `cancel()` stops the running chat or generation at its next step. (The
    /// engine itself is borrowed while a call runs, so cancelling goes through this handle.)
    #[wasm_bindgen(js_name = cancelHandle)]
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel.clone())
    }

    /// Answers the last user message of `messages` ([{role: 'user'|'assistant', content,
    /// images?: Uint8Array[]}]), calling `on_token(text)` as text arrives. Options: temperature,
    /// topP, topK, seed, maxTokens, fast (f16 KV cache). Resolves to `{text, finish,
    /// promptTokens, reusedTokens, cacheBytes}` (cacheBytes: the GPU memory of the conversation's
    /// KV cache).
    pub async fn chat(&mut self, messages: JsValue, options: JsValue, on_token: js_sys::Function) -> Result<JsValue, JsValue> {
        let out = messages_from_js(&messages)?;
        let o: ChatOptions = options_from_js(options)?;
        let d = SamplingParams::default();
        let params = SamplingParams {
            temperature: o.temperature.unwrap_or(d.temperature),
            top_p: o.top_p.unwrap_or(d.top_p),
            top_k: o.top_k.unwrap_or(d.top_k),
            seed: o.seed.unwrap_or(d.seed),
            max_tokens: o.max_tokens.unwrap_or(d.max_tokens),
        };
        self.conv.messages = out;
        self.engine.set_fast(o.fast);
        self.cancel.set(false);
        let cancel = self.cancel.clone();
        let reply = self
            .engine
            .chat(&mut self.conv, &params, |t| {
                let _ = on_token.call1(&JsValue::NULL, &JsValue::from_str(t));
                !cancel.get()
            })
            .await
            .map_err(err)?;
        let v = serde_json::json!({
            "text": reply.text, "finish": reply.finish, "promptTokens": reply.prompt_tokens, "reusedTokens": reply.reused_tokens,
            "cacheBytes": self.conv.cache_bytes(),
        });
        to_js(&v)
    }

    /// Draws an image (options: steps, cfg, seed, preview, fast); `noise` (Float32Array of the
    /// latent shape, or undefined) overrides the seeded start; `on_step(step, steps, previewRgba | undefined, side)`. Resolves to the PNG
    /// bytes, or `undefined` when cancelled.
    pub async fn generate(
        &mut self,
        prompt: String,
        options: JsValue,
        noise: Option<js_sys::Float32Array>,
        on_step: js_sys::Function,
    ) -> Result<Option<js_sys::Uint8Array>, JsValue> {
        let o: GenerateOptions = options_from_js(options)?;
        let d = GenerateParams::default();
        let params = GenerateParams {
            steps: o.steps.unwrap_or(d.steps),
            cfg: o.cfg.unwrap_or(d.cfg),
            seed: o.seed.unwrap_or(d.seed),
            noise: noise.map(|n| n.to_vec()),
            preview: o.preview,
        };
        self.engine.set_fast(o.fast);
        self.cancel.set(false);
        let cancel = self.cancel.clone();
        let img = self
            .engine
            .generate_image(&prompt, &params, |s| {
                let preview = s.preview.map(|p| JsValue::from(js_sys::Uint8ClampedArray::from(p))).unwrap_or(JsValue::UNDEFINED);
                let args = js_sys::Array::of4(&JsValue::from(s.step as u32), &JsValue::from(s.steps as u32), &preview, &JsValue::from(s.preview_side as u32));
                let _ = on_step.apply(&JsValue::NULL, &args);
                !cancel.get()
            })
            .await
            .map_err(err)?;
        match img {
            Some(img) => Ok(Some(js_sys::Uint8Array::from(img.png().map_err(err)?.as_slice()))),
            None => Ok(None),
        }
    }

    /// Forgets the conversation (and its KV cache).
    pub fn reset(&mut self) {
        self.conv = Conversation::new();
    }
}
