// KV-cache storage and the RoPE quad its writers share (rope.wgsl, linear_out.wgsl,
// matvec_fused.wgsl write the cache; attention.wgsl and attention_tiled.wgsl read it).
//
// A cache row holds H·D elements. Writers store neighbouring elements (2j, 2j + 1) as one
// `KvPair`, readers load four (4j .. 4j + 3) as one `KvQuad`:
//   f32 caches (the default): KvPair = vec2<f32>, KvQuad = vec4<f32>;
//   KV_F16 (the opt-in `fast` setting): both halves of a pair as f16 in one u32 (low half first,
//   pack2x16float / unpack2x16float: core WGSL, no shader-f16 needed), a quad as vec2<u32>.
// f16 halves the cache's memory and the bytes attention reads per key; values and keys are
// rounded to f16 once, when written (saturating at ±65504); all arithmetic stays f32.

#if KV_F16
alias KvPair = u32;
alias KvQuad = vec2<u32>;
fn kv_pair(v: vec2<f32>) -> KvPair {
    // pack2x16float is indeterminate outside f16's finite range: saturate to it.
    return pack2x16float(clamp(v, vec2<f32>(-65504.0), vec2<f32>(65504.0)));
}
fn kv_unpair(w: KvPair) -> vec2<f32> {
    return unpack2x16float(w);
}
fn kv_unquad(w: KvQuad) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
#else
alias KvPair = vec2<f32>;
alias KvQuad = vec4<f32>;
fn kv_pair(v: vec2<f32>) -> KvPair {
    return v;
}
fn kv_unpair(w: KvPair) -> vec2<f32> {
    return w;
}
fn kv_unquad(w: KvQuad) -> vec4<f32> {
    return w;
}
#endif

// Two neighbouring rotation pairs of a head, (i, i + D/2) and (i + 1, i + 1 + D/2) with i even,
// as the stacked Q|K|V product stores them (kernels::qkv_row_order): v = (x[i], x[i + D/2],
// x[i + 1], x[i + 1 + D/2]). `lo` are elements (i, i + 1) and `hi` (i + D/2, i + 1 + D/2), so each
// half is one KvPair of the cache.
struct RopeQuad {
    lo: vec2<f32>,
    hi: vec2<f32>,
}

// The quad unrotated (values).
fn quad_halves(v: vec4<f32>) -> RopeQuad {
    return RopeQuad(v.xz, v.yw);
}

// The quad rotated (rotate-half RoPE) by the (cos, sin) of its two pairs, `a` for pair i and `b`
// for pair i + 1.
fn rope_quad(v: vec4<f32>, a: vec2<f32>, b: vec2<f32>) -> RopeQuad {
    let lo = vec2<f32>(v.x * a.x - v.y * a.y, v.z * b.x - v.w * b.y);
    let hi = vec2<f32>(v.y * a.x + v.x * a.y, v.w * b.x + v.z * b.y);
    return RopeQuad(lo, hi);
}
