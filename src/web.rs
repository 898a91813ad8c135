//! The wasm-bindgen API used by the web worker. This first cut exposes the device probe; the
//! engine API (load, chat, understand, generate, cancel, unload) follows with the browser app.

use wasm_bindgen::prelude::*;

use crate::gpu::Gpu;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Opens the WebGPU device and describes the adapter (name, limits, optional features).
/// Rejects with a readable message when WebGPU is missing or too limited.
#[wasm_bindgen(js_name = adapterInfo)]
pub async fn adapter_info() -> Result<JsValue, JsError> {
    let gpu = Gpu::new().await.map_err(|e| JsError::new(&format!("{e:#}")))?;
    serde_wasm_bindgen::to_value(&gpu.summary).map_err(|e| JsError::new(&e.to_string()))
}
