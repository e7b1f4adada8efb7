//! Reductions of a row over 8 lanes: the compiler keeps the lanes in vector registers (a
//! plain fold over f32 stays scalar, as its order is fixed), and the order of the additions
//! depends on the row alone, so a row's result is the same in any batch.

/// Folds `row` into 8 lanes with `f` (lane, value) and the lanes with `join`, from `init`.
fn fold8(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32, join: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = f(*l, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    let quads = [join(lanes[0], lanes[4]), join(lanes[1], lanes[5]), join(lanes[2], lanes[6]), join(lanes[3], lanes[7])];
    join(join(join(quads[0], quads[1]), join(quads[2], quads[3])), tail)
}

/// The sum of a row.
pub(super) fn sum(row: &[f32]) -> f32 {
    fold8(row, 0.0, |a, v| a + v, |a, b| a + b)
}

/// The largest value of a row (-inf for an empty one).
pub(super) fn max(row: &[f32]) -> f32 {
    fold8(row, f32::NEG_INFINITY, f32::max, f32::max)
}

/// The sum of the products of two rows of one length.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    let quads = [lanes[0] + lanes[4], lanes[1] + lanes[5], lanes[2] + lanes[6], lanes[3] + lanes[7]];
    ((quads[0] + quads[1]) + (quads[2] + quads[3])) + tail
}

#[cfg(test)]
mod tests {
    /// Against f64 sums, over lengths with and without a tail.
    #[test]
    fn lane_reductions_are_the_row_reductions() {
        for len in [0, 1, 7, 8, 13, 48, 128, 515] {
            let a = super::super::test_values(len, 1);
            let b = super::super::test_values(len, 5);
            let sum: f64 = a.iter().map(|&v| v as f64).sum();
            let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let max = a.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert!((super::sum(&a) as f64 - sum).abs() <= 1e-5 * len.max(1) as f64, "sum of {len}");
            assert!((super::dot(&a, &b) as f64 - dot).abs() <= 1e-5 * len.max(1) as f64, "dot of {len}");
            assert_eq!(super::max(&a), max, "max of {len}");
        }
    }
}
