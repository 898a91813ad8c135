// Weight decoding shared by every kernel that reads a (possibly quantized) weight matrix.
// Included by matvec.wgsl, matmul.wgsl and embedding.wgsl; the including kernel declares
// `w: array<u32>` and selects exactly one format define.
//
// Layout of one weight chunk of R rows × K columns (row-major, element e = row·K + k):
//   F32: word e holds the f32 bits.
//   F16: word e/2 holds elements (e, e+1) as two f16 (low half first).
//   Q8 : word e/4 holds 4 signed bytes (low byte first); scales at word `soff`, see below.
//   Q4 : word e/8 holds 8 nibbles (low nibble first), value = nibble − 8; scales as below.
//   Q8 and Q4 use groups of 32 consecutive elements of a row with one f16 scale each:
//   group g = e/32 has its scale in half (g & 1) of word soff + g/2.  weight = q · scale.
//   Q4A: nibbles as Q4 (q in 0..15, no offset); per row, RW = 1 + ceil(K/64) words from
//   soff + row·RW: word 0 = (d, dmin) as two f16, then one u16 per group of 32 (low byte sc,
//   high byte m), two per word.  weight = q · (d·sc) − dmin·m.
// W_VEC4 (the GPU-shape matrix–vector kernels; weight chunks are padded to 16 B): the including
// kernel binds `w` as array<vec4<u32>>, so a lane's 16 B of a group or run is one load.

#if W_VEC4
fn w_word(i: u32) -> u32 {
    return w[i / 4u][i % 4u];
}

// Words i .. i + 3 (i % 4 == 0).
fn w_quad(i: u32) -> vec4<u32> {
    return w[i / 4u];
}
#else
fn w_word(i: u32) -> u32 {
    return w[i];
}

fn w_quad(i: u32) -> vec4<u32> {
    return vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
}
#endif

#if Q8
fn group_scale(e: u32, soff: u32) -> f32 {
    let g = e / 32u;
    return unpack2x16float(w_word(soff + g / 2u))[g & 1u];
}
#endif
#if Q4
fn group_scale(e: u32, soff: u32) -> f32 {
    let g = e / 32u;
    return unpack2x16float(w_word(soff + g / 2u))[g & 1u];
}
#endif

#if Q4A
// (scale, min) of the group holding [row, k]: weight = q · scale − min.
fn q4a_affine(row: u32, k: u32, K: u32, soff: u32) -> vec2<f32> {
    let g = k / 32u;
    let base = soff + row * (1u + (K / 32u + 1u) / 2u);
    let dm = unpack2x16float(w_word(base));
    let sm = w_word(base + 1u + g / 2u) >> ((g & 1u) * 16u);
    return vec2<f32>(dm.x * f32(sm & 255u), dm.y * f32((sm >> 8u) & 255u));
}
#endif

// Weights [row, k .. k+4) as f32 (k % 4 == 0, K % 4 == 0).
fn load_w4(row: u32, k: u32, K: u32, soff: u32) -> vec4<f32> {
    let e = row * K + k;
#if F32
    return vec4<f32>(bitcast<f32>(w_word(e)), bitcast<f32>(w_word(e + 1u)), bitcast<f32>(w_word(e + 2u)), bitcast<f32>(w_word(e + 3u)));
#endif
#if F16
    return vec4<f32>(unpack2x16float(w_word(e / 2u)), unpack2x16float(w_word(e / 2u + 1u)));
#endif
#if Q8
    let q = bitcast<i32>(w_word(e / 4u));
    let v = vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)),
                      f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
    return v * group_scale(e, soff);
#endif
#if Q4
    let q = w_word(e / 8u) >> ((e % 8u) * 4u);
    let v = vec4<f32>(f32(q & 15u), f32((q >> 4u) & 15u), f32((q >> 8u) & 15u), f32((q >> 12u) & 15u)) - 8.0;
    return v * group_scale(e, soff);
#endif
#if Q4A
    let q = w_word(e / 8u) >> ((e % 8u) * 4u);
    let v = vec4<f32>(f32(q & 15u), f32((q >> 4u) & 15u), f32((q >> 8u) & 15u), f32((q >> 12u) & 15u));
    let a = q4a_affine(row, k, K, soff);
    return v * a.x - a.y;
#endif
}

#if Q4 || Q4A
// Σ_j q_j · a_j over the 8 nibbles of word `q` (low nibble first) against activations lo, hi.
fn nibble_dot(q: u32, lo: vec4<f32>, hi: vec4<f32>) -> f32 {
    return dot(vec4<f32>(f32(q & 15u), f32((q >> 4u) & 15u), f32((q >> 8u) & 15u), f32((q >> 12u) & 15u)), lo)
         + dot(vec4<f32>(f32((q >> 16u) & 15u), f32((q >> 20u) & 15u), f32((q >> 24u) & 15u), f32(q >> 28u)), hi);
}

// Σ_j a_j over a 4-bit group's 32 activations (8 vec4), pairwise as the lane kernels add them.
fn q4_group_sum(a: array<vec4<f32>, 8>) -> f32 {
    var sa = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        sa += a[2u * i] + a[2u * i + 1u];
    }
    return sa.x + sa.y + sa.z + sa.w;
}

// The 4 words of 4-bit group `grp` of `row` (a lane's 16 B, neighbouring groups contiguous).
fn q4_group_words(row: u32, grp: u32, K: u32) -> vec4<u32> {
    return w_quad((row * K + grp * 32u) / 8u);
}

// Σ_j q_j · a_j over a group's 32 nibbles `q` against its 32 activations `a` (8 vec4).
fn q4_group_nibbles(q: vec4<u32>, a: array<vec4<f32>, 8>) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 4u; i++) {
        s += nibble_dot(q[i], a[2u * i], a[2u * i + 1u]);
    }
    return s;
}

// q4_group_factors: the factors of group `grp` of `row`, read apart from the sums so that a
// kernel can issue these loads early: q4 (d, 8), weight = d · (q − 8); q4a (scale, min), weight =
// q · scale − min. q4_group_apply turns Σ q·a (`s`) and Σ a (`sa`) into the group's Σ W·a: the
// format's offset is folded into the sum of activations.
#endif

#if Q4
fn q4_group_factors(row: u32, grp: u32, K: u32, soff: u32) -> vec2<f32> {
    return vec2<f32>(group_scale(row * K + grp * 32u, soff), 8.0);
}

// q4: d · (Σ q·a − 8 · Σ a).
fn q4_group_apply(f: vec2<f32>, s: f32, sa: f32) -> f32 {
    return f.x * (s - f.y * sa);
}
#endif

#if Q4A
fn q4_group_factors(row: u32, grp: u32, K: u32, soff: u32) -> vec2<f32> {
    return q4a_affine(row, grp * 32u, K, soff);
}

// q4a: scale · Σ q·a − min · Σ a.
fn q4_group_apply(f: vec2<f32>, s: f32, sa: f32) -> f32 {
    return f.x * s - f.y * sa;
}
#endif

#if Q4 || Q4A
// q4_group_apply with the group's factors read here.
fn q4_group_finish(row: u32, grp: u32, K: u32, soff: u32, s: f32, sa: f32) -> f32 {
    return q4_group_apply(q4_group_factors(row, grp, K, soff), s, sa);
}
#endif
