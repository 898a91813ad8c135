// The tile loaders (gemm_tile64.wgsl, gemm_tile128.wgsl). A loader fetches a block of rows of x
// (through the includer's cursors) or of W, four values of k each, with zeros past M, N or K so
// that the slice's tail and the tile's edges multiply as zeros, and stores it transposed: one
// whole vec4 (four rows at one k) per k.
// Why blocks: a tile's vec4 holds four rows, and a write to one component of a vector may access
// the whole vector (WGSL says so; D3D's and Metal's compilers do read, modify and write it back),
// so four invocations each writing their row's component of one vec4 would race.

alias Block = array<vec4<f32>, 4>; // [row of the block] = four values of k

// Rows row0 .. row0 + 3 of W from column k.
fn fetch_w(row0: u32, k: u32) -> Block {
    var b: Block;
    if (k < p.K) {
        for (var i = 0u; i < 4u; i++) {
            if (row0 + i < p.N) {
                b[i] = load_w4(row0 + i, k, p.K, p.soff);
            }
        }
    }
    return b;
}

// `n` rows of x from row0 (1 or 4), through their cursors (at column k).
fn fetch_x(cur: ptr<function, array<XCursor, 4>>, row0: u32, n: u32, k: u32) -> Block {
    var a: Block;
    if (k < p.K) {
        for (var i = 0u; i < n; i++) {
            if (row0 + i < p.M) {
                a[i] = x_load((*cur)[i]);
            }
        }
    }
    return a;
}

// Moves the first `n` cursors on by dk columns.
fn advance_x(cur: ptr<function, array<XCursor, 4>>, n: u32, dk: u32) {
    for (var i = 0u; i < n; i++) {
        var c = (*cur)[i];
        x_advance(&c, dk);
        (*cur)[i] = c;
    }
}

// Value j of each of the block's four rows: what one vec4 of the tile holds.
fn column(b: Block, j: u32) -> vec4<f32> {
    return vec4<f32>(b[0][j], b[1][j], b[2][j], b[3][j]);
}
