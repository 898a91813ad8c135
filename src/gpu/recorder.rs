//! Records a whole forward pass (many dispatches) into one command encoder and submits it once.
//!
//! Every dispatch gets its small uniform parameter block from one arena buffer: the blocks are
//! collected on the CPU and written with a single `write_buffer` just before the submit. Queue
//! ordering makes it safe to reuse the arena for the next submit.
//!
//! The block is bound with a dynamic offset, so a bind group depends only on the pipeline and the
//! buffers. A recorder given a [`BindCache`] reuses the bind groups of earlier submits: a decoded
//! token or a flow step binds the same buffers as the one before, and creating ~300 bind groups
//! per token was most of the host's recording time (and in a browser, each is a call into the
//! GPU process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::Gpu;

/// A buffer window for a binding: (buffer, byte offset, byte size or the rest of the buffer).
pub type Range<'b> = (&'b wgpu::Buffer, u64, Option<u64>);

const SLOT: u64 = 256; // minUniformBufferOffsetAlignment on every WebGPU device
const SLOTS: u64 = 2048;

/// What a bind group binds: the pipeline (its layout), the arena, and each buffer window.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    pipeline: usize,
    arena: wgpu::Buffer,
    buffers: Vec<(wgpu::Buffer, u64, Option<u64>)>,
}

/// Bind groups kept for reuse. They hold their buffers alive, so a cache belongs to the owner of
/// the buffers that change (a KV cache, one generation run) and is dropped with it.
#[derive(Clone, Default)]
pub struct BindCache(Arc<Mutex<HashMap<BindKey, wgpu::BindGroup>>>);

/// Past this many entries the cache starts over (a recording whose windows change every time
/// would otherwise grow it without bound).
const BIND_CACHE_MAX: usize = 4096;

enum Op {
    Dispatch { pipeline: Arc<wgpu::ComputePipeline>, bind: wgpu::BindGroup, offset: u32, wg: [u32; 3] },
    Copy { src: wgpu::Buffer, src_off: u64, dst: wgpu::Buffer, dst_off: u64, size: u64 },
}

pub struct Recorder<'a> {
    pub gpu: &'a Gpu,
    arena: Option<wgpu::Buffer>,
    params: Vec<u8>,
    ops: Vec<Op>,
    binds: Option<BindCache>,
    /// Work prepared ahead (see [`Recorder::ahead`]) never submits part-way: a full arena waits
    /// here with its parameter blocks, and recording goes on in a fresh one.
    hold: bool,
    full: Vec<(wgpu::Buffer, Vec<u8>)>,
    /// Submits made by this recorder (for the benchmark's submits-per-token figure).
    pub submits: usize,
    pub dispatches: usize,
}

impl<'a> Recorder<'a> {
    pub fn new(gpu: &'a Gpu) -> Self {
        Recorder { gpu, arena: None, params: Vec::new(), ops: Vec::new(), binds: None, hold: false, full: Vec::new(), submits: 0, dispatches: 0 }
    }

    /// A recorder for work encoded now and submitted later as one command buffer ([`Recorder::prepare`]),
    /// however many dispatches it records; bind groups come from and go to `binds`.
    pub fn ahead(gpu: &'a Gpu, binds: &BindCache) -> Self {
        let mut rec = Self::with_binds(gpu, binds);
        rec.hold = true;
        rec
    }

    /// A recorder that takes bind groups from `binds` and adds the ones it creates.
    pub fn with_binds(gpu: &'a Gpu, binds: &BindCache) -> Self {
        let mut rec = Self::new(gpu);
        rec.binds = Some(binds.clone());
        rec
    }

    fn arena(&mut self) -> wgpu::Buffer {
        self.arena
            .get_or_insert_with(|| {
                self.gpu.take_arena().unwrap_or_else(|| {
                    self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("params-arena"),
                        size: SLOT * SLOTS,
                        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    })
                })
            })
            .clone()
    }

    /// Records one dispatch of `pipeline` with `params` at binding 0 and `buffers` at bindings 1...
    pub fn dispatch(&mut self, pipeline: Arc<wgpu::ComputePipeline>, params: &[u32], buffers: &[&wgpu::Buffer], wg: [u32; 3]) {
        let ranges: Vec<Range> = buffers.iter().map(|b| (*b, 0, None)).collect();
        self.dispatch_ranges(pipeline, params, &ranges, wg)
    }

    /// [`Recorder::dispatch`] binding windows of buffers: (buffer, byte offset, byte size or the
    /// rest). Offsets must be multiples of 256 (the WebGPU storage offset alignment).
    pub fn dispatch_ranges(&mut self, pipeline: Arc<wgpu::ComputePipeline>, params: &[u32], buffers: &[Range], wg: [u32; 3]) {
        if wg.iter().any(|&w| w == 0) {
            return;
        }
        if self.params.len() as u64 >= SLOT * SLOTS {
            if !self.hold {
                self.flush();
            } else if let Some(arena) = self.arena.take() {
                self.full.push((arena, std::mem::take(&mut self.params)));
            }
        }
        let arena = self.arena();
        let off = self.params.len() as u64;
        self.params.extend_from_slice(bytemuck::cast_slice(params));
        self.params.resize((off + SLOT) as usize, 0);
        let bind = match &self.binds {
            Some(cache) => {
                let key = BindKey {
                    pipeline: Arc::as_ptr(&pipeline) as usize,
                    arena: arena.clone(),
                    buffers: buffers.iter().map(|&(b, offset, size)| (b.clone(), offset, size)).collect(),
                };
                let mut map = cache.0.lock().unwrap();
                if let Some(b) = map.get(&key) {
                    b.clone()
                } else {
                    if map.len() >= BIND_CACHE_MAX {
                        map.clear();
                    }
                    let b = self.create_bind_group(&pipeline, &arena, buffers);
                    map.insert(key, b.clone());
                    b
                }
            }
            None => self.create_bind_group(&pipeline, &arena, buffers),
        };
        self.ops.push(Op::Dispatch { pipeline, bind, offset: off as u32, wg });
        self.dispatches += 1;
    }

    /// Binding 0 is the arena's first slot; the dispatch adds its slot as the dynamic offset.
    fn create_bind_group(&self, pipeline: &wgpu::ComputePipeline, arena: &wgpu::Buffer, buffers: &[Range]) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: arena, offset: 0, size: wgpu::BufferSize::new(SLOT) }),
        }];
        for (i, &(b, offset, size)) in buffers.iter().enumerate() {
            debug_assert!(offset % 256 == 0, "unaligned binding offset {offset}");
            self.gpu.check_binding(i + 1, size.unwrap_or(b.size().saturating_sub(offset)));
            let resource = wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset, size: size.and_then(wgpu::BufferSize::new) });
            entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource });
        }
        self.gpu.bind_groups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &layout, entries: &entries })
    }

    pub fn copy(&mut self, src: &wgpu::Buffer, src_off: u64, dst: &wgpu::Buffer, dst_off: u64, size: u64) {
        self.ops.push(Op::Copy { src: src.clone(), src_off, dst: dst.clone(), dst_off, size });
    }

    /// Encodes everything recorded so far and submits it (one submit). Returns the submission, which
    /// a readback of this work alone can wait for (`None` when nothing was recorded, or when
    /// profiled: the GPU is then done with it already).
    pub fn flush(&mut self) -> Option<wgpu::SubmissionIndex> {
        if self.ops.is_empty() {
            return None;
        }
        #[cfg(not(target_arch = "wasm32"))]
        if self.gpu.profiling() && self.ops.iter().any(|o| matches!(o, Op::Dispatch { .. })) {
            self.write_params();
            let enc = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
            let ops = std::mem::take(&mut self.ops);
            self.flush_profiled(enc, ops);
            return None;
        }
        let cmd = self.encode();
        self.write_params();
        self.submits += 1;
        Some(self.gpu.queue.submit([cmd]))
    }

    /// Queues the parameter blocks for the next submit (queue order makes that safe while an
    /// earlier submit still reads the same arena).
    fn write_params(&mut self) {
        // Nothing runs between this and the submit, so the arenas may go back to the pool now.
        for (arena, params) in std::mem::take(&mut self.full) {
            self.gpu.queue.write_buffer(&arena, 0, &params);
            self.gpu.return_arena(arena);
        }
        if let Some(arena) = &self.arena {
            self.gpu.queue.write_buffer(arena, 0, &self.params);
        }
        self.params.clear();
    }

    /// Encodes (and takes) the recorded operations.
    fn encode(&mut self) -> wgpu::CommandBuffer {
        let mut enc = self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        let ops = std::mem::take(&mut self.ops);
        let mut i = 0;
        while i < ops.len() {
            if let Op::Copy { src, src_off, dst, dst_off, size } = &ops[i] {
                enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size);
                i += 1;
                continue;
            }
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            while let Some(Op::Dispatch { pipeline, bind, offset, wg }) = ops.get(i) {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, bind, &[*offset]);
                pass.dispatch_workgroups(wg[0], wg[1], wg[2]);
                i += 1;
            }
        }
        enc.finish()
    }

    /// Records a copy of `size` bytes of `src` into a new mappable buffer, returned for
    /// [`super::context::map_read`] once the work is submitted.
    pub fn read_back(&mut self, src: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::Buffer {
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(src, offset, &staging, 0, size);
        staging
    }

    /// Encodes everything recorded into a command buffer without submitting it: the host work
    /// of a step done while the GPU still runs the step before (see [`Prepared`]). The recorder
    /// comes from [`Recorder::ahead`], so nothing of it has been submitted yet.
    pub fn prepare(mut self) -> Prepared<'a> {
        assert!(self.hold && self.submits == 0, "prepared work is recorded by Recorder::ahead");
        // Profiled work is timed pass by pass at submit time instead.
        let cmd = if self.gpu.profiling() || self.ops.is_empty() { None } else { Some(self.encode()) };
        Prepared { rec: self, cmd }
    }

    /// [`Recorder::flush`] with each dispatch in its own pass between two timestamps; waits for
    /// the GPU and adds the times to the device's profile.
    #[cfg(not(target_arch = "wasm32"))]
    fn flush_profiled(&mut self, mut enc: wgpu::CommandEncoder, ops: Vec<Op>) {
        // At most SLOTS dispatches per flush, so at most 4096 queries (wgpu's limit per set).
        let n = ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count() as u32;
        let queries = self.gpu.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: 2 * n });
        let mut names = Vec::new();
        for op in &ops {
            match op {
                Op::Copy { src, src_off, dst, dst_off, size } => enc.copy_buffer_to_buffer(src, *src_off, dst, *dst_off, *size),
                Op::Dispatch { pipeline, bind, offset, wg } => {
                    let i = 2 * names.len() as u32;
                    let writes =
                        wgpu::ComputePassTimestampWrites { query_set: &queries, beginning_of_pass_write_index: Some(i), end_of_pass_write_index: Some(i + 1) };
                    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) });
                    pass.set_pipeline(pipeline);
                    pass.set_bind_group(0, bind, &[*offset]);
                    pass.dispatch_workgroups(wg[0], wg[1], wg[2]);
                    names.push(self.gpu.pipeline_name(pipeline));
                }
            }
        }
        let bytes = 16 * n as u64;
        let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
        let resolved = self.gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("profile-resolve"), size: bytes, usage, mapped_at_creation: false });
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor { label: Some("profile-read"), size: bytes, usage, mapped_at_creation: false });
        enc.resolve_query_set(&queries, 0..2 * n, &resolved, 0);
        enc.copy_buffer_to_buffer(&resolved, 0, &staging, 0, bytes);
        self.gpu.queue.submit([enc.finish()]);
        self.submits += 1;
        let Ok(data) = pollster::block_on(super::context::map_read(self.gpu, &staging)) else { return };
        let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&data);
        let period = self.gpu.queue.get_timestamp_period() as f64;
        if let Some(profile) = &self.gpu.profile {
            let mut profile = profile.lock().unwrap();
            for (i, name) in names.iter().enumerate() {
                profile.add(name, stamps[2 * i + 1].saturating_sub(stamps[2 * i]) as f64 * period);
            }
        }
    }

    /// Submits, then copies `size` bytes of `src` back to the CPU (the only readback of a step).
    pub async fn finish_and_read(mut self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.read_back(src, offset, size);
        self.flush();
        super::context::map_read(self.gpu, &staging).await
    }

    pub fn finish(mut self) {
        self.flush();
    }

    /// Drops everything recorded without submitting it. Recording alone creates the pipelines,
    /// which is how shaders are compiled ahead of first use.
    pub fn discard(mut self) {
        self.drop_recorded();
    }

    /// Forgets what was recorded; its arenas go back to the pool.
    fn drop_recorded(&mut self) {
        self.ops.clear();
        self.params.clear();
        for (arena, _) in std::mem::take(&mut self.full) {
            self.gpu.return_arena(arena);
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.flush();
        if let Some(a) = self.arena.take() {
            self.gpu.return_arena(a);
        }
    }
}

/// Work recorded and encoded ahead of its submit. Dropped without [`Prepared::submit`], nothing
/// of it ever runs.
pub struct Prepared<'a> {
    rec: Recorder<'a>,
    cmd: Option<wgpu::CommandBuffer>,
}

impl Prepared<'_> {
    /// Dispatches in this work.
    pub fn dispatches(&self) -> usize {
        self.rec.dispatches
    }

    /// Queues the parameter blocks and submits (one submit); returns the submission, which a
    /// readback of this work alone can wait for (`None` when profiled: then it waited already).
    pub fn submit(mut self) -> Option<wgpu::SubmissionIndex> {
        match self.cmd.take() {
            Some(cmd) => {
                self.rec.write_params();
                self.rec.submits += 1;
                Some(self.rec.gpu.queue.submit([cmd]))
            }
            None => self.rec.flush(),
        }
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        // Unsubmitted: nothing is flushed when the recorder goes (it returns its arenas).
        self.rec.drop_recorded();
    }
}

/// Splits a 1-D workgroup count over x and y (the per-dimension limit is 65535).
pub fn grid(groups: u32) -> [u32; 3] {
    if groups <= 65535 {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(65535);
        [groups.div_ceil(y), y, 1]
    }
}
