// The parameter block of the linear-layer products (matvec.wgsl, matmul.wgsl), mirrored by
// kernels::LinearParams.

struct Params {
    M: u32,        // activation rows
    N: u32,        // rows of this weight chunk
    K: u32,        // inner dimension (K % 4 == 0)
    x_off: u32,    // element offset of x[0, 0] (multiple of 4)
    y_off: u32,    // element offset of y[0, 0]
    y_stride: u32, // elements per row of y (the full output width)
    row0: u32,     // first output column written by this chunk
    soff: u32,     // word offset of the group scales inside w (quantized formats)
    H: u32,        // ROPE_PAIRS: heads (the other fields below are ROPE_PAIRS' too)
    D: u32,        // head dim (D % 4 == 0)
    rows0: u32,    // rows of sequence 0 (TWO_SEQS: rows from rows0 on are sequence 1's)
    pos0: u32,     // RoPE position of sequence 0's first row
    slot0: u32,    // cache slot of sequence 0's first row
    pos1: u32,     // TWO_SEQS: the same for sequence 1
    slot1: u32,
}
