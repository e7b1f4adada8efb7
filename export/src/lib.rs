//! ONNX export of itarflow models (the `itarflow export` issue); nothing here yet.
