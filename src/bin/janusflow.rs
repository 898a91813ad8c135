//! `janusflow`: the native command line (chat, logits, convert, synth, info, bench).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use janusflow::engine::{Conversation, Engine, EngineOptions, GenerateParams};
use janusflow::gpu::Gpu;
use janusflow::image_io::Picture;
use janusflow::text::sampling::SamplingParams;
use janusflow::text::template::Message;
use janusflow::weights::quant::Quant;
use janusflow::weights::{source, ModelSource};

#[derive(Parser)]
#[command(name = "janusflow", version, about = "JanusFlow-1.3B on WebGPU (native CLI)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Hugging Face checkpoint folder or weight-pack folder.
    #[arg(long)]
    model: PathBuf,
    /// Weight preset: q4a (default), q4, q8, f16 or f32 (weights as stored, for validation).
    #[arg(long, default_value = "q4a")]
    quant: String,
    /// Context length in tokens (KV-cache size).
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// The opt-in fast setting: KV caches in f16 (half their memory and half the bytes attention
    /// reads per key; a small measured loss of fidelity, see benchmarks/README.md).
    #[arg(long)]
    fast: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with the model. With --prompt: prints only the reply and exits.
    Chat {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        prompt: Option<String>,
        /// Image to ask about (repeatable). Without `<image_placeholder>` in the prompt, the
        /// images go first, one placeholder per line; otherwise each placeholder takes the next one.
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.1)]
        temperature: f32,
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        #[arg(long, default_value_t = 50)]
        top_k: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// At least 1.
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
    },
    /// Last-position logits after prefill of the chat prompt, as float32 .npy [vocab_size].
    Logits {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        prompt: String,
        /// Image in the prompt (repeatable), placed as for `chat`.
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw an image from a text prompt (rectified flow with guidance, then the SDXL-VAE decoder).
    Generate {
        #[command(flatten)]
        m: ModelArgs,
        /// VAE folder in the diffusers layout (default: MODEL/vae).
        #[arg(long)]
        vae: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Guidance weight (1 = none).
        #[arg(long, default_value_t = 2.0)]
        cfg: f32,
        #[arg(long, default_value_t = 12345, conflicts_with = "noise")]
        seed: u64,
        /// Start latent, float32 .npy [4, latent, latent] (validation).
        #[arg(long)]
        noise: Option<PathBuf>,
        /// Output PNG; with --count N > 1, the index is added before the extension.
        #[arg(long)]
        out: PathBuf,
        /// Also write the final latent as float32 .npy.
        #[arg(long)]
        latent_out: Option<PathBuf>,
        /// Images to draw, with seeds seed, seed+1, ... (1 to 1000).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
    /// Convert a checkpoint into a web weight pack (manifest.json + SHA-256-named shards ≤ 32 MiB).
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "q4a")]
        quant: String,
        /// SDXL-VAE folder in the diffusers layout to include (default: MODEL/vae when present).
        #[arg(long)]
        vae: Option<PathBuf>,
        /// Largest shard in bytes (default and maximum 32 MiB).
        #[arg(long, default_value_t = janusflow::weights::pack::MAX_SHARD)]
        shard_size: usize,
    },
    /// Write a random checkpoint in the Hugging Face layout for any config (e.g. the real sizes).
    Synth {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Adapter, limits, optional features, and (with --model) a model summary.
    Info {
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Throughput figures (not a test): prefill/decode tokens/s, submits and bytes per token, matmul time.
    Bench {
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value = "q4a")]
        quant: String,
        #[arg(long, default_value_t = 512)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 32)]
        decode_tokens: usize,
        /// Skip the f32 [512,2048]×[2048,2048] matmul timing.
        #[arg(long)]
        no_matmul: bool,
        /// Also time an image question (encoder, prefill, time to first token).
        #[arg(long)]
        image: bool,
        /// Also time image generation (flow step, batched LLM pass, VAE decode).
        #[arg(long)]
        generate: bool,
        /// Flow steps the generation timing runs (at least 2; 30 gives the real total).
        #[arg(long, default_value_t = 2)]
        flow_steps: usize,
        /// With --generate: also time each convolution shape of the VAE alone, in TFLOP/s (those
        /// after a GroupNorm + SiLU pass apart, with the pass); costs about one more decode.
        #[arg(long, requires = "generate")]
        vae_convs: bool,
        /// Also print per-kernel GPU times (timestamp queries; slows the run a little).
        #[arg(long)]
        profile: bool,
        /// Kernel shapes: `gpu` (many small workgroups) or `cpu` (barrier-free lane products for
        /// lavapipe and SwiftShader; with the 8-lane subgroup kernels where the adapter allows
        /// them), or `cpu-tile` (CPU shapes without those, as SwiftShader in the browser runs:
        /// lane products for prompts and convolutions too); default: from the adapter.
        #[arg(long, value_parser = ["cpu", "cpu-tile", "gpu"])]
        shapes: Option<String>,
        /// Also print every figure as one JSON object (the last line of the output).
        #[arg(long)]
        json: bool,
        /// Also time one-row products at the real model's shapes (2048×2048, 5632×2048,
        /// 11264×2048, 102400×2048) in the preset's format, in GB/s and as a share of a copy.
        #[arg(long)]
        matvec: bool,
        /// Also time each attention kernel on the real model's shapes (prompt and flow-step
        /// prefill, decode over 512 and 2048 cached keys with its KV-read GB/s, SigLIP, the VAE
        /// mid-block at 128 and 384 px), marking the one chosen on this adapter.
        #[arg(long)]
        attention: bool,
        /// Workgroup reductions (norms, attention, the rows of the GPU-shape matvec) through
        /// workgroup memory even where the adapter offers subgroups, to compare the two paths.
        #[arg(long)]
        tree_reductions: bool,
        /// Shader modules with wgpu's runtime checks (index clamping, loop bounding, division
        /// guards) and zero-initialised workgroup memory, as in the browser, to compare with the
        /// native default that leaves them out.
        #[arg(long)]
        checked_shaders: bool,
        /// Also decode after prompts of these lengths (comma-separated, e.g. 64,512,2048) and
        /// print decode tokens/s at each context length.
        #[arg(long, value_delimiter = ',')]
        contexts: Vec<usize>,
        /// GPU-shape products of more than 64 rows through the 128×128 register tile
        /// (gemm_tile128.wgsl) instead of the 64×64 one, to compare the two.
        #[arg(long)]
        tile128: bool,
        /// Decode without sending each step ahead of its token (the GPU then waits for the host's
        /// readback and choice between tokens), to compare with the pipelined default.
        #[arg(long)]
        unpipelined: bool,
        /// GPU-shape matrix–vector products stage their activation row in workgroup memory
        /// (STAGE_X in matvec_rows.wgsl) instead of every row reading it, to compare the two.
        #[arg(long)]
        stage_x: bool,
        /// Passes of 32 groups per row whose weight loads a GPU-shape matrix–vector lane issues
        /// together before its first multiply (1 to 8; LOADS in matvec_rows.wgsl), to compare.
        #[arg(long, default_value_t = 1)]
        matvec_loads: u32,
        /// The opt-in `fast` setting (f16 KV caches) for every figure; with --generate, also one
        /// picture drawn with and without it: latent cosine and the picture's PSNR.
        #[arg(long)]
        fast: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn gpu() -> Result<Gpu> {
    pollster::block_on(Gpu::new())
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {wide_msg}").unwrap().progress_chars("=> "));
    pb.set_message(msg.to_string());
    pb
}

fn load(m: &ModelArgs) -> Result<Engine> {
    let preset = Quant::parse(&m.quant)?;
    let src = ModelSource::open(&m.model)?;
    let pb = bar(1, "loading");
    let opts = EngineOptions { preset, context: m.context, fast: m.fast, ..Default::default() };
    let engine = pollster::block_on(Engine::load(gpu()?, &src, opts, |done, total, what| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        pb.set_message(what.to_string());
    }))?;
    pb.finish_and_clear();
    // Subgroup kernels are checked against the workgroup tree before first use (see
    // gpu::selfcheck); where they disagree they are turned off, and the user is told.
    let (sub, shapes) = pollster::block_on(janusflow::gpu::selfcheck::check_device(&engine.gpu))?;
    if !shapes.passed {
        eprintln!("warning: {}", shapes.describe());
    }
    if !sub.passed {
        eprintln!("warning: {}", sub.describe());
    }
    Ok(engine)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Chat { m, prompt, images, temperature, top_p, top_k, seed, max_tokens } => {
            let params = SamplingParams { temperature, top_p, top_k, seed, max_tokens };
            let mut engine = load(&m)?;
            let mut conv = Conversation::new();
            if let Some(p) = prompt {
                conv.messages.push(Message::user_with_images(&p, read_images(&images)?));
                let reply = pollster::block_on(engine.chat(&mut conv, &params, |_| true))?;
                println!("{}", reply.text);
                return Ok(());
            }
            eprintln!(
                "JanusFlow chat on {} — type a message; /image FILE attaches an image to the next one, /reset starts over, /exit quits.",
                engine.gpu.summary.name
            );
            let mut pending = read_images(&images)?;
            let stdin = std::io::stdin();
            loop {
                eprint!("\nUser: ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    break;
                }
                let line = line.trim();
                match line {
                    "" => continue,
                    "/exit" | "/quit" => break,
                    "/reset" => {
                        conv.clear();
                        pending.clear();
                        eprintln!("(new conversation)");
                        continue;
                    }
                    _ => {}
                }
                if let Some(path) = line.strip_prefix("/image ") {
                    match read_images(&[PathBuf::from(path.trim())]) {
                        Ok(mut p) => {
                            pending.append(&mut p);
                            eprintln!("({} image(s) attached to your next message)", pending.len());
                        }
                        Err(e) => eprintln!("error: {e:#}"),
                    }
                    continue;
                }
                conv.messages.push(Message::user_with_images(line, std::mem::take(&mut pending)));
                eprint!("Assistant: ");
                let out = pollster::block_on(engine.chat(&mut conv, &params, |t| {
                    print!("{t}");
                    let _ = std::io::stdout().flush();
                    true
                }));
                println!();
                match out {
                    Ok(r) if r.finish == janusflow::engine::FinishReason::Context => {
                        eprintln!("(the context is full: /reset to continue)")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        conv.messages.pop();
                        eprintln!("error: {e:#}");
                    }
                }
            }
            Ok(())
        }
        Cmd::Logits { m, prompt, images, out } => {
            let engine = load(&m)?;
            let logits = pollster::block_on(
                engine.logits(Some(janusflow::text::template::SYSTEM_PROMPT), &[Message::user_with_images(&prompt, read_images(&images)?)]),
            )?;
            write_npy(&out, &logits, &[logits.len() as u64])
        }
        Cmd::Generate { m, vae, prompt, steps, cfg, seed, noise, out, latent_out, count } => {
            let mut engine = load(&m)?;
            if let Some(dir) = vae {
                pollster::block_on(engine.attach_vae_dir(&dir))?;
            }
            let noise = match noise {
                Some(p) => {
                    let (shape, values) = read_npy_f32(&p)?;
                    // The latent's layout matters, not just its size: [C, S, S] (or [1, C, S, S]).
                    let want: Vec<u64> = engine.latent_shape().iter().map(|&d| d as u64).collect();
                    if shape != want && shape[..] != [&[1][..], &want[..]].concat()[..] {
                        anyhow::bail!("{}: the noise has shape {shape:?}; this model's latent is {want:?}", p.display());
                    }
                    Some(values)
                }
                None => None,
            };
            for i in 0..count {
                let params = GenerateParams { steps, cfg, seed: seed.wrapping_add(i as u64), noise: noise.clone(), preview: false };
                let pb = bar(steps as u64, "drawing");
                let t0 = Instant::now();
                let img = pollster::block_on(engine.generate_image(&prompt, &params, |s| {
                    pb.set_position(s.step as u64);
                    pb.set_message(format!("step {}/{}", s.step, s.steps));
                    true
                }))?
                .expect("not cancelled");
                pb.finish_and_clear();
                let path = if count > 1 { numbered(&out, i as usize) } else { out.clone() };
                std::fs::write(&path, img.png()?).with_context(|| format!("cannot write {}", path.display()))?;
                if let Some(l) = &latent_out {
                    let lp = if count > 1 { numbered(l, i as usize) } else { l.clone() };
                    let [c, h, w] = engine.latent_shape();
                    write_npy(&lp, &img.latent, &[c as u64, h as u64, w as u64])?;
                }
                eprintln!("wrote {} ({}×{}, seed {}, {:.1} s)", path.display(), img.width, img.height, params.seed, t0.elapsed().as_secs_f64());
            }
            Ok(())
        }
        Cmd::Convert { model, out, quant, vae, shard_size } => {
            let preset = Quant::parse(&quant)?;
            let src = ModelSource::open(&model)?;
            let pb = bar(1, "converting");
            pb.set_style(ProgressStyle::with_template("{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}").unwrap().progress_chars("=> "));
            let manifest = source::convert_with(&src, vae.as_deref(), preset, &out, shard_size, |done, total, name| {
                pb.set_length(total);
                pb.set_position(done);
                pb.set_message(name.to_string());
            })?;
            pb.finish_and_clear();
            eprintln!(
                "wrote {} ({} tensors, {} shards, {:.1} MiB, preset {preset})",
                out.display(),
                manifest.tensors.len(),
                manifest.shards.len(),
                manifest.total_bytes as f64 / (1 << 20) as f64
            );
            Ok(())
        }
        Cmd::Synth { config, out, seed } => {
            let text = std::fs::read_to_string(&config).with_context(|| format!("cannot read {}", config.display()))?;
            let pb = bar(1, "writing");
            let n = janusflow::weights::synth::write_checkpoint(&text, &out, seed, |done, total| {
                pb.set_length(total);
                pb.set_position(done);
            })?;
            pb.finish_and_clear();
            eprintln!("wrote {} ({n} parameters)", out.display());
            Ok(())
        }
        Cmd::Info { model } => {
            let gpu = gpu()?;
            println!("{}", serde_json::to_string_pretty(&gpu.summary)?);
            // What the engine would find before first use on this adapter's own kernel shapes.
            let (sub, shapes) = pollster::block_on(janusflow::gpu::selfcheck::check_device(&gpu))?;
            let kind = if gpu.gpu_tuned() { "GPU" } else { "CPU-rasteriser" };
            println!("device self-check ({kind} kernel shapes): {}; {}", sub.describe(), shapes.describe());
            if let Some(dir) = model {
                let src = ModelSource::open(&dir)?;
                let cfg = src.config()?;
                let table = cfg.expected_tensors();
                let params: usize = table.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
                println!("model: {} ({})", dir.display(), if src.fixed_preset().is_some() { "weight pack" } else { "Hugging Face checkpoint" });
                println!("  tensors: {}, parameters: {params}", table.len());
                println!("  llm: {:?}", cfg.llm);
                println!("  siglip: {:?}", cfg.siglip);
                println!("  generation: {:?}", cfg.gen);
            }
            Ok(())
        }
        Cmd::Bench {
            model,
            quant,
            prompt_tokens,
            decode_tokens,
            no_matmul,
            image,
            generate,
            flow_steps,
            vae_convs,
            profile,
            shapes,
            json,
            matvec,
            attention,
            tree_reductions,
            checked_shaders,
            contexts,
            tile128,
            unpipelined,
            stage_x,
            matvec_loads,
            fast,
        } => {
            let opts = BenchOpts {
                quant,
                prompt_tokens,
                decode_tokens,
                no_matmul,
                image,
                flow_steps: generate.then_some(flow_steps),
                vae_convs,
                profile,
                shapes,
                matvec,
                attention,
                tree_reductions,
                checked_shaders,
                contexts,
                tile128,
                unpipelined,
                stage_x,
                matvec_loads,
                fast,
            };
            let fig = bench(model.as_deref(), &opts)?;
            if json {
                println!("{}", serde_json::Value::Object(fig));
            }
            Ok(())
        }
    }
}

fn read_images(paths: &[PathBuf]) -> Result<Vec<std::sync::Arc<Picture>>> {
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let pic = Picture::decode(&bytes).with_context(|| p.display().to_string())?;
            Ok(std::sync::Arc::new(pic))
        })
        .collect()
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{i}"),
    };
    path.with_file_name(name)
}

fn read_npy_f32(path: &Path) -> Result<(Vec<u64>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    janusflow::npy::read_f32(&bytes).with_context(|| path.display().to_string())
}

fn write_npy(path: &Path, data: &[f32], shape: &[u64]) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(shape).writer(std::io::BufWriter::new(f)).begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(())
}

struct BenchOpts {
    quant: String,
    prompt_tokens: usize,
    decode_tokens: usize,
    no_matmul: bool,
    image: bool,
    flow_steps: Option<usize>,
    vae_convs: bool,
    profile: bool,
    shapes: Option<String>,
    matvec: bool,
    attention: bool,
    tree_reductions: bool,
    checked_shaders: bool,
    contexts: Vec<usize>,
    tile128: bool,
    unpipelined: bool,
    stage_x: bool,
    matvec_loads: u32,
    fast: bool,
}

fn print_profile(what: &str, p: &Option<janusflow::gpu::profile::Profile>, per: f64, per_name: &str) {
    if let Some(p) = p {
        println!("GPU time per kernel, {what}:\n{}", p.table(per, per_name));
    }
}

/// Prints the flow step's language-model products timed alone; returns them as JSON.
fn step_gemm_table(gemms: &[janusflow::bench::GemmBench]) -> serde_json::Value {
    use serde_json::json;
    println!("generation: the step's language-model products timed alone (first layer's weights)");
    println!("  {:>9} {:>8} {:>10}  product", "ms", "TFLOP/s", "ms/step");
    let mut rows = Vec::new();
    for g in gemms {
        let tflops = g.flops() / g.s / 1e12;
        println!("  {:>9.3} {:>8.3} {:>10.3}  {} [{}×{}]·[{}×{}]ᵀ", g.s * 1e3, tflops, g.s * 1e3 * g.per_step as f64, g.name, g.m, g.k, g.n, g.k);
        rows.push(json!({"name": g.name, "m": g.m, "n": g.n, "k": g.k, "ms": g.s * 1e3, "tflop_per_s": tflops, "ms_per_step": g.s * 1e3 * g.per_step as f64}));
    }
    json!(rows)
}

/// Prints the VAE's convolutions timed alone (those after a GroupNorm + SiLU pass first, with
/// the pass's own time) and returns them for `--json`.
fn vae_conv_table(convs: &[janusflow::bench::VaeConvBench]) -> serde_json::Value {
    use serde_json::json;
    if convs.is_empty() {
        return json!([]);
    }
    println!("generation: VAE convolutions timed alone (ms per call; TFLOP/s of the convolution alone)");
    println!("  {:>5} {:>9} {:>8} {:>13}  shape", "calls", "ms", "TFLOP/s", "GroupNorm ms");
    let mut rows = Vec::new();
    let (mut conv_s, mut gn_s, mut flops) = (0.0, 0.0, 0.0);
    for gn in [true, false] {
        println!("  {}", if gn { "after GroupNorm + SiLU (its pass timed apart):" } else { "plain input:" });
        for b in convs.iter().filter(|b| b.shape.groupnorm == gn) {
            let s = b.shape;
            let tflops = s.flops() / b.conv_s / 1e12;
            let what = format!(
                "{k}×{k} {}→{} at {}×{}{}{}",
                s.cin,
                s.cout,
                s.h,
                s.w,
                if s.upsample { ", input upsampled ×2" } else { "" },
                if s.add { ", onto the residual" } else { "" },
                k = s.ks
            );
            let gn_ms = if gn { format!("{:.3}", b.groupnorm_s * 1e3) } else { "-".into() };
            println!("  {:>5} {:>9.3} {:>8.3} {:>13}  {what}", b.calls, b.conv_s * 1e3, tflops, gn_ms);
            conv_s += b.calls as f64 * b.conv_s;
            gn_s += b.calls as f64 * b.groupnorm_s;
            flops += b.calls as f64 * s.flops();
            rows.push(json!({
                "ks": s.ks, "cin": s.cin, "cout": s.cout, "h": s.h, "w": s.w, "upsample": s.upsample, "add": s.add,
                "groupnorm": s.groupnorm, "calls": b.calls, "ms": b.conv_s * 1e3, "tflop_per_s": tflops, "groupnorm_ms": b.groupnorm_s * 1e3,
            }));
        }
    }
    println!("  total: {:.1} ms in convolutions ({:.3} TFLOP/s) + {:.1} ms in GroupNorm passes", conv_s * 1e3, flops / conv_s / 1e12, gn_s * 1e3);
    json!(rows)
}

/// Times every attention kernel on the real model's shapes; prints a table, returns it for `--json`.
fn attention_table(gpu: &Gpu) -> Result<serde_json::Value> {
    use janusflow::gpu::kernels::{attention_kernel, AttnKernel, AttnShape, KvFormat};
    use serde_json::json;
    let causal = |t, pos0, heads, hd| AttnShape {
        t,
        heads,
        head_dim: hd,
        causal_pos0: Some(pos0),
        n_keys: pos0 + t,
        q_stride: heads * hd,
        kv_stride: heads * hd,
        o_stride: heads * hd,
        kv: KvFormat::F32,
    };
    let both = |t, heads, hd| AttnShape {
        t,
        heads,
        head_dim: hd,
        causal_pos0: None,
        n_keys: t,
        q_stride: heads * hd,
        kv_stride: heads * hd,
        o_stride: heads * hd,
        kv: KvFormat::F32,
    };
    let f16 = |s: AttnShape| AttnShape { kv: KvFormat::F16, ..s };
    let shapes = [
        ("chat prefill, 512-token prompt", causal(512, 0, 16, 128)),
        ("flow step, one guidance row's 577-row prompt", causal(577, 0, 16, 128)),
        ("decode over 512 cached keys", causal(1, 511, 16, 128)),
        ("decode over 2048 cached keys", causal(1, 2047, 16, 128)),
        ("decode over 2048 cached keys, f16 cache (fast)", f16(causal(1, 2047, 16, 128))),
        ("flow step's 577-row prompt, f16 cache (fast)", f16(causal(577, 0, 16, 128))),
        ("SigLIP-L/16, 576 patches", both(576, 16, 64)),
        ("VAE mid-block, 128 px (16×16 latent)", both(256, 1, 512)),
        ("VAE mid-block, 384 px (48×48 latent)", both(2304, 1, 512)),
    ];
    println!("attention: ms per call per kernel (* = chosen here); decode also in GB/s of K and V read");
    let mut rows = Vec::new();
    for (what, s) in shapes {
        let chosen = attention_kernel(gpu, &s, 0);
        let keys = s.keys();
        let kv_bytes = (2 * keys * s.heads * s.head_dim) as f64 * s.kv.bytes() as f64;
        let mut line = format!("  {what}:");
        let mut times = serde_json::Map::new();
        for k in [AttnKernel::Rows, AttnKernel::Split, AttnKernel::Tiled] {
            // Each kernel where it is meant to run: the split kernel for few rows, the tiled one for many.
            if (k == AttnKernel::Split) != (s.t == 1) && k != AttnKernel::Rows {
                continue;
            }
            let secs = janusflow::bench::attention(gpu, s, k)?;
            let mark = if k == chosen { "*" } else { "" };
            line += &format!(" {k:?}{mark} {:.3} ms", secs * 1e3);
            if s.t == 1 {
                line += &format!(" ({:.1} GB/s)", kv_bytes / secs / 1e9);
            }
            let mut t = json!({"ms": secs * 1e3});
            if s.t == 1 {
                t["kv_gb_per_s"] = json!(kv_bytes / secs / 1e9);
            }
            times.insert(format!("{k:?}").to_lowercase(), t);
        }
        println!("{line}");
        rows.push(json!({"what": what, "t": s.t, "heads": s.heads, "head_dim": s.head_dim, "keys": keys, "causal": s.causal_pos0.is_some(), "kv": format!("{:?}", s.kv).to_lowercase(), "chosen": format!("{chosen:?}").to_lowercase(), "kernels": times}));
    }
    Ok(json!(rows))
}

/// Runs the benchmark, printing each figure as it comes; returns them all for `--json`.
fn bench(model: Option<&Path>, o: &BenchOpts) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::json;
    let mut fig = serde_json::Map::new();
    let BenchOpts {
        ref quant,
        prompt_tokens,
        decode_tokens,
        no_matmul,
        image,
        flow_steps,
        vae_convs,
        profile,
        ref shapes,
        matvec,
        attention,
        tree_reductions,
        checked_shaders,
        ref contexts,
        tile128,
        unpipelined,
        stage_x,
        matvec_loads,
        fast,
    } = *o;
    let gpu = if profile { pollster::block_on(Gpu::new_profiling())? } else { gpu()? };
    if let Some(s) = shapes {
        gpu.set_gpu_tuned(s == "gpu");
        gpu.set_sg8_allowed(s != "cpu-tile");
    }
    gpu.set_subgroup_reduce_allowed(!tree_reductions);
    gpu.set_trusted_shaders(!checked_shaders);
    gpu.set_tile128(tile128);
    gpu.set_stage_x(stage_x);
    gpu.set_matvec_loads(matvec_loads);
    // As the engine does before first use: subgroup kernels that disagree with the tree are off.
    let t0 = Instant::now();
    let (check, shape_check) = pollster::block_on(janusflow::gpu::selfcheck::check_device(&gpu))?;
    let check_ms = t0.elapsed().as_secs_f64() * 1e3;
    gpu.take_profile();
    println!("device self-check ({check_ms:.0} ms with its pipelines): {}; {}", check.describe(), shape_check.describe());
    fig.insert(
        "subgroup_check".into(),
        json!({"ms": check_ms, "width": check.width, "gpu_shapes": check.gpu_shapes, "probes": check.probes, "passed": check.passed}),
    );
    fig.insert("shape_check".into(), json!(shape_check));
    let shapes = if gpu.gpu_tuned() {
        "gpu"
    } else if gpu.sg8() {
        "cpu-sg8"
    } else {
        "cpu"
    };
    let reductions = gpu.subgroup_reduce().map_or("workgroup tree".to_string(), |w| format!("{w}-lane subgroups"));
    let checks = if gpu.trusted_shaders() { "none (trusted)" } else { "wgpu's" };
    let matvec_x = if stage_x { "staged in workgroup memory" } else { "read by every row" };
    let loads = gpu.matvec_loads();
    // The fast setting adds f16 arithmetic to either tile where the device has shader-f16.
    let f16_tile = if fast && gpu.summary.features.shader_f16 && model.is_some() { " with f16 arithmetic (fast)" } else { "" };
    let tile = format!("{}{f16_tile}", if tile128 { "128×128 over 64 rows" } else { "64×64" });
    println!(
        "device: {} ({}, {}), kernel shapes: {shapes}, reductions: {reductions}, shader runtime checks: {checks}, GPU product tile: {tile}, GPU matvec activations: {matvec_x}, GPU matvec load passes per batch: {loads}",
        gpu.summary.name, gpu.summary.backend, gpu.summary.device_type
    );
    fig.insert(
        "device".into(),
        json!({"name": gpu.summary.name, "backend": gpu.summary.backend, "type": gpu.summary.device_type, "driver": gpu.summary.driver, "shapes": shapes, "reductions": reductions, "tile": tile, "matvec_x": matvec_x, "matvec_loads": loads}),
    );
    if profile && !gpu.profiling() {
        println!("(this adapter has no timestamp queries: no per-kernel times)");
    }
    if !no_matmul {
        let secs = janusflow::bench::matmul_f32(&gpu, 512, 2048, 2048)?;
        println!("matmul f32 [512,2048]x[2048,2048]: {:.2} ms ({:.1} GFLOP/s)", secs * 1e3, 2.0 * 512.0 * 2048.0 * 2048.0 / secs / 1e9);
        fig.insert("matmul_f32_512x2048x2048_ms".into(), json!(secs * 1e3));
        print_profile("f32 matmul (4 runs)", &gpu.take_profile(), 4.0, "run");
    }
    if matvec {
        let preset = Quant::parse(quant)?;
        let copy = janusflow::bench::copy_bandwidth(&gpu, 256 << 20)?;
        println!("copy bandwidth (256 MiB buffer to buffer): {:.1} GB/s", copy / 1e9);
        let mut shapes = Vec::new();
        for (n, k) in [(2048, 2048), (5632, 2048), (11264, 2048), (102400, 2048)] {
            let (secs, bytes) = janusflow::bench::matvec(&gpu, preset, n, k)?;
            let gbs = bytes as f64 / secs / 1e9;
            println!("matvec {preset} [{n},{k}]: {:.1} µs, {gbs:.1} GB/s = {:.0}% of copy", secs * 1e6, 100.0 * gbs * 1e9 / copy);
            shapes.push(json!({"n": n, "k": k, "us": secs * 1e6, "gb_per_s": gbs, "share_of_copy": gbs * 1e9 / copy}));
        }
        fig.insert("matvec".into(), json!({"preset": preset.to_string(), "copy_gb_per_s": copy / 1e9, "shapes": shapes}));
    }
    if attention {
        fig.insert("attention".into(), attention_table(&gpu)?);
    }
    let Some(dir) = model else { return Ok(fig) };
    let preset = Quant::parse(quant)?;
    let src = ModelSource::open(dir)?;
    let longest = contexts.iter().copied().chain([prompt_tokens]).max().unwrap_or(0);
    let opts = EngineOptions { preset, context: (longest + decode_tokens + 8).max(1024), fast, ..Default::default() };
    let t0 = Instant::now();
    let mut engine = pollster::block_on(Engine::load(gpu, &src, opts, |_, _, _| {}))?;
    engine.set_pipelined(!unpipelined);
    println!(
        "load: {:.2} s, resident LLM weights {:.1} MiB, vision encoder {:.1} MiB ({preset})",
        t0.elapsed().as_secs_f64(),
        engine.llm.weight_bytes() as f64 / (1 << 20) as f64,
        engine.siglip.weight_bytes() as f64 / (1 << 20) as f64
    );
    // Compile the chat pipelines first so that the prefill figure is the GPU's, not the shader compiler's.
    let t0 = Instant::now();
    let pipelines = pollster::block_on(engine.compile_kernels())?;
    println!("compile: {pipelines} pipelines in {:.2} s", t0.elapsed().as_secs_f64());
    fig.insert("preset".into(), json!(preset.to_string()));
    let kv = format!("{:?}", engine.llm.kv_format).to_lowercase();
    println!("KV caches: {kv}{}", if fast { " (the fast setting)" } else { "" });
    fig.insert("kv_cache".into(), json!(kv));
    let r = pollster::block_on(janusflow::bench::llm(&engine, prompt_tokens, decode_tokens))?;
    println!("prefill: {} tokens in {:.3} s = {:.1} tokens/s", r.prompt, r.prefill_s, r.prompt as f64 / r.prefill_s);
    println!("decode: {} tokens in {:.3} s = {:.2} tokens/s", r.decoded, r.decode_s, r.decoded as f64 / r.decode_s);
    println!("submits per decoded token: {:.2}", r.submits_per_token);
    println!(
        "decode steps sent ahead of their token: {} of {} ({} redone for another token){}",
        r.fed_steps,
        r.decoded,
        r.fed_misses,
        if unpipelined { " (--unpipelined)" } else { "" }
    );
    println!("bytes read back per decoded token: {:.0}", r.readback_per_token);
    // Outside the layers: the embedding gather, lm_head (the final norm folded in on GPU shapes,
    // its own pass on CPU shapes), two top-k passes.
    let layers = engine.cfg.llm.layers as f64;
    let outside = if engine.gpu.gpu_tuned() { 4.0 } else { 5.0 };
    // Bind groups are counted from the third token on (the first two create the cached ones).
    let binds = if r.bind_groups_per_token.is_finite() { format!("{:.1}", r.bind_groups_per_token) } else { "not counted (under 3 tokens)".into() };
    println!(
        "dispatches per decoded token: {:.0} ({:.1} per layer), bind groups created per token after the first: {binds}",
        r.dispatches_per_token,
        (r.dispatches_per_token - outside) / layers,
    );
    fig.insert(
        "chat".into(),
        json!({
            "prompt_tokens": r.prompt,
            "prefill_s": r.prefill_s,
            "prefill_tokens_per_s": r.prompt as f64 / r.prefill_s,
            "decoded_tokens": r.decoded,
            "decode_tokens_per_s": r.decoded as f64 / r.decode_s,
            "submits_per_token": r.submits_per_token,
            "pipelined": !unpipelined,
            "steps_sent_ahead": r.fed_steps,
            "steps_redone": r.fed_misses,
            "bytes_read_back_per_token": r.readback_per_token,
            "dispatches_per_token": r.dispatches_per_token,
            "dispatches_per_layer": (r.dispatches_per_token - outside) / layers,
            "bind_groups_per_token": r.bind_groups_per_token,
            "weight_bytes_per_token": engine.llm.weight_bytes_per_token(),
            "resident_llm_weight_bytes": engine.llm.weight_bytes(),
        }),
    );
    print_profile("prefill", &r.prefill_profile, 1.0, "prefill");
    print_profile("decode", &r.decode_profile, r.decoded as f64, "token");
    if let Some(p) = &r.decode_profile {
        // GPU time from the timestamp pairs around each kernel; the rest of the wall time is the
        // host's (recording, submit, readback, sampling) and idle gaps between kernels.
        let (wall, gpu) = (r.decode_s / r.decoded as f64, p.total_ns() / 1e9 / r.decoded as f64);
        println!("decode per token: {:.3} ms wall = {:.3} ms GPU in kernels + {:.3} ms host and gaps", wall * 1e3, gpu * 1e3, (wall - gpu) * 1e3);
        fig.insert("decode_split_ms".into(), json!({"wall": wall * 1e3, "gpu_kernels": gpu * 1e3, "host_and_gaps": (wall - gpu) * 1e3}));
    }
    if !contexts.is_empty() {
        let mut rows = Vec::new();
        for &c in contexts {
            let r = pollster::block_on(janusflow::bench::llm(&engine, c, decode_tokens))?;
            let tps = r.decoded as f64 / r.decode_s;
            println!("decode after a {}-token prompt: {tps:.2} tokens/s (prefill {:.1} tokens/s)", r.prompt, r.prompt as f64 / r.prefill_s);
            rows.push(json!({"context": r.prompt, "decode_tokens_per_s": tps, "prefill_tokens_per_s": r.prompt as f64 / r.prefill_s}));
        }
        fig.insert("decode_by_context".into(), json!(rows));
    }
    println!(
        "weight bytes read per decoded token / resident weight bytes: {:.3} ({:.1} MiB / {:.1} MiB)",
        engine.llm.weight_bytes_per_token() as f64 / engine.llm.weight_bytes() as f64,
        engine.llm.weight_bytes_per_token() as f64 / (1 << 20) as f64,
        engine.llm.weight_bytes() as f64 / (1 << 20) as f64
    );
    if image {
        let u = pollster::block_on(janusflow::bench::understand(&mut engine))?;
        println!(
            "image question: encoder {:.3} s, prefill of {} tokens {:.3} s ({:.1} tokens/s), time to first token {:.3} s",
            u.encoder_s,
            u.prompt_tokens,
            u.ttft_s - u.encoder_s,
            u.prompt_tokens as f64 / (u.ttft_s - u.encoder_s),
            u.ttft_s
        );
        fig.insert("image_question".into(), json!({"encoder_s": u.encoder_s, "prompt_tokens": u.prompt_tokens, "time_to_first_token_s": u.ttft_s}));
    }
    if let Some(steps) = flow_steps {
        let g = pollster::block_on(janusflow::bench::generate(&engine, steps, vae_convs))?;
        println!("generation: {:.3} s per flow step, {:.0} submits and {:.0} dispatches per step", g.step_s, g.submits_per_step, g.dispatches_per_step);
        println!(
            "generation: batched LLM pass (2 rows × {} tokens) {:.3} s = {:.1} GFLOP/s of matrix products",
            engine.cfg.gen.tokens() + 1,
            g.llm_s,
            g.llm_flops / g.llm_s / 1e9
        );
        if g.steps >= 30 {
            println!("generation: VAE decode {:.3} s; {} steps + VAE = {:.2} s measured", g.vae_s, g.steps, g.total_s);
        } else {
            println!("generation: VAE decode {:.3} s; 30 steps + VAE ≈ {:.1} s (from {} steps)", g.vae_s, 30.0 * g.step_s + g.vae_s, g.steps);
        }
        println!("generation: GPU memory (weights + one generation's buffers) ≈ {:.0} MiB", g.memory_bytes as f64 / (1 << 20) as f64);
        let gemms = step_gemm_table(&g.step_gemms);
        println!("generation: attention (both guidance rows, all layers) timed alone {:.3} ms per step", g.attention_s_per_step * 1e3);
        let convs = vae_conv_table(&g.vae_convs);
        fig.insert(
            "generation".into(),
            json!({
                "steps": g.steps,
                "step_s": g.step_s,
                "submits_per_step": g.submits_per_step,
                "dispatches_per_step": g.dispatches_per_step,
                "step_gemms": gemms,
                "attention_ms_per_step": g.attention_s_per_step * 1e3,
                "llm_pass_s": g.llm_s,
                "llm_pass_gflop_per_s": g.llm_flops / g.llm_s / 1e9,
                "vae_s": g.vae_s,
                "vae_ms": g.vae_s * 1e3,
                "vae_convs": convs,
                "total_s": g.total_s,
                "memory_bytes": g.memory_bytes,
            }),
        );
        print_profile("flow steps", &g.step_profile, (g.steps - 1) as f64, "step");
        print_profile("batched LLM pass", &g.llm_profile, 1.0, "pass");
        print_profile("VAE decode", &g.vae_profile, 1.0, "decode");
        if fast {
            let f = pollster::block_on(janusflow::bench::fast_fidelity(&mut engine, steps))?;
            let psnr = f.psnr_db.map_or("no VAE".into(), |p| format!("picture PSNR {p:.1} dB"));
            println!(
                "fast setting against f32 caches ({steps} steps, same seed): latent cosine {:.6}, max rel diff {:.2e}, {psnr}",
                f.latent_cosine, f.latent_max_rel
            );
            fig.insert(
                "fast_fidelity".into(),
                json!({"steps": steps, "latent_cosine": f.latent_cosine, "latent_max_rel": f.latent_max_rel, "psnr_db": f.psnr_db}),
            );
        }
    }
    Ok(fig)
}
