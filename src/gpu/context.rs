//! Device creation (native and web from the same code), limits, optional features and the
//! pipeline cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::error::{tagged, Kind};
use crate::weights::quant::Quant;

/// The portable per-binding budget: every storage binding the engine creates stays at or below
/// this size, whatever the adapter allows, so the same weight layout works on every WebGPU device.
pub const PORTABLE_MAX_BINDING: u64 = 128 << 20;
/// The portable per-buffer budget (WebGPU's default `maxBufferSize`).
pub const PORTABLE_MAX_BUFFER: u64 = 256 << 20;

/// Optional speed-ups detected at run time; never required.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GpuFeatures {
    pub shader_f16: bool,
    pub subgroups: bool,
    /// The subgroup width when the adapter has subgroups of one fixed width (8 on lavapipe's
    /// 256-bit SIMD); `None` without subgroups or where the width varies.
    pub subgroup_size: Option<u32>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub features: GpuFeatures,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

/// See [`Gpu::oom_scope`]; dropped unchecked (a failed request), it is popped unread.
pub struct OomScope(wgpu::ErrorScopeGuard);

impl OomScope {
    /// Fails with [`Kind::OutOfMemory`] when an allocation since [`Gpu::oom_scope`] did not fit.
    pub async fn check(self, what: &str) -> Result<()> {
        match self.0.pop().await {
            Some(e) => Err(tagged(Kind::OutOfMemory, format!("the GPU has no room for {what} ({e})"))),
            None => Ok(()),
        }
    }
}

/// One WebGPU device with its queue and a cache of compiled compute pipelines.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    arenas: Mutex<Vec<wgpu::Buffer>>,
    lost: Arc<Mutex<Option<String>>>,
    /// The first GPU error nobody caught (validation, out of memory, a buffer over the limits):
    /// reported by the next `check_alive`, so no GPU error passes silently or panics.
    failed: Arc<Mutex<Option<(Kind, String)>>>,
    /// Extra cap on bindings (tests force splitting and banding on small data with it).
    binding_cap: std::sync::atomic::AtomicU64,
    /// Kernels are shaped for a real GPU (many small workgroups: 64×64 matrix tiles, decode
    /// attention split over the keys) rather than for a CPU rasteriser such as lavapipe or
    /// SwiftShader, where a few large workgroups already fill the cores and run faster.
    gpu_tuned: std::sync::atomic::AtomicBool,
    /// Kernels written for 8-lane subgroups may be used where the adapter's are (see [`Gpu::sg8`]).
    sg8_allowed: std::sync::atomic::AtomicBool,
    /// Workgroup reductions may use subgroup operations where the adapter has them (see
    /// [`Gpu::subgroup_reduce`]).
    subgroup_reduce_allowed: std::sync::atomic::AtomicBool,
    /// A subgroup width to assume instead of the adapter's (0: the adapter's); tests pretend a
    /// misreported width with it (see [`Gpu::pretend_subgroup_width`]).
    pretend_width: std::sync::atomic::AtomicU32,
    /// What the last subgroup self-check on this device found (see `selfcheck::check_subgroups`).
    pub(crate) subgroup_check: Mutex<Option<super::selfcheck::SubgroupCheck>>,
    /// What the last kernel-shape self-check on this device found (see `selfcheck::check_shapes`).
    pub(crate) shape_check: Mutex<Option<super::selfcheck::ShapeCheck>>,
    /// Shader modules are created without wgpu's runtime checks and pipelines without
    /// zero-initialised workgroup memory (native only; see [`Gpu::trusted_shaders`]).
    trusted_shaders: std::sync::atomic::AtomicBool,
    /// The `fast` setting's f16 arithmetic may be used where the device has `shader-f16` (see
    /// [`Gpu::f16_math`]); off unless asked for.
    f16_math: std::sync::atomic::AtomicBool,
    /// GPU-shape products of many rows take the 128×128 register tile (see [`Gpu::tile128`]).
    tile128: std::sync::atomic::AtomicBool,
    /// GPU-shape matrix–vector products stage their activations in workgroup memory (see
    /// [`Gpu::stage_x`]).
    stage_x: std::sync::atomic::AtomicBool,
    /// Passes of weight loads a GPU-shape matrix–vector lane issues together (see
    /// [`Gpu::matvec_loads`]).
    matvec_loads: std::sync::atomic::AtomicU32,
    /// The formats of the weights uploaded so far, one bit per [`Quant`] (see
    /// [`Gpu::weight_formats`]).
    weight_formats: std::sync::atomic::AtomicU32,
    /// Bind groups created so far (the recorder reuses them where it can; see `BindCache`).
    pub(crate) bind_groups: std::sync::atomic::AtomicU64,
    /// Kernel-private scratch buffers by name, grown on demand (see [`Gpu::scratch`]).
    scratch: Mutex<HashMap<&'static str, wgpu::Buffer>>,
    /// Per-kernel timestamps, when opened with [`Gpu::new_profiling`] on an adapter that has them.
    pub(crate) profile: Option<Mutex<super::profile::Profile>>,
}

impl Gpu {
    /// Picks the best adapter (high performance) and opens a device with the adapter's own
    /// maximum buffer and binding sizes, plus `shader-f16` / `subgroups` when offered.
    pub async fn new() -> Result<Self> {
        Self::open(false).await
    }

    /// [`Gpu::new`] with per-kernel GPU timing (timestamp queries), when the adapter offers it
    /// (native only). See [`Gpu::take_profile`].
    pub async fn new_profiling() -> Result<Self> {
        Self::open(true).await
    }

    async fn open(profile: bool) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                tagged(
                    Kind::Webgpu,
                    format!(
                        "no WebGPU/Vulkan/Metal/DX12 adapter found ({e}); on Linux without a GPU install \
                     Mesa's lavapipe (apt-get install mesa-vulkan-drivers)"
                    ),
                )
            })?;
        Self::from_adapter_with(adapter, profile).await
    }

    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        Self::from_adapter_with(adapter, false).await
    }

    async fn from_adapter_with(adapter: wgpu::Adapter, profile: bool) -> Result<Self> {
        let info = adapter.get_info();
        let alimits = adapter.limits();
        let afeatures = adapter.features();
        let mut features = wgpu::Features::empty();
        let mut gf = GpuFeatures::default();
        if afeatures.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
            gf.shader_f16 = true;
        }
        if afeatures.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        let profile = profile && !cfg!(target_arch = "wasm32") && afeatures.contains(wgpu::Features::TIMESTAMP_QUERY);
        if profile {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let mut limits = wgpu::Limits::downlevel_defaults();
        // Ask for what the adapter has: big vocab tensors and KV caches want large buffers,
        // although the engine itself never binds more than PORTABLE_MAX_BINDING at once.
        limits.max_buffer_size = alimits.max_buffer_size;
        limits.max_storage_buffer_binding_size = alimits.max_storage_buffer_binding_size;
        // The kernels keep to WebGPU's default limits below, so that they run on every device;
        // asking for no more than those makes every test adapter (and the browser's validation)
        // hold them to it.
        limits.max_storage_buffers_per_shader_stage = alimits.max_storage_buffers_per_shader_stage.min(8);
        limits.max_compute_workgroup_storage_size = alimits.max_compute_workgroup_storage_size.min(16384);
        limits.max_compute_invocations_per_workgroup = alimits.max_compute_invocations_per_workgroup.min(256);
        limits.max_compute_workgroup_size_x = alimits.max_compute_workgroup_size_x.min(256);
        limits.max_compute_workgroup_size_y = alimits.max_compute_workgroup_size_y.min(256);
        limits.max_compute_workgroups_per_dimension = alimits.max_compute_workgroups_per_dimension;
        limits.max_bind_groups = alimits.max_bind_groups.min(4);
        if limits.max_compute_workgroup_storage_size < 16384 || limits.max_compute_invocations_per_workgroup < 256 {
            return Err(tagged(
                Kind::Webgpu,
                format!(
                    "the GPU adapter '{}' is too limited: needs 16 KiB workgroup storage and 256 invocations \
                 per workgroup (has {} B, {})",
                    info.name, limits.max_compute_workgroup_storage_size, limits.max_compute_invocations_per_workgroup
                ),
            ));
        }
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("janusflow"),
                required_features: features,
                required_limits: limits.clone(),
                memory_hints: wgpu::MemoryHints::Performance,
                ..Default::default()
            })
            .await
            .map_err(|e| tagged(Kind::Webgpu, format!("could not open the GPU device: {e}")))?;
        // wgpu 30 cannot ask for subgroups in the browser; the worker's requestDevice wrapper does
        // (www/worker.js) and says whether the device got them and WGSL has `subgroup_id`.
        gf.subgroups = afeatures.contains(wgpu::Features::SUBGROUP) || web_device_subgroups();
        if gf.subgroups {
            gf.subgroup_size = (info.subgroup_min_size == info.subgroup_max_size).then_some(info.subgroup_min_size);
        }
        let lost = Arc::new(Mutex::new(None));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lost2.lock().unwrap() = Some(format!("{reason:?}: {msg}"));
        });
        // wgpu's default handler panics; keep the first error for the next check instead.
        let failed = Arc::new(Mutex::new(None));
        let failed2 = failed.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let kind = match &e {
                wgpu::Error::OutOfMemory { .. } => Kind::OutOfMemory,
                // A size over the adapter's limits is the one validation error bad input can cause.
                wgpu::Error::Validation { description, .. } if description.contains("max") || description.contains("limit") => Kind::Limits,
                _ => Kind::Internal,
            };
            failed2.lock().unwrap().get_or_insert((kind, e.to_string()));
        }));
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
            features: gf,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        };
        Ok(Self {
            device,
            queue,
            summary,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            arenas: Mutex::new(Vec::new()),
            lost,
            failed,
            binding_cap: u64::MAX.into(),
            gpu_tuned: (info.device_type != wgpu::DeviceType::Cpu).into(),
            sg8_allowed: true.into(),
            subgroup_reduce_allowed: true.into(),
            pretend_width: 0.into(),
            subgroup_check: Mutex::new(None),
            shape_check: Mutex::new(None),
            trusted_shaders: true.into(),
            f16_math: false.into(),
            tile128: false.into(),
            stage_x: false.into(),
            matvec_loads: 1.into(),
            weight_formats: 0.into(),
            bind_groups: 0.into(),
            scratch: Mutex::new(HashMap::new()),
            profile: profile.then(Default::default),
        })
    }

    /// The largest storage binding the engine will create.
    pub fn max_binding(&self) -> u64 {
        PORTABLE_MAX_BINDING.min(self.summary.max_storage_buffer_binding_size).min(self.binding_cap.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Lowers the binding size the engine uses (for tests of the splitting paths). Under a cap a
    /// storage binding over it is an error, as on a device whose limit is that small: the
    /// kernels' row chunks, bands and windows must keep every binding within it.
    pub fn set_binding_cap(&self, bytes: u64) {
        self.binding_cap.store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Fails the device (see [`Gpu::check_alive`]) when a storage binding of `bytes` exceeds the
    /// cap set by [`Gpu::set_binding_cap`].
    pub(crate) fn check_binding(&self, binding: usize, bytes: u64) {
        let cap = self.binding_cap.load(std::sync::atomic::Ordering::Relaxed);
        if bytes > cap {
            self.fail(Kind::Limits, format!("a kernel's storage binding {binding} holds {bytes} bytes, over the {cap}-byte binding limit"));
        }
    }

    /// Whether kernels are shaped for a real GPU (see the field) rather than a CPU rasteriser.
    pub fn gpu_tuned(&self) -> bool {
        self.gpu_tuned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the kernel shapes (the browser knows its adapter better than wgpu does there;
    /// tests run both shapes on any adapter).
    pub fn set_gpu_tuned(&self, on: bool) {
        self.gpu_tuned.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether kernels written for subgroups of exactly 8 lanes (the CPU-rasteriser convolution)
    /// can run: the adapter's subgroups have that fixed width, and tests have not turned them off.
    pub fn sg8(&self) -> bool {
        self.subgroup_width() == Some(8) && self.sg8_allowed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the 8-lane subgroup kernels are allowed (the default) where the adapter has them.
    pub fn sg8_allowed(&self) -> bool {
        self.sg8_allowed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Allows or forbids the 8-lane subgroup kernels (tests cover the fallbacks on any adapter).
    pub fn set_sg8_allowed(&self, on: bool) {
        self.sg8_allowed.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The subgroup width the workgroup reductions (reduce.wgsl) may count on: the device has
    /// subgroups of one fixed power-of-two width (in the browser also WGSL's `subgroup_id`
    /// builtin, see `web_device_subgroups`), and tests have not turned them off.
    pub fn subgroup_reduce(&self) -> Option<u32> {
        let w = self.subgroup_width().filter(|w| w.is_power_of_two() && (4..=128).contains(w))?;
        self.subgroup_reduce_allowed.load(std::sync::atomic::Ordering::Relaxed).then_some(w)
    }

    /// Whether subgroup operations are allowed (the default) in the workgroup reductions.
    pub fn subgroup_reduce_allowed(&self) -> bool {
        self.subgroup_reduce_allowed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Allows or forbids subgroup operations in the workgroup reductions (tests run both paths).
    pub fn set_subgroup_reduce_allowed(&self, on: bool) {
        self.subgroup_reduce_allowed.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The fixed subgroup width kernels are specialised for: the adapter's, unless a test pretends
    /// another.
    fn subgroup_width(&self) -> Option<u32> {
        let f = &self.summary.features;
        match self.pretend_width.load(std::sync::atomic::Ordering::Relaxed) {
            0 => f.subgroup_size,
            w => f.subgroups.then_some(w),
        }
    }

    /// Makes the kernels assume subgroups of `width` lanes (`None`: the adapter's width), as a
    /// driver that misreports its width would; tests show that the subgroup self-check catches it.
    /// Forgets the last checks' verdicts, which were about another width.
    pub fn pretend_subgroup_width(&self, width: Option<u32>) {
        self.pretend_width.store(width.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        *self.subgroup_check.lock().unwrap() = None;
        *self.shape_check.lock().unwrap() = None;
    }

    /// What the last subgroup self-check on this device found, if one has run (see
    /// `selfcheck::check_subgroups`).
    pub fn subgroup_check(&self) -> Option<super::selfcheck::SubgroupCheck> {
        self.subgroup_check.lock().unwrap().clone()
    }

    /// What the last kernel-shape self-check on this device found, if one has run (see
    /// `selfcheck::check_shapes`).
    pub fn shape_check(&self) -> Option<super::selfcheck::ShapeCheck> {
        self.shape_check.lock().unwrap().clone()
    }

    /// Whether shaders run without wgpu's runtime checks (buffer index clamping, loop bounding,
    /// division guards) and without zeroing workgroup memory first. Native only: there our own
    /// WGSL is the only shader code, every kernel guards its indices itself, bounds its loops and
    /// writes workgroup memory before reading it, and the kernel tests run both ways. The browser
    /// always keeps the checked path (the WebGPU implementation decides there anyway).
    pub fn trusted_shaders(&self) -> bool {
        !cfg!(target_arch = "wasm32") && self.trusted_shaders.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Allows or forbids trusted shaders (`bench --checked-shaders` and the tests compare).
    pub fn set_trusted_shaders(&self, on: bool) {
        self.trusted_shaders.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the GPU-shape matrix tile multiplies in f16 (the opt-in `fast` setting, where the
    /// device has `shader-f16`): its workgroup tiles hold f16, and each slice of K (16 deep in the
    /// 64×64 tile, 8 in the 128×128 one) is summed in f16 before it joins the f32 accumulator.
    pub fn f16_math(&self) -> bool {
        self.summary.features.shader_f16 && self.f16_math.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Allows or forbids f16 arithmetic (the `fast` setting; tests compare both).
    pub fn set_f16_math(&self, on: bool) {
        self.f16_math.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether GPU-shape matrix products of more than 64 rows take the 128×128 tile with 8×8
    /// outputs per invocation and double-buffered slices (gemm_tile128.wgsl) instead of the 64×64
    /// one. Off until timed on real GPUs (`bench --tile128`, benchmarks/gpu-run.sh).
    pub fn tile128(&self) -> bool {
        self.tile128.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the 128×128 tile for large GPU-shape products (tests and benchmarks compare both).
    pub fn set_tile128(&self, on: bool) {
        self.tile128.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The formats of the weights on this device ([`Weight::upload`](super::Weight::upload) notes
    /// each), in [`Quant::ALL`] order. Each format has its own weight walk in the products, so the
    /// device self-check probes the products in every one of them.
    pub fn weight_formats(&self) -> Vec<Quant> {
        let mask = self.weight_formats.load(std::sync::atomic::Ordering::Relaxed);
        Quant::ALL.into_iter().filter(|&q| mask & (1 << q as u32) != 0).collect()
    }

    pub(crate) fn note_weight_format(&self, q: Quant) {
        self.weight_formats.fetch_or(1 << q as u32, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the GPU-shape matrix–vector kernels copy the activation row into workgroup memory a
    /// chunk at a time, so each workgroup reads it once instead of once per row and adds up each
    /// 4-bit group's activations once for its 8 rows (STAGE_X in matvec_rows.wgsl). Off until timed
    /// on real GPUs (`bench --stage-x`, benchmarks/gpu-run.sh).
    pub fn stage_x(&self) -> bool {
        self.stage_x.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses staged activations for the GPU-shape matrix–vector kernels (tests and benchmarks
    /// compare both).
    pub fn set_stage_x(&self, on: bool) {
        self.stage_x.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many passes of 32 groups (or 16 B runs) per row a GPU-shape matrix–vector lane loads
    /// before its first multiply (LOADS in matvec_rows.wgsl): 1 (one pass at a time) unless chosen
    /// (`bench --matvec-loads`, benchmarks/gpu-run.sh); 2 and 4 are slower on lavapipe.
    pub fn matvec_loads(&self) -> u32 {
        self.matvec_loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Chooses the passes of loads per batch (1 to 8; tests and benchmarks compare).
    pub fn set_matvec_loads(&self, n: u32) {
        self.matvec_loads.store(n.clamp(1, 8), std::sync::atomic::Ordering::Relaxed);
    }

    /// `Some(reason)` once the device has been lost; every later call fails with it.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap().clone()
    }

    /// Fails once the device is lost or a GPU error went uncaught (see `failed`).
    pub fn check_alive(&self) -> Result<()> {
        if let Some(r) = self.lost_reason() {
            return Err(tagged(Kind::DeviceLost, format!("the GPU device was lost ({r}); reload the engine")));
        }
        match self.failed.lock().unwrap().clone() {
            Some((Kind::OutOfMemory, e)) => Err(tagged(Kind::OutOfMemory, format!("the GPU ran out of memory ({e})"))),
            Some((Kind::Limits, e)) => Err(tagged(Kind::Limits, format!("the model needs more than this GPU adapter allows: {e}"))),
            Some((kind, e)) => Err(tagged(kind, format!("GPU error: {e}"))),
            None => Ok(()),
        }
    }

    /// Records a GPU failure found on the host side (reported by the next `check_alive`).
    fn fail(&self, kind: Kind, message: String) {
        self.failed.lock().unwrap().get_or_insert((kind, message));
    }

    /// Compiles (once) the pipeline for `key`; `source` is only called on a cache miss.
    pub fn pipeline(&self, key: &str, source: impl FnOnce() -> String) -> Arc<wgpu::ComputePipeline> {
        let trusted = self.trusted_shaders();
        let key = if trusted { format!("{key}:trusted") } else { key.to_string() };
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let src = source();
        // An explicit layout (not the shader's automatic one) so that the parameter block can be
        // a dynamic offset: a bind group then stays valid from one token to the next and can be
        // reused (see `Recorder`), instead of one being created per dispatch.
        let entries = super::shader::layout_entries(&src);
        let bind_layout = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&key), entries: &entries });
        let layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&key),
            bind_group_layouts: &[Some(&bind_layout)],
            immediate_size: 0,
        });
        let desc = wgpu::ShaderModuleDescriptor { label: Some(&key), source: wgpu::ShaderSource::Wgsl(src.into()) };
        let module = if trusted {
            // SAFETY: our kernels only (see `trusted_shaders`): indices guarded in WGSL, every loop
            // bounded by its parameters, no division by a value that can be zero.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        } else {
            self.device.create_shader_module(desc)
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions { zero_initialize_workgroup_memory: !trusted, ..Default::default() },
            cache: None,
        });
        let p = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, p.clone());
        p
    }

    /// The key `pipeline` was compiled under.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn pipeline_name(&self, pipeline: &Arc<wgpu::ComputePipeline>) -> Arc<str> {
        // A scan of the cache (a few dozen entries), only ever done while profiling.
        let cache = self.pipelines.lock().unwrap();
        cache.iter().find(|(_, p)| Arc::ptr_eq(p, pipeline)).map(|(k, _)| k.as_str().into()).unwrap_or_else(|| "?".into())
    }

    /// Whether per-kernel timing is on.
    pub fn profiling(&self) -> bool {
        self.profile.is_some()
    }

    /// The per-kernel GPU times gathered since the last call (None unless profiling).
    pub fn take_profile(&self) -> Option<super::profile::Profile> {
        self.profile.as_ref().map(|p| std::mem::take(&mut *p.lock().unwrap()))
    }

    pub(crate) fn take_arena(&self) -> Option<wgpu::Buffer> {
        self.arenas.lock().unwrap().pop()
    }

    pub(crate) fn return_arena(&self, b: wgpu::Buffer) {
        self.arenas.lock().unwrap().push(b);
    }

    /// How many bind groups this device has created (a host-overhead figure for the benchmark).
    pub fn bind_groups_created(&self) -> u64 {
        self.bind_groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn pipeline_count(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    /// An out-of-memory error scope around a request's allocations (a chat's KV cache, a
    /// picture's work buffers), checked with [`OomScope::check`]: an allocation the GPU cannot
    /// make then fails this request with [`Kind::OutOfMemory`], saying what did not fit, instead
    /// of being an uncaught error that fails every later request too (see `failed`), so a smaller
    /// request (the fast setting's f16 cache, say) can still run.
    pub fn oom_scope(&self) -> OomScope {
        OomScope(self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory))
    }

    /// A storage buffer. One larger than the adapter allows is not created (wgpu would report a
    /// validation error for it and every use): the failure is recorded for `check_alive` and a
    /// placeholder is returned, so the caller's next check fails with a clear message.
    pub fn storage_buffer(&self, label: &str, size: u64) -> wgpu::Buffer {
        let mut size = size.max(16).next_multiple_of(4);
        if size > self.limits.max_buffer_size {
            self.fail(
                Kind::Limits,
                format!("buffer '{label}' needs {} MiB, the adapter's largest buffer is {} MiB", size >> 20, self.limits.max_buffer_size >> 20),
            );
            size = 16;
        }
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer of at least `bytes` private to one kernel family, reused by every call and
    /// kept for the device's lifetime (it is small: attention partials are ~0.5 MiB at 4096 keys):
    /// dispatches run in recording order, so one call's use ends before the next one's begins.
    /// A larger request replaces it (bind groups already recorded keep the old one alive).
    pub fn scratch(&self, name: &'static str, bytes: u64) -> wgpu::Buffer {
        let mut map = self.scratch.lock().unwrap();
        match map.get(name) {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.storage_buffer(name, bytes.next_power_of_two());
                map.insert(name, b.clone());
                b
            }
        }
    }

    pub fn storage_buffer_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let buf = self.storage_buffer(label, data.len() as u64);
        if !data.is_empty() {
            if data.len() % 4 == 0 {
                self.queue.write_buffer(&buf, 0, data);
            } else {
                let mut padded = data.to_vec();
                padded.resize(data.len().next_multiple_of(4), 0);
                self.queue.write_buffer(&buf, 0, &padded);
            }
        }
        buf
    }

    /// Reads a buffer range back to the CPU (tests, debugging, small results).
    pub async fn read_bytes(&self, buf: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        map_read(self, &staging).await
    }

    pub async fn read_f32(&self, buf: &wgpu::Buffer, offset_elems: usize, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes(buf, offset_elems as u64 * 4, len as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// Maps a MAP_READ buffer and copies its contents out.
pub async fn map_read(gpu: &Gpu, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
    let mapping = map_start(staging);
    map_finish(gpu, staging, mapping, None).await
}

/// A map of a readback buffer, requested (see [`map_start`]) and not yet waited for.
pub type Mapping = futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Requests the map of a MAP_READ buffer. A browser resolves it once all work submitted before
/// the request is done, so a readback requested before the next step is sent ahead does not wait
/// for that step.
pub fn map_start(staging: &wgpu::Buffer) -> Mapping {
    let (tx, rx) = futures_channel::oneshot::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    rx
}

/// Waits for a [`map_start`] request and copies the contents out. Natively it waits for
/// submission `index`, the one that fills the buffer (all work so far when `None`), not for work
/// queued after it.
pub async fn map_finish(gpu: &Gpu, staging: &wgpu::Buffer, rx: Mapping, index: Option<wgpu::SubmissionIndex>) -> Result<Vec<u8>> {
    #[cfg(not(target_arch = "wasm32"))]
    gpu.device.poll(wgpu::PollType::Wait { submission_index: index, timeout: None }).map_err(|e| anyhow!("GPU poll failed: {e}"))?;
    #[cfg(target_arch = "wasm32")]
    let _ = index;
    // A readback fails when the device is lost mid-call: report the loss, not a generic failure.
    let mapped = rx.await.map_err(|_| anyhow!("GPU readback was cancelled")).and_then(|r| r.map_err(|e| anyhow!("GPU readback failed: {e}")));
    gpu.check_alive()?;
    mapped?;
    let data = staging.slice(..).get_mapped_range().map_err(|e| anyhow!("GPU readback failed: {e:?}"))?.to_vec();
    staging.unmap();
    Ok(data)
}

/// Whether the browser device has `subgroups` and WGSL offers `subgroup_id`, as the worker's
/// `requestDevice` wrapper (www/worker.js) records in `self.janusflowSubgroups` for the device it
/// has just opened. Outside such a worker (no wrapper): no.
#[cfg(target_arch = "wasm32")]
fn web_device_subgroups() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"janusflowSubgroups".into()).map(|v| v.is_truthy()).unwrap_or(false)
}

#[cfg(not(target_arch = "wasm32"))]
fn web_device_subgroups() -> bool {
    false
}
