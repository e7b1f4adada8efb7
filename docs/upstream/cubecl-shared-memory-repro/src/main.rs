//! The smallest Burn program that runs a matmul on the wgpu backend with cubecl's SPIR-V
//! compiler (Burn's `vulkan` feature), to see where Mesa's lavapipe fails.
use burn::prelude::Device;
use burn::tensor::Tensor;

fn main() {
    let device = Device::vulkan(burn::tensor::DeviceKind::DefaultDevice);
    let what = std::env::args().nth(1).unwrap_or_else(|| "matmul".into());
    let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
    let out = match what.as_str() {
        "add" => a.clone() + a,
        "sum" => a.sum().reshape([1, 1]),
        _ => a.clone().matmul(a),
    };
    println!("{what}: {:?}", out.into_data().to_vec::<f32>().unwrap());
}
