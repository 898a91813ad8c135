// The rectified-flow latent's own kernels (generation, spec §3.2–3.5). The latent z is CHW
// [4, S, S]; the encoder's 2×2 patchify and the decoder's PixelShuffle(2) are folded into how
// these kernels index it, so the UViT works on token rows [G·G, 16] with G = S/2.
//   PATCHIFY: rows[r·G + c, ch·4 + i·2 + j] = z[ch, 2r + i, 2c + j]   (the conv's column order)
//   EULER:    guidance and Euler step, fused and in place, one invocation per latent pixel:
//             v = w·v_cond − (w − 1)·v_uncond,  z ← z + dt·v
//             where v_*[ch, 2r + i, 2c + j] = tokens_*[r·G + c, ch·4 + i·2 + j] (PixelShuffle)
//             With PREVIEW it also writes the clean-image estimate x̂₁ = z + (1 − t)·v, projected
//             to RGB by a fixed 4→3 matrix, as packed RGBA8.

struct Params {
    S: u32,        // latent side (48)
    Cz: u32,       // latent channels (4)
    w: f32,        // guidance weight (EULER)
    dt: f32,       // step size (EULER)
    t: f32,        // current time (PREVIEW)
    v_off: u32,    // EULER: element offset of the unconditional rows in v
}

@group(0) @binding(0) var<uniform> p: Params;
#if PATCHIFY
@group(0) @binding(1) var<storage, read> z: array<f32>;           // [Cz, S, S]
@group(0) @binding(2) var<storage, read_write> rows: array<f32>;  // [(S/2)², Cz·4]

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = p.Cz * p.S * p.S;
    let k = gid.x;
    if (k >= n) {
        return;
    }
    let g = p.S / 2u;
    let col = k % (p.Cz * 4u);
    let tok = k / (p.Cz * 4u);
    let ch = col / 4u;
    let i = (col / 2u) % 2u;
    let j = col % 2u;
    let r = tok / g;
    let c = tok % g;
    rows[k] = z[(ch * p.S + 2u * r + i) * p.S + 2u * c + j];
}
#endif

#if EULER
@group(0) @binding(1) var<storage, read> v: array<f32>;           // [2, (S/2)², Cz·4]: cond rows, then uncond at v_off
@group(0) @binding(2) var<storage, read_write> z: array<f32>;     // [Cz, S, S]
#if PREVIEW
@group(0) @binding(3) var<storage, read_write> rgba: array<u32>;  // [S, S] packed RGBA8
// Scaled SDXL-VAE latent → RGB in [−1, 1] (a fixed linear fit; only for the progress preview).
fn proj(ch: u32) -> vec3<f32> {
    switch ch {
        case 0u: { return vec3<f32>(0.3651, 0.4232, 0.4341); }
        case 1u: { return vec3<f32>(-0.2533, -0.0042, 0.1068); }
        case 2u: { return vec3<f32>(0.1076, 0.1111, -0.0362); }
        default: { return vec3<f32>(-0.3165, -0.2492, -0.2188); }
    }
}
const PROJ_BIAS = vec3<f32>(0.1084, -0.0175, -0.0011);
#endif

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let px = gid.x;
    if (px >= p.S * p.S) {
        return;
    }
    let y = px / p.S;
    let x = px % p.S;
    let g = p.S / 2u;
    let tok = (y / 2u) * g + x / 2u;
    let sub = (y % 2u) * 2u + x % 2u;
#if PREVIEW
    var rgb = PROJ_BIAS;
#endif
    for (var ch = 0u; ch < p.Cz; ch++) {
        let vi = tok * p.Cz * 4u + ch * 4u + sub;
        let vel = p.w * v[vi] - (p.w - 1.0) * v[p.v_off + vi];
        let zi = (ch * p.S + y) * p.S + x;
        let z0 = z[zi];
#if PREVIEW
        if (ch < 4u) {
            rgb += proj(ch) * (z0 + (1.0 - p.t) * vel);
        }
#endif
        z[zi] = z0 + p.dt * vel;
    }
#if PREVIEW
    let c = clamp((rgb + 1.0) * 0.5, vec3<f32>(0.0), vec3<f32>(1.0));
    rgba[px] = pack4x8unorm(vec4<f32>(c, 1.0));
#endif
}
#endif
