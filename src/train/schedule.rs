//! Learning rate: linear warm-up from 0, then cosine decay to `min_lr` at the last step.

/// Learning rate at optimisation step `step` (0-based) of `total`.
pub fn learning_rate(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_cosine() {
        assert!((learning_rate(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55, 100, 10, 1.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((learning_rate(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }
}
