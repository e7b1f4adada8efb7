//! gRPC inference messages to and from the protocol's requests and outputs: inputs from
//! `raw_input_contents` (what Triton's clients send) or typed `contents`, outputs as
//! `raw_output_contents`, refusals as gRPC status codes.

use tonic::{Code, Status};

use super::messages::{ModelInferRequest, ModelInferResponse, ParameterChoice, TensorMetadata};
use crate::serve::protocol::{self, DataType, Output, Refusal, Request, Values};

/// The gRPC status of a refusal (its HTTP status on the REST endpoint in brackets): invalid
/// argument (400), resource exhausted (413, 429: a full queue is retried later, as gRPC's
/// convention for rate limits), unavailable (503), deadline exceeded (504), internal (else).
pub fn status(r: Refusal) -> Status {
    let code = match r.status {
        400 => Code::InvalidArgument,
        404 => Code::NotFound,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    Status::new(code, r.message)
}

/// A gRPC inference request as the protocol's request.
pub fn decode(req: ModelInferRequest) -> Result<Request, Refusal> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(Refusal::bad(format!(
            "raw_input_contents has {} entries for {} inputs: send one per input, in order, or none (then each input's contents)",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut raw_contents = req.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let (datatype, shape, count) = protocol::input_spec(&i.name, &i.datatype, &i.shape)?;
        let values = match (raw_contents.next(), i.contents) {
            (Some(bytes), _) => {
                if bytes.len() != count * datatype.width() {
                    return Err(Refusal::bad(format!(
                        "input '{}': {} bytes of raw contents for shape {shape:?} of {}",
                        i.name,
                        bytes.len(),
                        datatype.name()
                    )));
                }
                protocol::binary_values(datatype, &bytes)
            }
            (None, Some(c)) => match datatype {
                DataType::Fp32 => Values::F32(c.fp32_contents),
                DataType::Int64 => Values::I64(c.int64_contents),
                DataType::Int32 => Values::I64(c.int_contents.into_iter().map(i64::from).collect()),
            },
            (None, None) => return Err(Refusal::bad(format!("input '{}' has neither contents nor raw_input_contents", i.name))),
        };
        inputs.push(protocol::tensor(i.name, shape, count, datatype, values)?);
    }
    let outputs = (!req.outputs.is_empty()).then(|| req.outputs.into_iter().map(|o| (o.name, true)).collect());
    // Triton's clients send `timeout` as an int64 (microseconds).
    let timeout = match req.parameters.get("timeout").and_then(|p| p.choice.clone()) {
        None => None,
        Some(ParameterChoice::Int64(us)) if us >= 0 => protocol::request_timeout(us as u64),
        Some(ParameterChoice::Uint64(us)) => protocol::request_timeout(us),
        Some(other) => {
            return Err(Refusal::bad(format!(
                "parameter 'timeout' is {other:?}; it must be a whole number of microseconds (0: the server's timeout)"
            )));
        }
    };
    Ok(Request { id: (!req.id.is_empty()).then_some(req.id), inputs, outputs, binary_by_default: true, timeout })
}

/// The outputs the request asked for (all when it named none) as a gRPC response.
pub fn encode(model: &str, req: &Request, outputs: &[Output]) -> Result<ModelInferResponse, Refusal> {
    let wanted = protocol::select(model, req, outputs)?;
    Ok(ModelInferResponse {
        model_name: model.to_string(),
        model_version: "1".into(),
        id: req.id.clone().unwrap_or_default(),
        outputs: wanted
            .iter()
            .map(|(o, _)| TensorMetadata {
                name: o.name.clone(),
                datatype: DataType::Fp32.name().into(),
                shape: o.shape.iter().map(|&d| d as i64).collect(),
            })
            .collect(),
        raw_output_contents: wanted.iter().map(|(o, _)| o.data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::grpc::messages::{InferInputTensor, InferRequestedOutputTensor, InferTensorContents};

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.into(), datatype: datatype.into(), shape, contents }
    }

    #[test]
    fn raw_and_typed_contents_decode_alike() {
        let typed = ModelInferRequest {
            inputs: vec![
                input(
                    "x",
                    "FP32",
                    vec![2, 2],
                    Some(InferTensorContents { fp32_contents: vec![1.0, 2.0, 3.5, -4.0], ..Default::default() }),
                ),
                input("k", "INT32", vec![1], Some(InferTensorContents { int_contents: vec![-3], ..Default::default() })),
            ],
            ..Default::default()
        };
        let raw = ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![2, 2], None), input("k", "INT32", vec![1], None)],
            raw_input_contents: vec![
                [1.0f32, 2.0, 3.5, -4.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
                (-3i32).to_le_bytes().to_vec(),
            ],
            ..Default::default()
        };
        let (a, b) = (decode(typed).unwrap(), decode(raw).unwrap());
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].values, Values::F32(vec![1.0, 2.0, 3.5, -4.0]));
        assert_eq!(a.inputs[1].values, Values::I64(vec![-3]));
    }

    #[test]
    fn a_request_timeout_is_read_from_its_parameters() {
        use crate::serve::grpc::messages::InferParameter;
        use std::time::Duration;
        let with = |choice: ParameterChoice| ModelInferRequest {
            parameters: [("timeout".to_string(), InferParameter { choice: Some(choice) })].into(),
            ..Default::default()
        };
        assert_eq!(decode(with(ParameterChoice::Int64(1_500_000))).unwrap().timeout, Some(Duration::from_millis(1500)));
        assert_eq!(decode(with(ParameterChoice::Uint64(20))).unwrap().timeout, Some(Duration::from_micros(20)));
        assert_eq!(decode(with(ParameterChoice::Int64(0))).unwrap().timeout, None);
        assert_eq!(decode(ModelInferRequest::default()).unwrap().timeout, None);
        for bad in [ParameterChoice::Int64(-1), ParameterChoice::String("1s".into()), ParameterChoice::Double(0.5)] {
            let e = decode(with(bad)).unwrap_err();
            assert!(e.message.contains("'timeout'") && e.message.contains("microseconds"), "{}", e.message);
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        let refuse = |r: ModelInferRequest| decode(r).unwrap_err().message;
        let x = input("x", "FP32", vec![3], None);
        let short = ModelInferRequest { inputs: vec![x.clone()], raw_input_contents: vec![vec![0; 8]], ..Default::default() };
        assert!(refuse(short).contains("8 bytes of raw contents for shape [3]"));
        let missing = ModelInferRequest { inputs: vec![x.clone(), x.clone()], raw_input_contents: vec![vec![0; 12]], ..Default::default() };
        assert!(refuse(missing).contains("1 entries for 2 inputs"));
        assert!(refuse(ModelInferRequest { inputs: vec![x], ..Default::default() }).contains("neither contents"));
        let bytes =
            ModelInferRequest { inputs: vec![input("s", "BYTES", vec![1], None)], raw_input_contents: vec![vec![0]], ..Default::default() };
        assert!(refuse(bytes).contains("BYTES"));
        let count = input("y", "INT64", vec![2], Some(InferTensorContents { int64_contents: vec![1], ..Default::default() }));
        assert!(refuse(ModelInferRequest { inputs: vec![count], ..Default::default() }).contains("1 values for shape [2]"));
    }

    #[test]
    fn outputs_come_back_raw_in_the_order_asked() {
        let req = ModelInferRequest {
            id: "r1".into(),
            outputs: vec![InferRequestedOutputTensor { name: "b".into() }, InferRequestedOutputTensor { name: "a".into() }],
            ..Default::default()
        };
        let req = decode(req).unwrap();
        let outs = [
            Output { name: "a".into(), shape: vec![1], data: vec![1.5] },
            Output { name: "b".into(), shape: vec![2], data: vec![-1.0, 2.0] },
        ];
        let r = encode("m", &req, &outs).unwrap();
        assert_eq!(r.id, "r1");
        assert_eq!(r.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(r.outputs[0].shape, [2]);
        assert_eq!(r.raw_output_contents[0], [(-1.0f32).to_le_bytes(), 2.0f32.to_le_bytes()].concat());
        assert_eq!(r.raw_output_contents[1], 1.5f32.to_le_bytes());
        let unknown =
            decode(ModelInferRequest { outputs: vec![InferRequestedOutputTensor { name: "c".into() }], ..Default::default() }).unwrap();
        assert!(encode("m", &unknown, &outs).unwrap_err().message.contains("no output 'c'"));
        assert_eq!(status(Refusal { status: 429, message: String::new() }).code(), Code::ResourceExhausted);
    }
}
