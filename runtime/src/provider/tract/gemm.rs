//! A matrix product with a constant right-hand side: `C = A B (+ bias)`, A (M, K) row-major,
//! B packed once into panels of 32 columns.
//!
//! On x86-64 with AVX-512F the product runs a register tile of 12 rows x 32 columns (24 zmm
//! accumulators; per k two loads of B and one broadcast of A per row), which keeps both FMA
//! ports busy: ~150 GFLOP/s on one core of this machine for the demo's linear layers (M = 392,
//! K and N in {128, 384, 512}), where tract's own f32 kernel reaches ~87 and ONNX Runtime's MLAS
//! ~145. With AVX2 and FMA (x86-64 CPUs without AVX-512: most AMD parts before Zen 4, Intel's
//! client parts since Alder Lake) a tile of 6 rows x 16 columns (12 ymm accumulators) runs over
//! each half of a panel: 50-59 GFLOP/s on one core of this machine for (392 x 128) x (128 x 512),
//! against 111-146 for the AVX-512 tile in the same minutes (twice the lanes). Both tiles add
//! each product to its sum in the same order with one rounding (FMA), so they give the same
//! bits. Products of so few rows that one tile's accumulators cannot hide the FMA's latency (a
//! phase-1 step of one image: 2 rows with guidance) run a tile over several panels instead (with
//! AVX-512F one row 4 panels at a time, 2 to 4 rows 2 panels; with AVX2 one row 2 panels, 2 or 3
//! rows one whole panel), each value still summed in the same order: the same bits as in a
//! product of many rows. Elsewhere a portable loop over the same panels is
//! used (the rewrite that brings this op in only does so where one of the tiles runs; the
//! portable loop keeps the op correct anywhere).

/// Columns per panel (two 16-lane vectors).
pub const PANEL: usize = 32;
/// Rows per register tile.
const TILE_ROWS: usize = 12;

/// B (K, N) as panels of [`PANEL`] columns, each K rows of PANEL values (zero past N), and a
/// bias of N values (zero when none) padded the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedB {
    k: usize,
    n: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
}

impl PackedB {
    /// Packs `b` (K, N) row-major, with `bias` (N,) added to every row of the product.
    pub fn new(b: &[f32], k: usize, n: usize, bias: Option<&[f32]>) -> Self {
        assert_eq!(b.len(), k * n, "B must hold K x N values");
        let mut panels = Vec::new();
        pack(b, (k, n), (n, 1), &mut panels);
        let mut padded = vec![0.0f32; n.div_ceil(PANEL) * PANEL];
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "the bias must hold N values");
            padded[..n].copy_from_slice(bias);
        }
        Self { k, n, panels, bias: padded }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Whether a bias was packed with B.
    pub fn has_bias(&self) -> bool {
        self.bias.iter().any(|&b| b != 0.0)
    }

    /// The packed B as the kernel reads it.
    pub fn view(&self) -> Panels<'_> {
        Panels { k: self.k, n: self.n, panels: &self.panels, bias: Some(&self.bias) }
    }
}

/// Packs B (K, N), element (k, n) at `k * strides.0 + n * strides.1` of `b`, into `into` as
/// panels of [`PANEL`] columns (zero past N).
pub fn pack(b: &[f32], (k, n): (usize, usize), strides: (usize, usize), into: &mut Vec<f32>) {
    into.clear();
    into.resize(n.div_ceil(PANEL) * k * PANEL, 0.0);
    for (p, panel) in into.chunks_exact_mut(k * PANEL).enumerate() {
        let (first, cols) = (p * PANEL, (n - p * PANEL).min(PANEL));
        if strides.1 == 1 {
            for (kk, row) in panel.chunks_exact_mut(PANEL).enumerate() {
                let start = kk * strides.0 + first;
                row[..cols].copy_from_slice(&b[start..start + cols]);
            }
        } else {
            copy_strided((b, first * strides.1, strides), (k, cols), (panel, 0, (PANEL, 1)));
        }
    }
}

/// Copies a `rows` x `cols` matrix from `src` (element (r, c) at `off + r * rs + c * cs`) to
/// `dst` (the same with its offset and strides), in blocks of 16 x 16 so that a transpose reads
/// and writes whole cache lines, the inner loop along the source's contiguous axis.
pub fn copy_strided(
    (src, s_off, (s_rs, s_cs)): (&[f32], usize, (usize, usize)),
    (rows, cols): (usize, usize),
    (dst, d_off, (d_rs, d_cs)): (&mut [f32], usize, (usize, usize)),
) {
    const BLOCK: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    let last = |off: usize, rs: usize, cs: usize| off + (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(s_off, s_rs, s_cs) < src.len() && last(d_off, d_rs, d_cs) < dst.len(), "copy_strided: out of bounds");
    // Along rows in the inner loop when the source is contiguous along them (a transpose's read).
    let inner_rows = s_rs == 1 && s_cs != 1;
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            let (r1, c1) = ((r0 + BLOCK).min(rows), (c0 + BLOCK).min(cols));
            // SAFETY: every (r, c) is within rows x cols, whose last elements were checked above.
            unsafe {
                if inner_rows {
                    for c in c0..c1 {
                        for r in r0..r1 {
                            *dst.get_unchecked_mut(d_off + r * d_rs + c * d_cs) = *src.get_unchecked(s_off + r * s_rs + c * s_cs);
                        }
                    }
                } else {
                    for r in r0..r1 {
                        for c in c0..c1 {
                            *dst.get_unchecked_mut(d_off + r * d_rs + c * d_cs) = *src.get_unchecked(s_off + r * s_rs + c * s_cs);
                        }
                    }
                }
            }
        }
    }
}

/// A packed B (see [`pack`]) and its padded bias, if any, as the kernel reads them.
#[derive(Debug, Clone, Copy)]
pub struct Panels<'a> {
    pub k: usize,
    pub n: usize,
    pub panels: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

impl Panels<'_> {
    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.k * PANEL..(p + 1) * self.k * PANEL]
    }
}

/// A zero bias for one panel.
const NO_BIAS: [f32; PANEL] = [0.0; PANEL];

/// The register tiles of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 12 x 32 in zmm registers (AVX-512F).
    Avx512,
    /// 6 x 16 in ymm registers (AVX2 and FMA).
    Avx2Fma,
    /// Plain loops (no tile; not brought in by the rewrites).
    Portable,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512 => "avx512",
            Kernel::Avx2Fma => "avx2-fma",
            Kernel::Portable => "portable",
        }
    }
}

/// The tile this CPU runs (as tract sees the CPU, which `TRACT_CPU_ISA` edits).
pub fn kernel() -> Kernel {
    if super::isa::avx512f() {
        Kernel::Avx512
    } else if super::isa::avx2_fma() {
        Kernel::Avx2Fma
    } else {
        Kernel::Portable
    }
}

/// Whether a register tile runs the product here (where the rewrites bring the op in).
pub fn fast_path() -> bool {
    kernel() != Kernel::Portable
}

/// `c` (M, N) = `a` (M, K) x B + bias, both row-major, every value of `c` written.
pub fn matmul(a: &[f32], m: usize, b: Panels, c: &mut [f32]) {
    assert_eq!(a.len(), m * b.k, "A must hold M x K values");
    assert_eq!(c.len(), m * b.n, "C must hold M x N values");
    matmul_strided((a, b.k), m, b, (c, b.n))
}

/// [`matmul`] with rows `lda` apart in `a` and `ldc` apart in `c` (the rows' K, N values
/// contiguous), the slices starting at the first row.
pub fn matmul_strided((a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && a.len() >= (m - 1) * lda + k, "A must hold M rows of K values, {lda} apart");
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "C must hold M rows of N values, {ldc} apart");
    assert_eq!(b.panels.len(), n.div_ceil(PANEL) * k * PANEL, "B must be packed in panels");
    assert!(b.bias.is_none_or(|v| v.len() == n.div_ceil(PANEL) * PANEL), "the bias must be padded to the panels");
    run(kernel(), (a, lda), m, b, (c, ldc))
}

/// The product on `kernel`, which the CPU must have (the caller checked the extents).
fn run(kernel: Kernel, (a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
    match kernel {
        // SAFETY: `kernel` says the CPU has AVX-512F; the slices' extents were checked.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::matmul((a, lda), m, b, (c, ldc)) },
        // SAFETY: `kernel` says the CPU has AVX2 and FMA; the slices' extents were checked.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { avx2::matmul((a, lda), m, b, (c, ldc)) },
        _ => matmul_portable((a, lda), m, b, (c, ldc)),
    }
}

/// The product through the panels with plain loops.
pub fn matmul_portable((a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
    let n = b.n;
    let mut acc = [0.0f32; PANEL];
    for p in 0..n.div_ceil(PANEL) {
        let panel = b.panel(p);
        let cols = (n - p * PANEL).min(PANEL);
        for r in 0..m {
            acc.copy_from_slice(b.bias.map_or(&NO_BIAS[..], |v| &v[p * PANEL..(p + 1) * PANEL]));
            for (kk, w) in panel.chunks_exact(PANEL).enumerate() {
                let x = a[r * lda + kk];
                for (s, &w) in acc.iter_mut().zip(w) {
                    *s += x * w;
                }
            }
            c[r * ldc + p * PANEL..r * ldc + p * PANEL + cols].copy_from_slice(&acc[..cols]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{NO_BIAS, PANEL, Panels, TILE_ROWS};

    /// Rows `ROWS` of A from `a` (row stride `lda`, K = `k`) times `P` consecutive panels from
    /// `panel` (each k x PANEL values, `k * PANEL` apart), plus their bias (P x PANEL values),
    /// into `c` (row stride `ldc`), the first `cols` columns of the P panels.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const ROWS: usize, const P: usize>(
        (a, lda): (*const f32, usize),
        k: usize,
        panel: *const f32,
        bias: *const f32,
        (c, ldc): (*mut f32, usize),
        cols: usize,
    ) {
        // SAFETY (whole body): the caller passes ROWS rows of k values at `a`, P panels of k x
        // PANEL values, P x PANEL bias values, and ROWS rows of at least `cols` writable values
        // at `c`.
        unsafe {
            let mut acc = [[[_mm512_setzero_ps(); 2]; P]; ROWS];
            for row in acc.iter_mut() {
                for (p, acc) in row.iter_mut().enumerate() {
                    *acc = [_mm512_loadu_ps(bias.add(p * PANEL)), _mm512_loadu_ps(bias.add(p * PANEL + 16))];
                }
            }
            let stride = k * PANEL;
            for kk in 0..k {
                let mut w = [[_mm512_setzero_ps(); 2]; P];
                for (p, w) in w.iter_mut().enumerate() {
                    let at = panel.add(p * stride + kk * PANEL);
                    *w = [_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16))];
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.add(r * lda + kk));
                    for (acc, w) in row.iter_mut().zip(&w) {
                        acc[0] = _mm512_fmadd_ps(x, w[0], acc[0]);
                        acc[1] = _mm512_fmadd_ps(x, w[1], acc[1]);
                    }
                }
            }
            let lanes = |n: usize| -> __mmask16 { if n >= 16 { 0xffff } else { ((1u32 << n) - 1) as u16 } };
            for (r, row) in acc.iter().enumerate() {
                for (p, acc) in row.iter().enumerate() {
                    let (at, cols) = (c.add(r * ldc + p * PANEL), cols.saturating_sub(p * PANEL).min(PANEL));
                    if cols == PANEL {
                        _mm512_storeu_ps(at, acc[0]);
                        _mm512_storeu_ps(at.add(16), acc[1]);
                    } else {
                        _mm512_mask_storeu_ps(at, lanes(cols), acc[0]);
                        _mm512_mask_storeu_ps(at.add(16), lanes(cols.saturating_sub(16)), acc[1]);
                    }
                }
            }
        }
    }

    /// The last rows (fewer than a tile) of one panel.
    #[target_feature(enable = "avx512f")]
    unsafe fn rest(rows: usize, a: (*const f32, usize), k: usize, panel: *const f32, bias: *const f32, c: (*mut f32, usize), cols: usize) {
        // SAFETY: as for `tile`, with `rows` rows.
        unsafe {
            match rows {
                1 => tile::<1, 1>(a, k, panel, bias, c, cols),
                2 => tile::<2, 1>(a, k, panel, bias, c, cols),
                3 => tile::<3, 1>(a, k, panel, bias, c, cols),
                4 => tile::<4, 1>(a, k, panel, bias, c, cols),
                5 => tile::<5, 1>(a, k, panel, bias, c, cols),
                6 => tile::<6, 1>(a, k, panel, bias, c, cols),
                7 => tile::<7, 1>(a, k, panel, bias, c, cols),
                8 => tile::<8, 1>(a, k, panel, bias, c, cols),
                9 => tile::<9, 1>(a, k, panel, bias, c, cols),
                10 => tile::<10, 1>(a, k, panel, bias, c, cols),
                11 => tile::<11, 1>(a, k, panel, bias, c, cols),
                _ => {}
            }
        }
    }

    /// Panels per tile for a product of `m` rows: one, except for products of so few rows
    /// that one panel's 2 m accumulators could not hide the FMA's latency (a phase-1 step of
    /// one image, or of a few): then 2 to 4 panels, for 8 or more independent sums.
    pub(super) fn panels_per_tile(m: usize) -> usize {
        match m {
            1 => 4,
            2..=4 => 2,
            _ => 1,
        }
    }

    /// A zero bias for the most panels a tile takes.
    const NO_BIASES: [f32; 4 * PANEL] = [0.0; 4 * PANEL];

    /// `panels` (up to [`panels_per_tile`] of m) consecutive panels of a product of m < 5 rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn few_rows(
        (m, panels): (usize, usize),
        a: (*const f32, usize),
        k: usize,
        panel: *const f32,
        bias: *const f32,
        c: (*mut f32, usize),
        cols: usize,
    ) {
        // SAFETY: as for `tile`, with m rows and `panels` panels.
        unsafe {
            match (m, panels) {
                (1, 4) => tile::<1, 4>(a, k, panel, bias, c, cols),
                (1, 3) => tile::<1, 3>(a, k, panel, bias, c, cols),
                (1, 2) => tile::<1, 2>(a, k, panel, bias, c, cols),
                (2, 2) => tile::<2, 2>(a, k, panel, bias, c, cols),
                (3, 2) => tile::<3, 2>(a, k, panel, bias, c, cols),
                (4, 2) => tile::<4, 2>(a, k, panel, bias, c, cols),
                (m, _) => rest(m, a, k, panel, bias, c, cols),
            }
        }
    }

    /// [`super::matmul`] with AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul((a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
        let (k, n) = (b.k, b.n);
        let bias_at = |p: usize| b.bias.map_or(NO_BIAS.as_ptr(), |v| v[p * PANEL..].as_ptr());
        let count = n.div_ceil(PANEL);
        if panels_per_tile(m) > 1 {
            let mut p = 0;
            while p < count {
                let group = (count - p).min(panels_per_tile(m));
                let cols = (n - p * PANEL).min(group * PANEL);
                let bias = b.bias.map_or(NO_BIASES.as_ptr(), |v| v[p * PANEL..].as_ptr());
                // SAFETY: rows 0..m of A and C as the caller checked; panels p..p + group exist
                // (consecutive, k x PANEL values each, read through a pointer to all the panels
                // from p on) with group x PANEL bias values (the padded bias, or NO_BIASES);
                // columns up to p * PANEL + cols <= n.
                unsafe {
                    let panels = b.panels[p * k * PANEL..].as_ptr();
                    few_rows((m, group), (a.as_ptr(), lda), k, panels, bias, (c.as_mut_ptr().add(p * PANEL), ldc), cols);
                }
                p += group;
            }
            return;
        }
        for p in 0..count {
            let panel = b.panel(p).as_ptr();
            let bias = bias_at(p);
            let cols = (n - p * PANEL).min(PANEL);
            let mut r = 0;
            // SAFETY: rows r..r + TILE_ROWS (then the rest) lie within A (m rows of k values, lda
            // apart) and C (m rows of n values, ldc apart), as the caller checked; column
            // p * PANEL + cols <= n; the panel and bias hold k x PANEL and PANEL values.
            unsafe {
                while r + TILE_ROWS <= m {
                    let (ar, cr) = (a.as_ptr().add(r * lda), c.as_mut_ptr().add(r * ldc + p * PANEL));
                    tile::<TILE_ROWS, 1>((ar, lda), k, panel, bias, (cr, ldc), cols);
                    r += TILE_ROWS;
                }
                let (ar, cr) = (a.as_ptr().add(r * lda), c.as_mut_ptr().add(r * ldc + p * PANEL));
                rest(m - r, (ar, lda), k, panel, bias, (cr, ldc), cols);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{NO_BIAS, PANEL, Panels};

    /// Columns per tile: half a panel (two 8-lane vectors).
    const HALF: usize = PANEL / 2;
    /// Rows per register tile (12 accumulators, 2 loads of B, a broadcast of A: 15 of the 16
    /// ymm registers).
    const TILE_ROWS: usize = 6;

    /// Rows `ROWS` of A from `a` (row stride `lda`, K = `k`) times one half panel at `half` (k
    /// rows, PANEL apart), plus its bias, into `c` (row stride `ldc`), the first `cols` columns.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const ROWS: usize>(
        (a, lda): (*const f32, usize),
        k: usize,
        half: *const f32,
        bias: *const f32,
        (c, ldc): (*mut f32, usize),
        cols: usize,
    ) {
        // SAFETY (whole body): the caller passes ROWS rows of k values at `a`, k rows of HALF
        // values PANEL apart at `half`, HALF bias values, and ROWS rows of at least `cols`
        // writable values at `c`.
        unsafe {
            let (b0, b1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
            let mut acc = [[b0, b1]; ROWS];
            for kk in 0..k {
                let w0 = _mm256_loadu_ps(half.add(kk * PANEL));
                let w1 = _mm256_loadu_ps(half.add(kk * PANEL + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                    acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                if cols == HALF {
                    _mm256_storeu_ps(c.add(r * ldc), acc[0]);
                    _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
                } else {
                    let mut row = [0.0f32; HALF];
                    _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
                    std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * ldc), cols);
                }
            }
        }
    }

    /// The last rows (fewer than a tile) of one half panel.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rest(rows: usize, a: (*const f32, usize), k: usize, half: *const f32, bias: *const f32, c: (*mut f32, usize), cols: usize) {
        // SAFETY: as for `tile`, with `rows` rows.
        unsafe {
            match rows {
                1 => tile::<1>(a, k, half, bias, c, cols),
                2 => tile::<2>(a, k, half, bias, c, cols),
                3 => tile::<3>(a, k, half, bias, c, cols),
                4 => tile::<4>(a, k, half, bias, c, cols),
                5 => tile::<5>(a, k, half, bias, c, cols),
                _ => {}
            }
        }
    }

    /// Rows `ROWS` of A times `P` whole consecutive panels from `panel` (k x PANEL values each,
    /// `k * PANEL` apart), plus their bias (P x PANEL values), into `c` (row stride `ldc`), the
    /// first `cols` columns: for products of so few rows that half a panel's 2 x ROWS
    /// accumulators could not hide the FMA's latency. Each B vector is loaded once per k and
    /// used by every row, so that the accumulators, the rows' broadcasts and one B vector fit the
    /// 16 registers (ROWS x 4 x P + ROWS + 1).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn wide<const ROWS: usize, const P: usize>(
        (a, lda): (*const f32, usize),
        k: usize,
        panel: *const f32,
        bias: *const f32,
        (c, ldc): (*mut f32, usize),
        cols: usize,
    ) {
        // SAFETY (whole body): the caller passes ROWS rows of k values at `a`, P panels of k x
        // PANEL values, P x PANEL bias values, and ROWS rows of at least `cols` writable values
        // at `c`.
        unsafe {
            let mut acc = [[[_mm256_setzero_ps(); 4]; P]; ROWS];
            for row in acc.iter_mut() {
                for (p, acc) in row.iter_mut().enumerate() {
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_loadu_ps(bias.add(p * PANEL + j * 8));
                    }
                }
            }
            let stride = k * PANEL;
            for kk in 0..k {
                let mut x = [_mm256_setzero_ps(); ROWS];
                for (r, x) in x.iter_mut().enumerate() {
                    *x = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                }
                for p in 0..P {
                    for j in 0..4 {
                        let w = _mm256_loadu_ps(panel.add(p * stride + kk * PANEL + j * 8));
                        for (row, x) in acc.iter_mut().zip(&x) {
                            row[p][j] = _mm256_fmadd_ps(*x, w, row[p][j]);
                        }
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (p, acc) in row.iter().enumerate() {
                    let (at, cols) = (c.add(r * ldc + p * PANEL), cols.saturating_sub(p * PANEL).min(PANEL));
                    if cols == PANEL {
                        for (j, acc) in acc.iter().enumerate() {
                            _mm256_storeu_ps(at.add(j * 8), *acc);
                        }
                    } else {
                        let mut values = [0.0f32; PANEL];
                        for (j, acc) in acc.iter().enumerate() {
                            _mm256_storeu_ps(values.as_mut_ptr().add(j * 8), *acc);
                        }
                        std::ptr::copy_nonoverlapping(values.as_ptr(), at, cols);
                    }
                }
            }
        }
    }

    /// A zero bias for the most panels [`wide`] takes.
    const NO_BIASES: [f32; 2 * PANEL] = [0.0; 2 * PANEL];

    /// A product of one to three rows through [`wide`]: one row two panels at a time (8
    /// accumulators), two or three rows a panel at a time (8 or 12).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn few_rows((a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
        let (k, n) = (b.k, b.n);
        let count = n.div_ceil(PANEL);
        let mut p = 0;
        while p < count {
            let group = if m == 1 { (count - p).min(2) } else { 1 };
            let cols = (n - p * PANEL).min(group * PANEL);
            let bias = b.bias.map_or(NO_BIASES.as_ptr(), |v| v[p * PANEL..].as_ptr());
            // SAFETY: rows 0..m of A and C as the caller checked; panels p..p + group exist
            // (k x PANEL values each, read through a pointer to all the panels from p on) with
            // group x PANEL bias values (the padded bias, or NO_BIASES); columns up to
            // p * PANEL + cols <= n.
            unsafe {
                let (a, panels, c) = ((a.as_ptr(), lda), b.panels[p * k * PANEL..].as_ptr(), (c.as_mut_ptr().add(p * PANEL), ldc));
                match (m, group) {
                    (1, 2) => wide::<1, 2>(a, k, panels, bias, c, cols),
                    (1, _) => wide::<1, 1>(a, k, panels, bias, c, cols),
                    (2, _) => wide::<2, 1>(a, k, panels, bias, c, cols),
                    _ => wide::<3, 1>(a, k, panels, bias, c, cols),
                }
            }
            p += group;
        }
    }

    /// [`super::matmul`] with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn matmul((a, lda): (&[f32], usize), m: usize, b: Panels, (c, ldc): (&mut [f32], usize)) {
        if m <= 3 {
            // SAFETY: as this function's.
            return unsafe { few_rows((a, lda), m, b, (c, ldc)) };
        }
        let (k, n) = (b.k, b.n);
        for p in 0..n.div_ceil(PANEL) {
            let panel = b.panel(p).as_ptr();
            let bias = b.bias.map_or(NO_BIAS.as_ptr(), |v| v[p * PANEL..].as_ptr());
            for h in 0..2 {
                let col = p * PANEL + h * HALF;
                if col >= n {
                    break;
                }
                let cols = (n - col).min(HALF);
                let mut r = 0;
                // SAFETY: rows r..r + TILE_ROWS (then the rest) lie within A (m rows of k values,
                // lda apart) and C (m rows of n values, ldc apart), as the caller checked; column
                // col + cols <= n; the panel holds k x PANEL values and the bias PANEL, of which
                // this half reads the columns h * HALF.. h * HALF + HALF.
                unsafe {
                    let (half, bias) = (panel.add(h * HALF), bias.add(h * HALF));
                    while r + TILE_ROWS <= m {
                        let (ar, cr) = (a.as_ptr().add(r * lda), c.as_mut_ptr().add(r * ldc + col));
                        tile::<TILE_ROWS>((ar, lda), k, half, bias, (cr, ldc), cols);
                        r += TILE_ROWS;
                    }
                    let (ar, cr) = (a.as_ptr().add(r * lda), c.as_mut_ptr().add(r * ldc + col));
                    rest(m - r, (ar, lda), k, half, bias, (cr, ldc), cols);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided operands: rows of A and C further apart than K and N (the values between them
    /// untouched), and B packed from its transpose, give the dense product.
    #[test]
    fn strided_product_matches_dense() {
        let (m, k, n, lda, ldc) = (14, 20, 37, 23, 41);
        let (a, b) = (values(m * lda, 4), values(k * n, 5));
        let dense_a: Vec<f32> = (0..m).flat_map(|r| a[r * lda..r * lda + k].to_vec()).collect();
        let mut want = vec![0.0; m * n];
        matmul(&dense_a, m, PackedB::new(&b, k, n, None).view(), &mut want);
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut panels = Vec::new();
        pack(&bt, (k, n), (1, k), &mut panels);
        let view = Panels { k, n, panels: &panels, bias: None };
        for kernel in kernels_here() {
            let mut c = vec![-7.0f32; m * ldc];
            run(kernel, (&a, lda), m, view, (&mut c, ldc));
            for r in 0..m {
                for (j, (g, w)) in c[r * ldc..r * ldc + n].iter().zip(&want[r * n..(r + 1) * n]).enumerate() {
                    assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "({r}, {j}) ({kernel:?}): {g} vs {w}");
                }
                assert!(c[r * ldc + n..(r + 1) * ldc].iter().all(|&v| v == -7.0), "row {r} ({kernel:?}): padding written");
            }
        }
    }

    use super::super::test_values as values;

    /// Every kernel this CPU can run (whatever `TRACT_CPU_ISA` says: each is tested where it can).
    fn kernels_here() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                kernels.push(Kernel::Avx2Fma);
            }
            if std::is_x86_feature_detected!("avx512f") {
                kernels.push(Kernel::Avx512);
            }
        }
        kernels
    }

    /// The two register tiles give the same bits (each value's products summed in the same
    /// order, each with one rounding), so an image is the same on CPUs with and without AVX-512.
    #[test]
    fn the_tiles_agree_bit_for_bit() {
        let tiles: Vec<Kernel> = kernels_here().into_iter().filter(|&k| k != Kernel::Portable).collect();
        if tiles.len() < 2 {
            eprintln!("only {tiles:?} here: nothing to compare");
            return;
        }
        for (m, k, n) in [(392, 128, 512), (13, 7, 45), (7, 300, 17), (1, 40, 150), (2, 40, 70), (4, 9, 200)] {
            let (a, b, bias) = (values(m * k, 6), values(k * n, 7), values(n, 8));
            let packed = PackedB::new(&b, k, n, Some(&bias));
            let outputs: Vec<Vec<u32>> = tiles
                .iter()
                .map(|&kernel| {
                    let mut c = vec![f32::NAN; m * n];
                    run(kernel, (&a, k), m, packed.view(), (&mut c, n));
                    c.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(outputs.windows(2).all(|w| w[0] == w[1]), "({m}, {k}, {n}): {tiles:?} differ");
        }
    }

    /// A B + bias in f64.
    fn reference(a: &[f32], b: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f64> {
        (0..m * n)
            .map(|i| {
                let (r, j) = (i / n, i % n);
                bias.map_or(0.0, |v| v[j] as f64) + (0..k).map(|kk| a[r * k + kk] as f64 * b[kk * n + j] as f64).sum::<f64>()
            })
            .collect()
    }

    /// Every kernel against f64, over shapes with partial tiles and partial panels, with and
    /// without a bias (every value of C is written: it starts as NaN).
    #[test]
    fn product_matches_f64() {
        for (m, k, n) in [
            (392, 128, 512),
            (25, 16, 32),
            (13, 7, 45),
            (1, 1, 1),
            (12, 64, 16),
            (31, 5, 33),
            (26, 600, 40),
            (1, 9, 150),
            (2, 33, 100),
            (3, 8, 65),
            (4, 17, 31),
            (1, 5, 97),
        ] {
            for with_bias in [false, true] {
                let (a, b, bias) = (values(m * k, 1), values(k * n, 2), values(n, 3));
                let bias = with_bias.then_some(bias.as_slice());
                let packed = PackedB::new(&b, k, n, bias);
                let want = reference(&a, &b, bias, m, k, n);
                for kernel in kernels_here() {
                    let mut c = vec![f32::NAN; m * n];
                    run(kernel, (&a, k), m, packed.view(), (&mut c, n));
                    for (i, (g, w)) in c.iter().zip(&want).enumerate() {
                        let tol = 1e-6 * (k as f64).sqrt() * w.abs().max(1.0);
                        assert!((*g as f64 - w).abs() <= tol, "{kernel:?} ({m}, {k}, {n}) bias {with_bias} at {i}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// A product of one to four rows (a phase-1 step of a few images, whose tile spans several
    /// panels) gives each row the bits it gets as a row of a larger product (an image's values
    /// do not depend on the batch it runs in), with and without a bias, the last panel partial.
    #[test]
    fn few_rows_give_the_bits_of_a_larger_product() {
        let (k, n, big) = (96, 4 * PANEL + 5, 14);
        let (a, b, bias) = (values(big * k, 9), values(k * n, 10), values(n, 11));
        for with_bias in [false, true] {
            let packed = PackedB::new(&b, k, n, with_bias.then_some(bias.as_slice()));
            for kernel in kernels_here() {
                let mut all = vec![f32::NAN; big * n];
                run(kernel, (&a, k), big, packed.view(), (&mut all, n));
                for m in 1..=4 {
                    for first in [0, 3, big - m] {
                        let mut few = vec![f32::NAN; m * n];
                        run(kernel, (&a[first * k..], k), m, packed.view(), (&mut few, n));
                        let want = &all[first * n..(first + m) * n];
                        let same = few.iter().zip(want).all(|(g, w)| g.to_bits() == w.to_bits());
                        assert!(
                            same,
                            "{kernel:?}: rows {first}..{} alone differ from the same rows of {big} (bias {with_bias})",
                            first + m
                        );
                    }
                }
            }
        }
    }
}
