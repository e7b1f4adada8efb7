//! A model tensor by value: row-major f32 data and its shape, in the reference's (PyTorch)
//! layout. Checkpoints, the exporter and the runtime exchange weights in this form.

/// One tensor: row-major f32 data and its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl RawTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not fill shape {shape:?}");
        Self { shape, data }
    }
}
