//! The Open Inference Protocol's REST messages (KServe v2, as Triton speaks it): inference
//! requests and responses with JSON tensors, and the binary tensor data extension, where the
//! body is a JSON header of `Inference-Header-Content-Length` bytes followed by the tensors'
//! raw little-endian bytes in order.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The header that splits a binary request or response into its JSON header and tensor data.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// A refused request: the HTTP status and the protocol's `{"error": ...}` text.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn bad(message: impl Into<String>) -> Self {
        Self { status: 400, message: message.into() }
    }

    pub fn body(&self) -> String {
        json!({ "error": self.message }).to_string()
    }
}

/// Element types the models take and return (serialised as the protocol's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Fp32,
    Int64,
    Int32,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::Fp32 => "FP32",
            DataType::Int64 => "INT64",
            DataType::Int32 => "INT32",
        }
    }

    /// Its value of Triton's model configuration `DataType` enum (model_config.proto): the name
    /// and the number.
    pub fn triton(self) -> (&'static str, i32) {
        match self {
            DataType::Fp32 => ("TYPE_FP32", 11),
            DataType::Int64 => ("TYPE_INT64", 9),
            DataType::Int32 => ("TYPE_INT32", 8),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "FP32" => Some(DataType::Fp32),
            "INT64" => Some(DataType::Int64),
            "INT32" => Some(DataType::Int32),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn width(self) -> usize {
        match self {
            DataType::Fp32 | DataType::Int32 => 4,
            DataType::Int64 => 8,
        }
    }
}

impl Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A request tensor's values.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One input of a request, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: DataType,
    pub values: Values,
}

#[derive(Debug, Deserialize)]
struct WireInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<WireInput>,
    #[serde(default)]
    outputs: Option<Vec<WireOutput>>,
}

/// A decoded inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Requested outputs with whether each is wanted as binary data (None: all, as JSON unless
    /// the request's `binary_data_output` parameter says otherwise).
    pub outputs: Option<Vec<(String, bool)>>,
    pub binary_by_default: bool,
    /// The request's own time limit (Triton's `timeout` parameter, in microseconds; 0 or absent:
    /// none), which shortens the server's `--timeout-s` and never extends it.
    pub timeout: Option<Duration>,
}

impl Request {
    /// The input called `name`, if the request has it.
    pub fn input(&self, name: &str) -> Option<&Tensor> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

fn flatten(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other.clone()),
    }
}

fn json_values(name: &str, datatype: DataType, data: &Value) -> Result<Values, Refusal> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    let bad = |what: &str| Refusal::bad(format!("input '{name}': {what}"));
    Ok(match datatype {
        DataType::Fp32 => Values::F32(
            flat.iter().map(|v| v.as_f64().map(|x| x as f32).ok_or_else(|| bad("FP32 data must be numbers"))).collect::<Result<_, _>>()?,
        ),
        DataType::Int64 | DataType::Int32 => {
            Values::I64(flat.iter().map(|v| v.as_i64().ok_or_else(|| bad("integer data must be integers"))).collect::<Result<_, _>>()?)
        }
    })
}

/// Values from little-endian bytes (a whole number of elements: the caller checks the length).
pub fn binary_values(datatype: DataType, bytes: &[u8]) -> Values {
    match datatype {
        DataType::Fp32 => Values::F32(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()),
        DataType::Int64 => Values::I64(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        DataType::Int32 => Values::I64(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect()),
    }
}

/// An input's datatype, shape and element count, checked.
pub fn input_spec(name: &str, datatype: &str, shape: &[i64]) -> Result<(DataType, Vec<usize>, usize), Refusal> {
    let datatype = DataType::parse(datatype)
        .ok_or_else(|| Refusal::bad(format!("input '{name}': datatype {datatype} is not one of FP32, INT64, INT32")))?;
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| Refusal::bad(format!("input '{name}': negative dimension in shape {shape:?}"))))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Refusal::bad(format!("input '{name}': shape {dims:?} overflows")))?;
    Ok((datatype, dims, count))
}

/// An input tensor, its values' count checked against its shape's.
pub fn tensor(name: String, shape: Vec<usize>, count: usize, datatype: DataType, values: Values) -> Result<Tensor, Refusal> {
    let len = match &values {
        Values::F32(v) => v.len(),
        Values::I64(v) => v.len(),
    };
    if len != count {
        return Err(Refusal::bad(format!("input '{name}': {len} values for shape {shape:?}")));
    }
    Ok(Tensor { name, shape, datatype, values })
}

/// Decodes a request body; `header_length` is the `Inference-Header-Content-Length` header's
/// value for a binary request.
pub fn decode(body: &[u8], header_length: Option<usize>) -> Result<Request, Refusal> {
    let (head, mut binary) = match header_length {
        Some(n) if n <= body.len() => (&body[..n], &body[n..]),
        Some(n) => return Err(Refusal::bad(format!("{HEADER_LENGTH} is {n}, but the body has {} bytes", body.len()))),
        None => (body, &body[..0]),
    };
    let wire: WireRequest =
        serde_json::from_slice(head).map_err(|e| Refusal::bad(format!("the request is not an inference request: {e}")))?;
    let mut inputs = Vec::with_capacity(wire.inputs.len());
    for i in wire.inputs {
        let (datatype, shape, count) = input_spec(&i.name, &i.datatype, &i.shape)?;
        let values = match (i.parameters.get("binary_data_size").and_then(Value::as_u64), &i.data) {
            (Some(size), _) => {
                let size = size as usize;
                if size > binary.len() {
                    return Err(Refusal::bad(format!(
                        "input '{}': binary_data_size {size} past the {} bytes of binary data left",
                        i.name,
                        binary.len()
                    )));
                }
                if size != count * datatype.width() {
                    return Err(Refusal::bad(format!(
                        "input '{}': {size} bytes of binary data for shape {shape:?} of {}",
                        i.name,
                        datatype.name()
                    )));
                }
                let (mine, rest) = binary.split_at(size);
                binary = rest;
                binary_values(datatype, mine)
            }
            (None, Some(data)) => json_values(&i.name, datatype, data)?,
            (None, None) => return Err(Refusal::bad(format!("input '{}' has neither data nor binary_data_size", i.name))),
        };
        inputs.push(tensor(i.name, shape, count, datatype, values)?);
    }
    let outputs = wire.outputs.map(|outs| {
        outs.into_iter().map(|o| (o.name, o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(false))).collect()
    });
    let binary_by_default = wire.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let timeout = match wire.parameters.get("timeout") {
        None => None,
        Some(v) => request_timeout(v.as_u64().ok_or_else(|| {
            Refusal::bad(format!("parameter 'timeout' is {v}; it must be a whole number of microseconds (0: the server's timeout)"))
        })?),
    };
    Ok(Request { id: wire.id, inputs, outputs, binary_by_default, timeout })
}

/// A request's `timeout` parameter of `micros` microseconds (0: none).
pub fn request_timeout(micros: u64) -> Option<Duration> {
    (micros > 0).then(|| Duration::from_micros(micros))
}

/// One output of a response.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An encoded response: its body and, for a binary one, the JSON header's length.
pub struct Encoded {
    pub body: Vec<u8>,
    pub header_length: Option<usize>,
}

#[derive(Serialize)]
struct WireResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<Value>,
}

/// The outputs the request asked for (all when it named none), each with whether it is wanted
/// as binary data.
pub fn select<'a>(model: &str, req: &Request, outputs: &'a [Output]) -> Result<Vec<(&'a Output, bool)>, Refusal> {
    match &req.outputs {
        None => Ok(outputs.iter().map(|o| (o, req.binary_by_default)).collect()),
        Some(list) => list
            .iter()
            .map(|(name, binary)| {
                outputs.iter().find(|o| &o.name == name).map(|o| (o, *binary)).ok_or_else(|| {
                    let have: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
                    Refusal::bad(format!("model {model} has no output '{name}' (it has {have:?})"))
                })
            })
            .collect(),
    }
}

/// Encodes the outputs the request asked for (all when it named none), as JSON data or, where
/// asked, binary data after the JSON header.
pub fn encode(model: &str, req: &Request, outputs: &[Output]) -> Result<Encoded, Refusal> {
    let wanted = select(model, req, outputs)?;
    let mut binary = Vec::new();
    let mut json_outputs = Vec::new();
    for (o, as_binary) in &wanted {
        let mut entry = json!({ "name": o.name, "datatype": "FP32", "shape": o.shape });
        if *as_binary {
            let start = binary.len();
            binary.extend(o.data.iter().flat_map(|v| v.to_le_bytes()));
            entry["parameters"] = json!({ "binary_data_size": binary.len() - start });
        } else {
            entry["data"] = json!(o.data);
        }
        json_outputs.push(entry);
    }
    let head = serde_json::to_vec(&WireResponse { model_name: model, model_version: "1", id: req.id.as_deref(), outputs: json_outputs })
        .map_err(|e| Refusal { status: 500, message: e.to_string() })?;
    if wanted.iter().any(|(_, b)| *b) {
        let header_length = head.len();
        let mut body = head;
        body.extend(binary);
        Ok(Encoded { body, header_length: Some(header_length) })
    } else {
        Ok(Encoded { body: head, header_length: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_binary_inputs_decode_alike() {
        let json = br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3.5, -4]]}]}"#;
        let a = decode(json, None).unwrap();
        let head = br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}"#;
        let mut body = head.to_vec();
        for v in [1.0f32, 2.0, 3.5, -4.0] {
            body.extend(v.to_le_bytes());
        }
        let b = decode(&body, Some(head.len())).unwrap();
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.inputs[0].values, Values::F32(vec![1.0, 2.0, 3.5, -4.0]));
    }

    #[test]
    fn malformed_requests_are_refused_with_the_reason() {
        let refuse = |body: &str| decode(body.as_bytes(), None).unwrap_err().message;
        assert!(refuse("{").contains("not an inference request"));
        assert!(
            refuse(r#"{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}"#).contains("2 values for shape [3]")
        );
        assert!(refuse(r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}"#).contains("BYTES"));
        assert!(refuse(r#"{"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}"#).contains("negative"));
        assert!(refuse(r#"{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}]}"#).contains("integers"));
    }

    #[test]
    fn a_request_timeout_is_read_in_microseconds() {
        let timeout = |params: &str| decode(format!(r#"{{"parameters": {params}, "inputs": []}}"#).as_bytes(), None).map(|r| r.timeout);
        assert_eq!(timeout(r#"{"timeout": 250000}"#).unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(timeout(r#"{"timeout": 0}"#).unwrap(), None, "0: the server's timeout");
        assert_eq!(timeout("{}").unwrap(), None);
        for bad in [r#"{"timeout": -5}"#, r#"{"timeout": 1.5}"#, r#"{"timeout": "1s"}"#] {
            let e = timeout(bad).unwrap_err();
            assert!(e.status == 400 && e.message.contains("'timeout'") && e.message.contains("microseconds"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn binary_outputs_follow_the_json_header() {
        let req = decode(br#"{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}"#, None).unwrap();
        let out = encode("m", &req, &[Output { name: "y".into(), shape: vec![2], data: vec![1.0, -2.0] }]).unwrap();
        let n = out.header_length.unwrap();
        let head: Value = serde_json::from_slice(&out.body[..n]).unwrap();
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(&out.body[n..n + 4], &1.0f32.to_le_bytes());
        let req = decode(br#"{"inputs": []}"#, None).unwrap();
        let out = encode("m", &req, &[Output { name: "y".into(), shape: vec![1], data: vec![0.5] }]).unwrap();
        assert!(out.header_length.is_none());
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["outputs"][0]["data"][0], 0.5);
    }
}
