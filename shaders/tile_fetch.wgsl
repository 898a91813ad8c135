// The tile loaders (gemm_tile64.wgsl, gemm_tile128.wgsl). A loader fetches a block of rows of x
// (through the includer's cursors) or of W, four values of k each, with zeros past M, N or K so
// that the slice's tail and the tile's edges multiply as zeros, and stores it transposed: one
// whole vec4 (four rows at one k) per k.
// Why blocks: a tile's vec4 holds four rows, and a write to one component of a vector may access
// the whole vector (WGSL says so; D3D's and Metal's compilers do read, modify and write it back),
// so four invocations each writing their row's component of one vec4 would race.
// Rows and cursors are named fields, not arrays, so that no index is dynamic (a private array
// indexed at run time can live in slow memory).

// What the tiles' workgroup buffers hold (WGSL declarations may come in any order, so the
// includers' buffers use it above the include): f16 with F16_MATH (the opt-in `fast` setting,
// devices with shader-f16), else f32.
#if F16_MATH
alias Elem = f16;
#else
alias Elem = f32;
#endif

struct Block {
    r0: vec4<f32>, // four values of k of the block's first row
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

struct Cursors {
    c0: XCursor, // the block's first row of x
    c1: XCursor,
    c2: XCursor,
    c3: XCursor,
}

// Rows row0 .. row0 + 3 of W from column k.
fn fetch_w(row0: u32, k: u32) -> Block {
    var b = Block(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (k < p.K) {
        if (row0 < p.N) {
            b.r0 = load_w4(row0, k, p.K, p.soff);
        }
        if (row0 + 1u < p.N) {
            b.r1 = load_w4(row0 + 1u, k, p.K, p.soff);
        }
        if (row0 + 2u < p.N) {
            b.r2 = load_w4(row0 + 2u, k, p.K, p.soff);
        }
        if (row0 + 3u < p.N) {
            b.r3 = load_w4(row0 + 3u, k, p.K, p.soff);
        }
    }
    return b;
}

// Cursors at column k of rows row0 .. row0 + 3 of x (only the first where `one`).
fn start_x(row0: u32, k: u32, one: bool) -> Cursors {
    var c: Cursors;
    c.c0 = x_start(row0, k);
    if (!one) {
        c.c1 = x_start(row0 + 1u, k);
        c.c2 = x_start(row0 + 2u, k);
        c.c3 = x_start(row0 + 3u, k);
    }
    return c;
}

// The cursors moved on by dk columns.
fn advance_x(c: Cursors, dk: u32, one: bool) -> Cursors {
    var c0 = c.c0;
    var c1 = c.c1;
    var c2 = c.c2;
    var c3 = c.c3;
    x_advance(&c0, dk);
    if (!one) {
        x_advance(&c1, dk);
        x_advance(&c2, dk);
        x_advance(&c3, dk);
    }
    return Cursors(c0, c1, c2, c3);
}

// The cursors' rows of x (rows past M: zeros) from column k.
fn fetch_x(c: Cursors, row0: u32, k: u32, one: bool) -> Block {
    var b = Block(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (k < p.K) {
        if (row0 < p.M) {
            b.r0 = x_load(c.c0);
        }
        if (!one) {
            if (row0 + 1u < p.M) {
                b.r1 = x_load(c.c1);
            }
            if (row0 + 2u < p.M) {
                b.r2 = x_load(c.c2);
            }
            if (row0 + 3u < p.M) {
                b.r3 = x_load(c.c3);
            }
        }
    }
    return b;
}

// A loader's next block from column k, its cursors first moved on by dk: rows of W from w_row0,
// or of x from x_row0 (one row where `one`); zeros for an invocation that loads nothing.
fn fetch_block(w_loader: bool, x_loader: bool, w_row0: u32, cur: ptr<function, Cursors>, x_row0: u32, k: u32, dk: u32, one: bool) -> Block {
    if (w_loader) {
        return fetch_w(w_row0, k);
    }
    if (x_loader) {
        *cur = advance_x(*cur, dk, one);
        return fetch_x(*cur, x_row0, k, one);
    }
    return Block(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// Value j of each of the block's four rows: what one vec4 of the tile holds.
fn column(b: Block, j: u32) -> vec4<f32> {
    return vec4<f32>(b.r0[j], b.r1[j], b.r2[j], b.r3[j]);
}
