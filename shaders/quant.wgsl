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

// Σ_j a_j over a 4-bit group's 32 activations (8 vec4), in the order q4_group_dot pairs them.
fn q4_group_sum(a: array<vec4<f32>, 8>) -> f32 {
    var sa = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        sa += a[2u * i] + a[2u * i + 1u];
    }
    return sa.x + sa.y + sa.z + sa.w;
}

// One whole 4-bit group in a matrix–vector product: Σ_{j<32} W[row, 32·grp + j] · a_j, with `a`
// the group's 32 activations as 8 vec4 and `sa` their sum (q4_group_sum). Its 4 words are read
// together (w_quad: a lane's 16 B, neighbouring lanes' groups contiguous) and its scales once; the format's
// offset is folded into the sum of a (q4_group_finish).
fn q4_group_dot(row: u32, grp: u32, K: u32, soff: u32, a: array<vec4<f32>, 8>, sa: f32) -> f32 {
    let q = w_quad((row * K + grp * 32u) / 8u);
    var s = 0.0;
    for (var i = 0u; i < 4u; i++) {
        s += nibble_dot(q[i], a[2u * i], a[2u * i + 1u]);
    }
    return q4_group_finish(row, grp, K, soff, s, sa);
}
#endif

#if Q4
// q4: d · (Σ q·a − 8 · Σ a).
fn q4_group_finish(row: u32, grp: u32, K: u32, soff: u32, s: f32, sa: f32) -> f32 {
    return group_scale(row * K + grp * 32u, soff) * (s - 8.0 * sa);
}
#endif

#if Q4A
// q4a: scale · Σ q·a − min · Σ a.
fn q4_group_finish(row: u32, grp: u32, K: u32, soff: u32, s: f32, sa: f32) -> f32 {
    let f = q4a_affine(row, grp * 32u, K, soff);
    return f.x * s - f.y * sa;
}
#endif
