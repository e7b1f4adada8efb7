//! The iTARFlow model: patches, flow layers and the whole stack with its likelihood and score.

pub mod cond;
pub mod flow_layer;
pub mod itarflow;
pub mod patch;

pub use cond::{Labels, class_weights};
pub use flow_layer::FlowLayer;
pub use itarflow::{Forward, ITarFlow, Likelihood};
pub use patch::{patchify, unpatchify};
