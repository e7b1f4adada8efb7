//! The iTARFlow model written against the IR: weights, one flow layer, and the package's graphs.

pub mod graphs;
pub mod layer;
pub mod weights;

pub use weights::Weights;
