// A tile loader's next quads (gemm_tile64.wgsl, gemm_tile128.wgsl): four values of k of its row
// of x (through the includer's cursor) and of its row of W, zeros past M, N or K, so that the
// slice's tail and the tile's edges multiply as zeros.

struct Quads {
    a: vec4<f32>,
    b: vec4<f32>,
}

// `a_ok`: the loader's row of x exists (and belongs to the tile); `k`: the quads' first column.
fn fetch_quads(cur: XCursor, a_ok: bool, b_row: u32, k: u32) -> Quads {
    var q = Quads(vec4<f32>(0.0), vec4<f32>(0.0));
    if (a_ok && k < p.K) {
        q.a = x_load(cur);
    }
    if (b_row < p.N && k < p.K) {
        q.b = load_w4(b_row, k, p.K, p.soff);
    }
    return q;
}
