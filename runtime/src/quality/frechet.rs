//! Gaussians fitted to feature vectors and the Fréchet distance between them (FID's formula):
//!
//! d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2),
//!
//! in f64. tr((S1 S2)^1/2) is taken through S1^1/2 S2 S1^1/2, which is symmetric and positive
//! semi-definite with the same eigenvalues as S1 S2, so both square roots come from symmetric
//! eigendecompositions (nalgebra's), eigenvalues below zero by rounding clamped to zero.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use crate::RtError;

/// Mean and covariance of a set of feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    /// Row-major (dim, dim), unbiased (divided by count - 1).
    pub cov: Vec<f64>,
    /// How many vectors it was fitted to.
    pub count: usize,
}

impl Gaussian {
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Fits `rows` vectors of `dim` values each (row-major `features`), in f64.
    pub fn fit(features: &[f32], dim: usize) -> Result<Self, RtError> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(RtError::Input(format!("{} feature values are not rows of {dim}", features.len())));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(RtError::Input(format!("a covariance needs at least 2 feature vectors, got {n}")));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(RtError::Input(format!("feature vector {} holds a non-finite value", i / dim)));
        }
        let x = DMatrix::from_row_iterator(n, dim, features.iter().map(|&v| v as f64));
        let mean: DVector<f64> = x.row_mean().transpose();
        let mut centred = x;
        for mut row in centred.row_iter_mut() {
            row -= mean.transpose();
        }
        let cov = centred.transpose() * &centred / (n as f64 - 1.0);
        Ok(Self { mean: mean.iter().copied().collect(), cov: row_major(&cov), count: n })
    }

    /// A Gaussian from stored statistics (checked).
    pub fn new(mean: Vec<f64>, cov: Vec<f64>, count: usize) -> Result<Self, RtError> {
        let d = mean.len();
        if cov.len() != d * d {
            return Err(RtError::Input(format!("a covariance of {} values does not match a mean of {d}", cov.len())));
        }
        if mean.iter().chain(&cov).any(|v| !v.is_finite()) {
            return Err(RtError::Input("the statistics hold a non-finite value".into()));
        }
        Ok(Self { mean, cov, count })
    }

    fn cov_matrix(&self) -> DMatrix<f64> {
        let d = self.dim();
        DMatrix::from_row_slice(d, d, &self.cov)
    }
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    m.transpose().as_slice().to_vec()
}

/// (M + M^T) / 2: what rounding took from a symmetric matrix's symmetry, given back.
fn symmetrise(m: DMatrix<f64>) -> DMatrix<f64> {
    (&m + m.transpose()) * 0.5
}

/// The square root of a symmetric positive semi-definite matrix.
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let e = SymmetricEigen::new(symmetrise(m));
    let roots = DMatrix::from_diagonal(&e.eigenvalues.map(|l| l.max(0.0).sqrt()));
    &e.eigenvectors * roots * e.eigenvectors.transpose()
}

/// The squared Fréchet distance between two Gaussians of the same dimension (what FID reports).
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> Result<f64, RtError> {
    if a.dim() != b.dim() {
        return Err(RtError::Input(format!("Gaussians of {} and {} dimensions", a.dim(), b.dim())));
    }
    let (s1, s2) = (a.cov_matrix(), b.cov_matrix());
    let root1 = sqrt_psd(s1.clone());
    let inner = symmetrise(&root1 * &s2 * &root1);
    let tr_root: f64 = SymmetricEigen::new(inner).eigenvalues.iter().map(|l| l.max(0.0).sqrt()).sum();
    let dmean: f64 = a.mean.iter().zip(&b.mean).map(|(x, y)| (x - y) * (x - y)).sum();
    let d = dmean + s1.trace() + s2.trace() - 2.0 * tr_root;
    if !d.is_finite() {
        return Err(RtError::Internal("the Fréchet distance came out non-finite".into()));
    }
    // Rounding can take an exact zero (a set against itself) slightly below.
    Ok(d.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(mean: &[f64], cov: &DMatrix<f64>) -> Gaussian {
        Gaussian::new(mean.to_vec(), row_major(cov), 1000).unwrap()
    }

    /// A random orthogonal matrix (QR of a matrix of seeded noise).
    fn rotation(d: usize, seed: u64) -> DMatrix<f64> {
        let z = itarflow_base::prior_noise(seed, d * d);
        DMatrix::from_iterator(d, d, z.iter().map(|&v| v as f64)).qr().q()
    }

    #[test]
    fn one_dimension_is_the_closed_form() {
        // (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s.
        let a = gauss(&[1.5], &DMatrix::from_element(1, 1, 4.0));
        let b = gauss(&[-0.5], &DMatrix::from_element(1, 1, 0.25));
        let d = frechet_distance(&a, &b).unwrap();
        assert!((d - (4.0 + 1.5 * 1.5)).abs() < 1e-12, "{d}");
    }

    #[test]
    fn commuting_covariances_are_the_closed_form() {
        // S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: |dmu|^2 + sum (sqrt a - sqrt b)^2.
        let d = 12;
        let q = rotation(d, 3);
        let a: Vec<f64> = (0..d).map(|i| 0.1 + i as f64).collect();
        let b: Vec<f64> = (0..d).map(|i| 2.0 + 0.5 * ((i * 7) % 5) as f64).collect();
        let s1 = &q * DMatrix::from_diagonal(&DVector::from_vec(a.clone())) * q.transpose();
        let s2 = &q * DMatrix::from_diagonal(&DVector::from_vec(b.clone())) * q.transpose();
        let m1: Vec<f64> = (0..d).map(|i| i as f64 * 0.3).collect();
        let m2: Vec<f64> = (0..d).map(|i| 1.0 - i as f64 * 0.1).collect();
        let expect: f64 = m1.iter().zip(&m2).map(|(x, y)| (x - y).powi(2)).sum::<f64>()
            + a.iter().zip(&b).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
        let got = frechet_distance(&gauss(&m1, &s1), &gauss(&m2, &s2)).unwrap();
        assert!((got - expect).abs() < 1e-9 * expect, "{got} vs {expect}");
    }

    #[test]
    fn non_commuting_two_by_two_is_the_closed_form() {
        // For 2x2: tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
        let s1 = DMatrix::<f64>::from_row_slice(2, 2, &[2.0, 0.7, 0.7, 1.0]);
        let s2 = DMatrix::<f64>::from_row_slice(2, 2, &[0.5, -0.2, -0.2, 3.0]);
        let tr_root = ((&s1 * &s2).trace() + 2.0 * (s1.determinant() * s2.determinant()).sqrt()).sqrt();
        let expect = 1.0 + s1.trace() + s2.trace() - 2.0 * tr_root;
        let got = frechet_distance(&gauss(&[1.0, 0.0], &s1), &gauss(&[0.0, 0.0], &s2)).unwrap();
        assert!((got - expect).abs() < 1e-12, "{got} vs {expect}");
        let back = frechet_distance(&gauss(&[0.0, 0.0], &s2), &gauss(&[1.0, 0.0], &s1)).unwrap();
        assert!((back - expect).abs() < 1e-12, "symmetric: {back} vs {expect}");
    }

    #[test]
    fn fit_is_mean_and_unbiased_covariance_and_a_set_is_at_distance_zero_from_itself() {
        // Rows (1, 2), (3, 0), (5, 7): mean (3, 3); deviations (-2,-1), (0,-3), (2,4).
        let g = Gaussian::fit(&[1.0, 2.0, 3.0, 0.0, 5.0, 7.0], 2).unwrap();
        assert_eq!(g.mean, vec![3.0, 3.0]);
        assert_eq!(g.cov, vec![4.0, 5.0, 5.0, 13.0]);
        let rows: Vec<f32> = itarflow_base::prior_noise(5, 300 * 20);
        let g = Gaussian::fit(&rows, 20).unwrap();
        assert!(frechet_distance(&g, &g).unwrap() < 1e-9);
        assert!(Gaussian::fit(&[1.0, f32::NAN, 0.0, 1.0], 2).is_err());
        assert!(Gaussian::fit(&[1.0, 2.0], 2).is_err());
    }
}
