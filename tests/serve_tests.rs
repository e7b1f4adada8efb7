//! `itarflow-rt serve` end to end: the server started on ephemeral ports, called by NVIDIA
//! Triton's Python clients over REST and gRPC (health, metadata, every model with JSON, binary
//! and raw tensors, a seeded request equal to `itarflow-rt sample`, refusals with their codes),
//! every bad request with its status and message,
//! dynamic batching that never changes a result, the queue limit, Prometheus metrics, Triton's
//! model configuration and repository index, gRPC health checks and watches, and a graceful
//! shutdown.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn rt() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().join("itarflow-rt")
}

fn package(dir: &Path) {
    let m = tiny(false);
    let mut opts = itarflow_export::package::ExportOptions::for_model(&m.config);
    opts.reference = itarflow::deploy::reference(&m, 3, 0.15, 1);
    itarflow_export::package::export(&m.config, &itarflow::deploy::weights(&m), dir, &opts, &mut |_| {}).unwrap();
}

/// A running server; killed when dropped (then its package's folder, if it has one, removed).
struct Server {
    child: Child,
    addr: SocketAddr,
    grpc: SocketAddr,
    /// The folder of the package made for it by [`tiny_server`].
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// The package [`tiny_server`] made for it.
    fn package_dir(&self) -> PathBuf {
        self.dir.as_ref().expect("a server of tiny_server").path().join("pkg")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(pkg: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--name", "tiny", "--model", pkg.to_str().unwrap()];
    args.extend(extra);
    start_with(&args)
}

/// A server of a tiny package made for it, served as `tiny` with the flags `extra`.
fn tiny_server(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("pkg");
    package(&pkg);
    let mut server = start(&pkg, extra);
    server.dir = Some(dir);
    server
}

/// A server started with `args` after `serve` and its ephemeral ports.
fn start_with(args: &[&str]) -> Server {
    let mut child = Command::new(rt())
        .args(["serve", "--port", "0", "--grpc-port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    let grpc = loop {
        let line = lines.next().expect("the server printed its addresses").unwrap();
        if let Some(a) = line.strip_prefix("listening on http://") {
            addr = Some(a.trim().parse().unwrap());
        }
        if let Some(a) = line.strip_prefix("gRPC listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    // Keep draining the server's log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let server = Server { child, addr: addr.expect("the REST address before the gRPC one"), grpc, dir: None };
    let deadline = Instant::now() + Duration::from_secs(120);
    while get(&server, "/v2/health/ready").0 != 200 {
        assert!(Instant::now() < deadline, "the server did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// One HTTP/1.1 exchange: (status, headers in lower case, body).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string())).collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    let (status, _, body) = http(s.addr, "GET", path, &[], b"");
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn infer(addr: SocketAddr, model: &str, request: &Value) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("Content-Type", "application/json".into())],
        request.to_string().as_bytes(),
    );
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn sample_request(class: &[i64], seed: Option<i64>) -> Value {
    let mut inputs = vec![json!({"name": "class", "shape": [class.len()], "datatype": "INT64", "data": class})];
    if let Some(s) = seed {
        inputs.push(json!({"name": "seed", "shape": [1], "datatype": "INT64", "data": [s]}));
    }
    json!({ "inputs": inputs })
}

fn images(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// What python3 printed, run with `args` (a script of tests/serve/ or `-c` and code, then its
/// arguments; Triton's clients come from scripts/setup.sh); fails the test if python3 did.
fn python<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = Command::new("python3").args(args).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "python3 {:?}: {said}{}", args[0].as_ref(), String::from_utf8_lossy(&out.stderr));
    said
}

/// A script of tests/serve/, as python3's first argument.
fn script(name: &str) -> String {
    manifest_dir().join("tests/serve").join(name).to_string_lossy().into_owned()
}

/// gRPC's health service's answer about `service` (tests/serve/grpc_health.py).
fn grpc_health(s: &Server, service: &str) -> String {
    python(&[script("grpc_health.py"), s.grpc.to_string(), service.to_string()]).trim().to_string()
}

fn run_cli(args: &[&str]) {
    let out = Command::new(rt()).args(args).output().unwrap();
    assert!(out.status.success(), "itarflow-rt {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tritons_python_client_gets_what_the_command_line_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("pkg");
    package(&pkg);
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let pkgs = pkg.display().to_string();
    // What the command line computes for the same inputs.
    run_cli(&["sample", "--model", &pkgs, "--seed", "7", "--class", "3", "--num", "3", "--cfg", "1.5", "--output", &p("sample.npz")]);
    let v = vectors();
    let mut inputs = itarflow_base::Npz::new(tmp.path().join("in.npz"));
    for name in ["x", "t", "y"] {
        inputs.insert(name, v.get(name).unwrap().clone());
    }
    inputs.write().unwrap();
    run_cli(&["score", "--model", &pkgs, "--input", &p("in.npz"), "--output", &p("score.npz")]);
    let mut noisy = itarflow_base::Npz::new(tmp.path().join("noisy.npz"));
    noisy.insert("x", v.get("itd_x_init").unwrap().clone());
    noisy.insert("y", v.get("y").unwrap().clone());
    noisy.write().unwrap();
    run_cli(&["denoise", "--model", &pkgs, "--input", &p("noisy.npz"), "--output", &p("denoised.npz")]);
    let mut expected = itarflow_base::Npz::new(tmp.path().join("expected.npz"));
    let read = |f: &str| itarflow_base::Npz::read(tmp.path().join(f)).unwrap();
    expected.insert("sample_x", read("sample.npz").get("x").unwrap().clone());
    for (ours, theirs) in [("score_x", "x"), ("score_t", "t"), ("score_y", "y")] {
        expected.insert(ours, v.get(theirs).unwrap().clone());
    }
    expected.insert("score", read("score.npz").get("score").unwrap().clone());
    expected.insert("logp", read("score.npz").get("logp").unwrap().clone());
    expected.insert("denoise_x", v.get("itd_x_init").unwrap().clone());
    expected.insert("denoise_y", v.get("y").unwrap().clone());
    expected.insert("denoised", read("denoised.npz").get("x").unwrap().clone());
    expected.write().unwrap();

    // Padded runs (3 images sampled, 3 denoised: run as 4) give what the command line computes unpadded.
    let server = start(&pkg, &["--max-body-mib", "2", "--pad-batches", "on"]);
    let client = script("triton_client.py");
    for (protocol, addr) in [("http", server.addr), ("grpc", server.grpc)] {
        let out = Command::new("python3").arg(&client).args([protocol, &addr.to_string(), "tiny"]).arg(p("expected.npz")).output().unwrap();
        println!("{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            out.status.success(),
            "the Triton {protocol} client's checks failed (tritonclient[http,grpc] comes from scripts/setup.sh):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Triton's statistics extension, read by Triton's clients over both protocols: the same
    // figures, and what the requests above were (successes and refusals per model, images, runs
    // by padded batch size, every counted duration timed).
    let out = python(&[script("triton_stats.py"), server.addr.to_string(), server.grpc.to_string()]);
    let said: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (by_http, by_grpc) = (&said[0]["http"], &said[1]["grpc"]);
    let without_time = |v: &Value| {
        let mut v = v.clone();
        for m in v.as_object_mut().unwrap().values_mut() {
            m.as_object_mut().unwrap().remove("last_inference");
        }
        v
    };
    assert_eq!(without_time(by_http), without_time(by_grpc), "REST and gRPC report other statistics");
    let scored = v.get("x").unwrap().shape[0] as u64;
    let denoised = v.get("itd_x_init").unwrap().shape[0] as u64;
    // (model, successes, refusals, images): 2 + 2 seeded requests of 3 images (one streamed), 3 + 3
    // + 1 streamed refusals; a score request per protocol; two denoising requests per protocol.
    for (model, ok, refused, images) in [("tiny", 4, 7, 12), ("tiny-score", 2, 0, 2 * scored), ("tiny-denoise", 4, 0, 2 * (denoised + 3))] {
        let m = &by_http[model];
        let c = &m["counts"];
        assert_eq!((c["success"].as_u64(), c["fail"].as_u64()), (Some(ok), Some(refused)), "{model}: {m}");
        for f in ["queue", "compute_input", "compute_infer", "compute_output"] {
            assert_eq!(c[f].as_u64(), Some(ok), "{model} {f}: {m}");
        }
        assert_eq!(m["inference_count"].as_u64(), Some(images), "{model}: {m}");
        assert_eq!(m["timed"], true, "{model}: a counted duration took no time: {m}");
        assert!(m["last_inference"].as_u64().unwrap() > 1_700_000_000_000, "{model}: {m}");
        let runs = m["execution_count"].as_u64().unwrap();
        let batches = m["batches"].as_object().unwrap();
        assert_eq!(batches.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), runs, "{model}: {m}");
        assert!((1..=ok).contains(&runs), "{model}: {m}");
        if model != "tiny-score" {
            // Sampling and denoising runs are padded (--pad-batches on): 3 images run as 4.
            assert!(batches.keys().all(|b| b.parse::<u64>().unwrap().is_power_of_two()), "{model}: {m}");
        }
    }
    // gRPC's standard health service (Kubernetes' gRPC probes) says serving, for the server and
    // the inference service, and names what it reports on when asked about another service.
    assert_eq!(grpc_health(&server, ""), "SERVING");
    assert_eq!(grpc_health(&server, "inference.GRPCInferenceService"), "SERVING");
    let other = grpc_health(&server, "grpc.reflection.v1.ServerReflection");
    assert!(other.starts_with("NOT_FOUND") && other.contains("inference.GRPCInferenceService"), "{other}");
    // Both protocols' requests are counted (REST JSON and binary, gRPC, gRPC streamed).
    let (_, _, metrics) = http(server.addr, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in ["itarflow_requests_total{model=\"tiny\",code=\"200\"} 4", "itarflow_requests_total{model=\"unknown\",code=\"404\"} 1"] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[test]
fn bad_requests_get_their_status_and_message() {
    let server = tiny_server(&["--max-body-mib", "1", "--max-images", "8"]);
    let a = server.addr;
    let refused = |model: &str, req: Value, status: u16, words: &[&str]| {
        let (s, body) = infer(a, model, &req);
        let msg = body["error"].as_str().unwrap_or_default().to_string();
        assert_eq!(s, status, "{req}: {body}");
        for w in words {
            assert!(msg.contains(w), "{req}: '{msg}' lacks '{w}'");
        }
    };
    refused("nope", sample_request(&[1], None), 400, &["unknown model 'nope'", "tiny-score"]);
    refused(
        "tiny",
        json!({"inputs": [{"name": "class", "shape": [1], "datatype": "FP32", "data": [1.0]}]}),
        400,
        &["datatype FP32", "INT64"],
    );
    refused("tiny", json!({"inputs": [{"name": "class", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}), 400, &["shape [1, 1]"]);
    refused(
        "tiny",
        json!({"inputs": [{"name": "class", "shape": [2], "datatype": "INT64", "data": [1]}]}),
        400,
        &["1 values for shape [2]"],
    );
    refused("tiny", sample_request(&[10], None), 400, &["class 10 is out of range", "10 classes"]);
    refused("tiny", json!({"inputs": []}), 400, &["missing input 'class'"]);
    refused("tiny", sample_request(&[1; 9], None), 400, &["9 images", "1 to 8"]);
    refused(
        "tiny",
        json!({"inputs": [{"name": "class", "shape": [1], "datatype": "INT64", "data": [1]}, {"name": "colour", "shape": [1], "datatype": "INT64", "data": [1]}]}),
        400,
        &["unknown input 'colour'"],
    );
    let x = |v: f64| json!({"name": "x", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": vec![v; 256]});
    let t = json!({"name": "t", "shape": [1], "datatype": "FP32", "data": [0.1]});
    refused("tiny-score", json!({"inputs": [x(0.1)]}), 400, &["missing input 't'"]);
    refused(
        "tiny-score",
        json!({"inputs": [x(0.1), {"name": "t", "shape": [1], "datatype": "FP32", "data": [-1.0]}]}),
        400,
        &["noise level -1"],
    );
    // JSON has no NaN: binary data carries one.
    let head = json!({"inputs": [{"name": "x", "shape": [1, 1, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}, t]})
        .to_string();
    let mut body = head.clone().into_bytes();
    body.extend((0..256).flat_map(|i| if i == 5 { f32::NAN } else { 0.1f32 }.to_le_bytes()));
    let (s, _, resp) =
        http(a, "POST", "/v2/models/tiny-score/infer", &[("Inference-Header-Content-Length", head.len().to_string())], &body);
    let resp: Value = serde_json::from_slice(&resp).unwrap();
    assert_eq!(s, 400, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("NaN"), "{resp}");
    refused(
        "tiny-denoise",
        json!({"inputs": [{"name": "x", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": vec![0.0; 768]}]}),
        400,
        &["[B, 1, 16, 16]"],
    );
    let (s, _, resp) = http(a, "POST", "/v2/models/tiny/infer", &[], b"{not json");
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&resp));
    let (s, _, _) = http(a, "POST", "/v2/models/tiny/infer", &[], &vec![b' '; 2 << 20]);
    assert_eq!(s, 413);
    // The server is still serving.
    let (s, body) = infer(a, "tiny", &sample_request(&[1, 2], Some(3)));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["outputs"][0]["shape"], json!([2, 1, 16, 16]));
    assert_eq!(get(&server, "/v2/models/nope").0, 400);
    let (s, meta) = get(&server, "/v2/models/tiny");
    assert_eq!(s, 200);
    assert_eq!(meta["inputs"][0]["name"], "class");
}

#[test]
fn batching_merges_requests_without_changing_their_images() {
    let server = tiny_server(&["--max-queue-delay-ms", "400", "--max-batch", "64", "--max-images", "12"]);
    let a = server.addr;
    let requests: Vec<Value> = (0..4).map(|k| sample_request(&[k, (k + 1) % 10], Some(100 + k))).collect();
    // Each alone first (a delay of 400 ms, but nothing to merge with), then all at once.
    let alone: Vec<Vec<f32>> = requests.iter().map(|r| images(&infer(a, "tiny", r).1)).collect();
    let together: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = requests.iter().map(|r| s.spawn(move || infer(a, "tiny", r))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .map(|(st, v)| {
                assert_eq!(st, 200, "{v}");
                images(&v)
            })
            .collect()
    });
    for (k, (x, y)) in alone.iter().zip(&together).enumerate() {
        let e = rel_err(y, x);
        assert!(e < 1e-5, "request {k}: merged and alone differ by {e:.2e}");
    }
    let (_, _, metrics) = http(a, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    // The four concurrent requests ran as fewer sampler runs than requests.
    let runs = metrics.lines().find(|l| l.starts_with("itarflow_batch_images_count{model=\"tiny\"}")).unwrap();
    let runs: u64 = runs.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(runs < 8, "{runs} sampler runs for 8 requests: the concurrent ones were not merged\n{metrics}");
    assert!(metrics.contains("itarflow_requests_total{model=\"tiny\",code=\"200\"} 8"), "{metrics}");
    assert!(metrics.contains("itarflow_images_generated_total{model=\"tiny\"} 16"), "{metrics}");
    model_configuration_and_repository(&server, &server.package_dir());
}

/// Triton's model configuration and repository extensions, read by Triton's clients over both
/// protocols (tests/serve/triton_config.py): the same answers, the batching and limits the server
/// was started with, the package's sampler settings and shapes, and loading refused with why.
fn model_configuration_and_repository(server: &Server, pkg: &Path) {
    let models = ["tiny", "tiny-score", "tiny-denoise"];
    let mut args = vec![script("triton_config.py"), server.addr.to_string(), server.grpc.to_string()];
    args.extend(models.map(String::from));
    let said: Vec<Value> = python(&args).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (by_http, by_grpc) = (&said[0]["http"], &said[1]["grpc"]);
    for part in ["configs", "index"] {
        assert_eq!(by_http[part], by_grpc[part], "REST and gRPC give other {part}");
    }
    for (protocol, said, status) in [("REST", by_http, "400"), ("gRPC", by_grpc, "StatusCode.FAILED_PRECONDITION")] {
        assert!(said["extensions"].as_array().unwrap().contains(&json!("model_configuration")), "{protocol}: {said}");
        let load = &said["load"];
        assert_eq!(load["status"], status, "{protocol}: {load}");
        assert!(load["message"].as_str().unwrap().contains("one package"), "{protocol}: {load}");
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(pkg.join("manifest.json")).unwrap()).unwrap();
    let configs = &by_http["configs"];
    for model in models {
        let c = &configs[model];
        // Shapes are given whole (no batching dimension), as the protocol's metadata gives them.
        assert_eq!(c["max_batch_size"], 0, "{c}");
        let (_, meta) = get(server, &format!("/v2/models/{model}"));
        for (ours, theirs) in [("input", "inputs"), ("output", "outputs")] {
            let names = |v: &Value, key: &str| v.as_array().unwrap().iter().map(|t| t[key].clone()).collect::<Vec<_>>();
            assert_eq!(names(&c[ours], "name"), names(&meta[theirs], "name"), "{model}");
            assert_eq!(names(&c[ours], "dims"), names(&meta[theirs], "shape"), "{model}");
            let types: Vec<Value> =
                names(&meta[theirs], "datatype").iter().map(|d| json!(format!("TYPE_{}", d.as_str().unwrap()))).collect();
            assert_eq!(names(&c[ours], "data_type"), types, "{model}");
        }
        let p = &c["parameters"];
        assert_eq!((&p["provider"], &p["precision"], &p["max_images"]), (&json!("tract"), &json!("fp32"), &json!("12")), "{model}: {p}");
        assert_eq!(c["instance_group"], json!([{"kind": "KIND_CPU", "count": 1}]), "{model}");
    }
    let sampler = &configs["tiny"];
    let optional: Vec<(Value, Value)> =
        sampler["input"].as_array().unwrap().iter().map(|t| (t["name"].clone(), t["optional"].clone())).collect();
    assert_eq!(optional, [("class", false), ("seed", true), ("cfg", true), ("denoise_steps", true)].map(|(n, o)| (json!(n), json!(o))));
    let p = &sampler["parameters"];
    for (key, value) in [("max_batch", "64"), ("max_queue_delay_ms", "400"), ("pad_batches", "false")] {
        assert_eq!(p[key], value, "{p}");
    }
    let number = |v: &Value| v.as_str().unwrap().parse::<f64>().unwrap();
    for key in ["cfg", "t_max", "t_min", "denoise_steps"] {
        assert_eq!(number(&p[key]), manifest["sampler"][key].as_f64().unwrap(), "{key}: {p}");
    }
    let ready: Vec<Value> = models.iter().map(|m| json!({"name": m, "version": "1", "state": "READY"})).collect();
    let mut index = by_http["index"].as_array().unwrap().clone();
    index.sort_by_key(|m| m["name"].as_str().unwrap().len());
    assert_eq!(index, ready);
    // The index's `ready` filter, and a body it cannot read.
    let (status, _, body) = http(server.addr, "POST", "/v2/repository/index", &[], br#"{"ready": true}"#);
    assert_eq!((status, serde_json::from_slice::<Value>(&body).unwrap().as_array().unwrap().len()), (200, 3));
    let (status, _, body) = http(server.addr, "POST", "/v2/repository/index", &[], br#"{"ready": "yes"}"#);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn a_full_queue_refuses_and_a_shutdown_lets_requests_in_flight_finish() {
    let mut server = tiny_server(&["--max-queue", "1", "--max-batch", "4", "--shutdown-grace-s", "6"]);
    let a = server.addr;
    // A long run (many steps) holds the sampler while more requests arrive.
    let slow = json!({"inputs": [
        {"name": "class", "shape": [4], "datatype": "INT64", "data": [1, 2, 3, 4]},
        {"name": "denoise_steps", "shape": [1], "datatype": "INT32", "data": [150]}
    ]});
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|k| {
                let slow = &slow;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(60 * k));
                    infer(a, "tiny", slow).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.contains(&429), "no request was refused by the full queue: {statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    // A gRPC client's health watch: SERVING now; at the SIGTERM below, NOT_SERVING and the end of
    // the stream (an open watch does not hold the server up). One about another service:
    // SERVICE_UNKNOWN, the call kept open until the shutdown.
    let watch = |service: &str| {
        let mut child = Command::new("python3")
            .arg(manifest_dir().join("tests/serve/grpc_health.py"))
            .args([&server.grpc.to_string(), service, "--watch"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first status").unwrap();
        (child, first, lines)
    };
    let (mut watcher, first, watched) = watch("");
    assert_eq!(first, "SERVING");
    let (mut other, first, other_watched) = watch("grpc.reflection.v1.ServerReflection");
    assert_eq!(first, "SERVICE_UNKNOWN");
    // SIGTERM while a request runs: it finishes; a new one gets 503 during the grace period.
    let in_flight = std::thread::spawn(move || {
        infer(
            a,
            "tiny",
            &json!({"inputs": [
                {"name": "class", "shape": [16], "datatype": "INT64", "data": vec![1; 16]},
                {"name": "denoise_steps", "shape": [1], "datatype": "INT32", "data": [200]}
            ]}),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    let (s, body) = infer(a, "tiny", &sample_request(&[1], None));
    assert_eq!(s, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("shutting down"), "{body}");
    assert_eq!(get(&server, "/v2/health/ready").0, 503);
    assert_eq!(grpc_health(&server, ""), "NOT_SERVING");
    // The same over gRPC: not ready, and a request refused as UNAVAILABLE with the reason.
    let said = python(&[
        "-c".to_string(),
        "import sys, numpy as np, tritonclient.grpc as g\n\
             c = g.InferenceServerClient(sys.argv[1])\n\
             assert not c.is_server_ready()\n\
             x = g.InferInput('class', [1], 'INT64'); x.set_data_from_numpy(np.array([1]))\n\
             try:\n    c.infer('tiny', [x]); sys.exit('served while shutting down')\n\
             except g.InferenceServerException as e:\n    print(e.status(), e.message())"
            .to_string(),
        server.grpc.to_string(),
    ]);
    assert!(said.contains("UNAVAILABLE") && said.contains("shutting down"), "{said}");
    let (s, body) = in_flight.join().unwrap();
    assert_eq!(s, 200, "the request in flight did not finish: {body}");
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "the server did not stop cleanly: {exit:?}");
    let rest: Vec<String> = watched.map(Result::unwrap).collect();
    assert_eq!(rest, ["NOT_SERVING", "END OK"], "the health watch after SIGTERM");
    assert!(watcher.wait().unwrap().success());
    let rest: Vec<String> = other_watched.map(Result::unwrap).collect();
    assert_eq!(rest, ["END OK"], "the watch of another service after SIGTERM");
    assert!(other.wait().unwrap().success());
}

/// A server of a model repository (`--model-repository`): every package of the folder served
/// (both layouts, other folders ignored), packages unloaded and loaded again by any of their
/// models' names over REST and through Triton's gRPC client, the index following, the same
/// images after a reload, and every refusal with its reason.
#[test]
fn a_model_repository_serves_loads_and_unloads_its_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    package(&repo.join("alpha"));
    package(&repo.join("beta").join("package"));
    std::fs::create_dir_all(repo.join("notes")).unwrap();
    // --model and --model-repository are one or the other.
    let out = Command::new(rt()).args(["serve", "--model-repository", repo.to_str().unwrap(), "--model", "x"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("one or the other"), "{out:?}");
    let server = start_with(&["--model-repository", repo.to_str().unwrap()]);
    let a = server.addr;
    let index = || {
        let (status, _, body) = http(a, "POST", "/v2/repository/index", &[], b"");
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>()
    };
    let all = |state: &str, beta: &str| {
        ["alpha", "alpha-score", "alpha-denoise", "beta", "beta-score", "beta-denoise"]
            .iter()
            .enumerate()
            .map(|(i, m)| (m.to_string(), if i < 3 { state } else { beta }.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(index(), all("READY", "READY"));
    let request = sample_request(&[1, 2], Some(5));
    let (status, before) = infer(a, "beta", &request);
    assert_eq!(status, 200, "{before}");
    assert_eq!(images(&infer(a, "alpha", &request).1), images(&before), "the same package under two names samples the same images");
    // Unloaded by one of its models' names: its models are gone, the other package still serves.
    let control = |what: &str, model: &str| {
        let (status, _, body) = http(a, "POST", &format!("/v2/repository/models/{model}/{what}"), &[], b"");
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(control("unload", "beta-score").0, 200);
    assert_eq!(index(), all("READY", "UNAVAILABLE"));
    let (status, body) = infer(a, "beta", &request);
    assert!(status == 400 && body["error"].as_str().unwrap().contains("unknown model 'beta'"), "{status} {body}");
    assert_eq!(
        infer(a, "alpha-denoise", &json!({"inputs": [{"name": "x", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": vec![0.1; 256]}]}))
            .0,
        200
    );
    let (_, stats) = get(&server, "/v2/models/stats");
    let names: Vec<&str> = stats["model_stats"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "alpha-denoise", "alpha-score"], "an unloaded package's statistics go");
    let (_, _, metrics) = http(a, "GET", "/metrics", &[], b"");
    let ready: Vec<String> =
        String::from_utf8(metrics).unwrap().lines().filter(|l| l.starts_with("itarflow_model_ready{")).map(String::from).collect();
    assert_eq!(
        ready,
        ["alpha", "alpha-score", "alpha-denoise"].map(|m| format!("itarflow_model_ready{{model=\"{m}\"}} 1")),
        "the models served, ready"
    );
    assert_eq!(get(&server, "/v2/health/ready").0, 200);
    // Loaded again through Triton's gRPC client: the same images as before.
    let loaded = python(&["-c".to_string(), "import sys, tritonclient.grpc as g\nc = g.InferenceServerClient(sys.argv[1])\nc.load_model('beta')\nprint(c.is_model_ready('beta-denoise'))".to_string(), server.grpc.to_string()]);
    assert_eq!(loaded.trim(), "True");
    assert_eq!(index(), all("READY", "READY"));
    let (status, after) = infer(a, "beta", &request);
    assert_eq!(status, 200, "{after}");
    assert_eq!(images(&after), images(&before), "a package loaded again samples what it sampled before");
    // Triton's HTTP client unloads (its body names `unload_dependents`) and loads again; a load
    // carrying a configuration is refused over both protocols, naming what is not supported.
    let said = python(&[
        "-c".to_string(),
        "import sys, tritonclient.http as h, tritonclient.grpc as g\n\
             c = h.InferenceServerClient(sys.argv[1])\n\
             c.unload_model('alpha'); print(c.is_model_ready('alpha'))\n\
             c.load_model('alpha'); print(c.is_model_ready('alpha'))\n\
             for k in (c, g.InferenceServerClient(sys.argv[2])):\n\
             \x20   try:\n\
             \x20       k.load_model('alpha', config='{\"max_batch_size\": 8}'); print('loaded')\n\
             \x20   except Exception as e:\n\
             \x20       print(e.status(), e.message())"
            .to_string(),
        a.to_string(),
        server.grpc.to_string(),
    ]);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["False", "True"], "{said}");
    assert!(lines[2].starts_with("400 ") && lines[2].contains("not supported"), "{said}");
    assert!(lines[3].starts_with("StatusCode.INVALID_ARGUMENT") && lines[3].contains("not supported"), "{said}");
    // Refusals name the reason: not a name, not in the repository, not loaded, not a package.
    let (status, body) = control("load", "..%2Fx");
    assert!(status == 400 && body.contains("not a model name"), "{status} {body}");
    let (status, body) = control("load", "notes");
    assert!(status == 400 && body.contains("no package notes") && body.contains("manifest.json"), "{status} {body}");
    let (status, body) = control("unload", "gamma");
    assert!(status == 400 && body.contains("not loaded"), "{status} {body}");
    std::fs::create_dir_all(repo.join("broken")).unwrap();
    std::fs::write(repo.join("broken/manifest.json"), b"{ not json").unwrap();
    let (status, body) = control("load", "broken");
    assert!(status == 400 && body.contains("loading broken") && body.contains("manifest.json"), "{status} {body}");
    assert_eq!(index().len(), 9, "the broken package is listed as unavailable: {:?}", index());
    assert_eq!(get(&server, "/v2/health/ready").0, 200, "a failed load leaves the server ready");
}

/// Requests whose timeout (Triton's `timeout` parameter) passes while they wait in the queue get
/// 504, a gRPC call whose client's deadline passes ends at its deadline, and a REST client closes
/// its connection while its request waits; all are then dropped from the queue unrun (counted
/// in `itarflow_requests_abandoned_total`): the sampler's next run is not spent on images
/// nobody reads.
#[test]
fn requests_that_time_out_in_the_queue_are_not_run() {
    let server = tiny_server(&["--max-batch", "16", "--max-denoise-steps", "1000", "--max-queue-delay-ms", "0"]);
    let a = server.addr;
    // A long run (~11 s on this project's 2-core machine) holds the sampler; two requests queued
    // behind it, each with a timeout of 1 s, time out long before it ends.
    let long = json!({"inputs": [
        {"name": "class", "shape": [16], "datatype": "INT64", "data": vec![1; 16]},
        {"name": "denoise_steps", "shape": [1], "datatype": "INT32", "data": [600]}
    ]});
    let grpc = server.grpc.to_string();
    let (statuses, deadline) = std::thread::scope(|s| {
        let first = s.spawn(|| infer(a, "tiny", &long).0);
        std::thread::sleep(Duration::from_millis(300));
        let queued: Vec<_> = (0..2)
            .map(|k| {
                s.spawn(move || {
                    let mut req = sample_request(&[k], Some(k));
                    req["parameters"] = json!({"timeout": 1_000_000});
                    infer(a, "tiny", &req).0
                })
            })
            .collect();
        // A gRPC client's deadline of 0.3 s (Triton's client_timeout).
        let deadline = s.spawn(|| {
            python(&[
                "-c".to_string(),
                "import sys, time, numpy as np, tritonclient.grpc as g\n\
                     c = g.InferenceServerClient(sys.argv[1])\n\
                     x = g.InferInput('class', [1], 'INT64'); x.set_data_from_numpy(np.array([5]))\n\
                     t = time.time()\n\
                     try:\n    c.infer('tiny', [x], client_timeout=0.3); print('served')\n\
                     except g.InferenceServerException as e:\n    print(e.status(), round(time.time() - t, 2))"
                    .to_string(),
                grpc.clone(),
            ])
        });
        // A REST client that sends its request and closes the connection 0.3 s later.
        let body = sample_request(&[7], Some(7)).to_string();
        let mut gone = TcpStream::connect(a).unwrap();
        let head = format!("POST /v2/models/tiny/infer HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n", body.len());
        gone.write_all(head.as_bytes()).and_then(|()| gone.write_all(body.as_bytes())).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(gone);
        let statuses: Vec<u16> = std::iter::once(first).chain(queued).map(|h| h.join().unwrap()).collect();
        (statuses, deadline.join().unwrap())
    });
    assert_eq!(statuses, [200, 504, 504], "the long request waited for its run; the two queued behind it outlived their 1 s timeout");
    let said = deadline;
    let (code, after) = said.trim().rsplit_once(' ').unwrap_or_default();
    // The client's own deadline (DEADLINE_EXCEEDED) and tonic's cancellation of the call at the
    // deadline it was sent (CANCELLED) race; either ends the call there.
    assert!(["StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"].contains(&code), "{said}");
    assert!(after.parse::<f64>().unwrap() < 0.9, "the client's deadline ended the call: {said}");
    // Once the long run has ended, the batcher drops the four requests instead of running them.
    await_metric(a, "itarflow_requests_abandoned_total", "tiny", 4, 180);
    // The server ran the long request alone (the warm-up is not counted), plus this one.
    let (status, body) = infer(a, "tiny", &sample_request(&[3], Some(3)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(a, "itarflow_batch_images_count", "tiny"), Some(2), "runs: the long one and the last");
    assert_eq!(metric(a, "itarflow_images_generated_total", "tiny"), Some(17));
    assert_eq!(metric(a, "itarflow_runs_cancelled_total", "tiny"), None, "no run was stopped");
}

/// A metric's value for `model`, if the server reports it.
fn metric(a: SocketAddr, name: &str, model: &str) -> Option<u64> {
    let (_, _, text) = http(a, "GET", "/metrics", &[], b"");
    let text = String::from_utf8(text).unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}{{model=\"{model}\"}} "))).map(|v| v.parse::<u64>().unwrap())
}

/// Waits (up to `seconds`) for a metric of `model` to reach `value`.
fn await_metric(a: SocketAddr, name: &str, model: &str, value: u64, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while metric(a, name, model) != Some(value) {
        assert!(Instant::now() < deadline, "{name} of {model}: {:?}, not {value}", metric(a, name, model));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A run whose every request went away stops at its next step (`itarflow_runs_cancelled_total`)
/// and the next request is served at once: sampling runs left by a REST client's `timeout`
/// parameter, by a gRPC request's (Triton's client) and by a cancelled gRPC stream, a denoising run left by its client's
/// timeout. Each long run would take over 15 s on this project's 2-core machine; the requests
/// after them are given 8 s.
#[test]
fn runs_whose_clients_went_away_stop_at_their_next_step() {
    let server = tiny_server(&[
        "--max-batch",
        "16",
        "--max-denoise-steps",
        "1000",
        "--max-queue-delay-ms",
        "0",
        "--max-image-runs",
        "1",
        "--denoise-steps",
        "1000",
    ]);
    let a = server.addr;
    let within = |us: u64, mut req: Value| {
        req["parameters"] = json!({ "timeout": us });
        req
    };
    let long = json!({"inputs": [
        {"name": "class", "shape": [16], "datatype": "INT64", "data": vec![1; 16]},
        {"name": "denoise_steps", "shape": [1], "datatype": "INT32", "data": [1000]}
    ]});
    let (status, body) = infer(a, "tiny", &within(1_000_000, long));
    assert_eq!(status, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no result within 1 s"), "{body}");
    // The same through Triton's gRPC client and its request `timeout` (microseconds).
    let said = python(&[
        "-c".to_string(),
        "import sys, numpy as np, tritonclient.grpc as g\n\
             c = g.InferenceServerClient(sys.argv[1])\n\
             x = g.InferInput('class', [16], 'INT64'); x.set_data_from_numpy(np.ones(16, dtype=np.int64))\n\
             k = g.InferInput('denoise_steps', [1], 'INT32'); k.set_data_from_numpy(np.array([1000], dtype=np.int32))\n\
             try:\n    c.infer('tiny', [x, k], timeout=1000000); print('served')\n\
             except g.InferenceServerException as e:\n    print(e.status(), e.message())"
            .to_string(),
        server.grpc.to_string(),
    ]);
    assert!(said.starts_with("StatusCode.DEADLINE_EXCEEDED") && said.contains("no result within 1 s"), "{said}");
    let (status, body) = infer(a, "tiny", &within(8_000_000, sample_request(&[3], Some(3))));
    assert_eq!(status, 200, "the sampler was still busy with runs nobody waited for: {body}");
    assert_eq!(metric(a, "itarflow_runs_cancelled_total", "tiny"), Some(2));
    // A request on a gRPC stream (Triton's stream_infer) whose client cancels the stream.
    let said = python(&[
        "-c".to_string(),
        "import sys, time, numpy as np, tritonclient.grpc as g\n\
         c = g.InferenceServerClient(sys.argv[1])\n\
         got = []\n\
         c.start_stream(callback=lambda result, error: got.append(result is not None))\n\
         x = g.InferInput('class', [16], 'INT64'); x.set_data_from_numpy(np.ones(16, dtype=np.int64))\n\
         k = g.InferInput('denoise_steps', [1], 'INT32'); k.set_data_from_numpy(np.array([1000], dtype=np.int32))\n\
         c.async_stream_infer('tiny', [x, k])\n\
         time.sleep(1)\n\
         c.stop_stream(cancel_requests=True)\n\
         print('stopped', sum(got))"
            .to_string(),
        server.grpc.to_string(),
    ]);
    assert_eq!(said.trim(), "stopped 0", "the stream was cancelled before any result");
    await_metric(a, "itarflow_runs_cancelled_total", "tiny", 3, 10);
    let (status, body) = infer(a, "tiny", &within(8_000_000, sample_request(&[4], Some(4))));
    assert_eq!(status, 200, "{body}");
    // A denoising run of 1,000 steps: its client leaves after 1 s, and a score request is served.
    let x = |n: usize| json!({"name": "x", "shape": [n, 1, 16, 16], "datatype": "FP32", "data": vec![0.1; n * 256]});
    let (status, body) = infer(a, "tiny-denoise", &within(1_000_000, json!({"inputs": [x(16)]})));
    assert_eq!(status, 504, "{body}");
    let score = json!({"inputs": [x(1), {"name": "t", "shape": [1], "datatype": "FP32", "data": [0.1]}]});
    let (status, body) = infer(a, "tiny-score", &within(8_000_000, score));
    assert_eq!(status, 200, "the denoising run kept its permit: {body}");
    // The stopped run is counted (once it has seen its flag: at its next step) and is no
    // execution of the model.
    await_metric(a, "itarflow_runs_cancelled_total", "tiny-denoise", 1, 10);
    let (_, stats) = get(&server, "/v2/models/tiny-denoise/stats");
    assert_eq!(stats["model_stats"][0]["execution_count"], 0, "{stats}");
    let (_, stats) = get(&server, "/v2/models/tiny/stats");
    assert_eq!(stats["model_stats"][0]["execution_count"], 2, "only the short sampling runs executed: {stats}");
}

/// Score and denoising requests run `--max-image-runs` at a time: the others wait in arrival
/// order, past `--max-queue` waiting they get 429, and one whose timeout passes while it waits
/// gets 504 and never runs.
#[test]
fn score_and_denoising_requests_wait_their_turn_and_leave_unrun_when_late() {
    let server = tiny_server(&["--max-image-runs", "1", "--max-queue", "1", "--denoise-steps", "600"]);
    let a = server.addr;
    let x = |n: usize| json!({"name": "x", "shape": [n, 1, 16, 16], "datatype": "FP32", "data": vec![0.1; n * 256]});
    let score = json!({"inputs": [x(1), {"name": "t", "shape": [1], "datatype": "FP32", "data": [0.1]}]});
    let mut impatient = score.clone();
    impatient["parameters"] = json!({"timeout": 2_000_000});
    // A denoising run of 600 steps (seconds) holds the one permit; a score request waits behind
    // it with a timeout of 2 s, and the next finds the queue full.
    let (long, waited, refused) = std::thread::scope(|s| {
        let long = s.spawn(|| infer(a, "tiny-denoise", &json!({"inputs": [x(16)]})));
        std::thread::sleep(Duration::from_millis(300));
        let waited = s.spawn(|| infer(a, "tiny-score", &impatient));
        std::thread::sleep(Duration::from_millis(300));
        let refused = infer(a, "tiny-score", &score);
        (long.join().unwrap(), waited.join().unwrap(), refused)
    });
    assert_eq!(long.0, 200, "{}", long.1);
    assert_eq!(waited.0, 504, "{}", waited.1);
    assert_eq!(refused.0, 429, "{}", refused.1);
    assert!(refused.1["error"].as_str().unwrap().contains("queue is full"), "{}", refused.1);
    let (status, body) = infer(a, "tiny-score", &score);
    assert_eq!(status, 200, "{body}");
    // Of the three score requests only the last ran: the one that left late never did.
    let (_, stats) = get(&server, "/v2/models/tiny-score/stats");
    let m = &stats["model_stats"][0];
    assert_eq!(m["execution_count"], 1, "{m}");
    assert_eq!(m["inference_stats"]["fail"]["count"], 2, "{m}");
}
