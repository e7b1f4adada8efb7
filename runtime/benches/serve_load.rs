//! Load on `itarflow-rt serve` (the library's server, in this process, on an ephemeral port):
//! C concurrent clients send R seeded sampling requests each over HTTP; every response is
//! checked against the same images sampled directly through the library (nothing lost,
//! duplicated or mixed up), and p50/p99 latency and images/s are reported, beside the same
//! number of single-image requests sent one at a time (the batching gain).
//!
//!   cargo bench -p itarflow-rt --bench serve_load     (LOAD_CLIENTS=16, LOAD_REQUESTS=50,
//!       LOAD_PROVIDER=tract, LOAD_DELAY_MS=10; writes benches/results/serve_load_<provider>.json)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use itarflow_rt::serve::batcher::BatchOptions;
use itarflow_rt::serve::models::RequestLimits;
use itarflow_rt::serve::{ServeOptions, Served, serve};
use itarflow_rt::{Model, Provider, Sampler};
use serde_json::{Value, json};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn post(addr: SocketAddr, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let req = format!(
        "POST /v2/models/fmnist/infer HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("receive");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let status = String::from_utf8_lossy(&raw[..split]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, serde_json::from_slice(&raw[split + 4..]).unwrap_or(Value::Null))
}

fn request(class: i64, seed: i64) -> String {
    json!({ "inputs": [
        {"name": "class", "shape": [1], "datatype": "INT64", "data": [class]},
        {"name": "seed", "shape": [1], "datatype": "INT64", "data": [seed]}
    ]})
    .to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    // As `itarflow-rt serve` runs: freed memory kept for the next run (see `allocator`).
    itarflow_rt::allocator::retain_freed_memory();
    let clients: usize = env("LOAD_CLIENTS", 16);
    let per_client: usize = env("LOAD_REQUESTS", 50);
    let delay_ms: u64 = env("LOAD_DELAY_MS", 10);
    let provider: Provider = std::env::var("LOAD_PROVIDER").unwrap_or_else(|_| "tract".into()).parse().expect("provider");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package");
    let build = || Sampler::builder(Model::load(dir).expect("demo package")).provider(provider).build().expect("sampler");
    let sampler = Arc::new(build());
    let settings = *sampler.settings();
    let total = clients * per_client;
    // The expected images of every request, sampled directly (one image each, as requested).
    let per = sampler.model().image_len();
    let expected: Vec<Vec<f32>> = (0..total)
        .map(|k| {
            let z = itarflow_base::prior_noise(k as u64, sampler.model().noise_len());
            sampler.sample_with(&z, &[(k % 10) as i64], &settings, &mut |_| {}).expect("direct sample").images.as_slice().unwrap()[..per]
                .to_vec()
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let server_sampler = Arc::new(build());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let opts = ServeOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            grpc_addr: None,
            batch: BatchOptions {
                max_batch: 64,
                max_delay: Duration::from_millis(delay_ms),
                max_queue: 4096,
                max_image_runs: 2,
                pad: false,
            },
            pad_auto: false,
            limits: RequestLimits { max_images: 256, max_denoise_steps: 200 },
            max_body_bytes: 64 << 20,
            timeout: Duration::from_secs(600),
            shutdown_grace: Duration::ZERO,
        };
        let served = Served::Package { name: "fmnist".into(), sampler: server_sampler };
        rt.block_on(serve(served, opts, std::future::pending(), move |at| tx.send(at.http).unwrap())).unwrap();
    });
    let addr: SocketAddr = rx.recv().unwrap();
    while post(addr, &request(0, 0)).0 != 200 {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Sequential single-image requests: the rate without batching.
    let seq_n = (total / 8).clamp(8, 64);
    let start = Instant::now();
    for k in 0..seq_n {
        assert_eq!(post(addr, &request((k % 10) as i64, k as i64)).0, 200);
    }
    let sequential_rate = seq_n as f64 / start.elapsed().as_secs_f64();
    // C clients, R requests each, all at once.
    let start = Instant::now();
    let results: Vec<(usize, f64, u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    (0..per_client)
                        .map(|r| {
                            let k = c * per_client + r;
                            let t = Instant::now();
                            let (status, body) = post(addr, &request((k % 10) as i64, k as i64));
                            (k, t.elapsed().as_secs_f64(), status, body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut seen = vec![false; total];
    let mut worst: f64 = 0.0;
    for (k, _, status, body) in &results {
        assert_eq!(*status, 200, "request {k}: {body}");
        let got: Vec<f32> = body["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let want = &expected[*k];
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        assert!(err < 1e-4, "request {k}: its images differ from the direct sample by {err:.2e}");
        worst = worst.max(err as f64);
        assert!(!seen[*k], "request {k} answered twice");
        seen[*k] = true;
    }
    assert!(seen.iter().all(|&s| s), "a request went unanswered");
    let mut lat: Vec<f64> = results.iter().map(|r| r.1).collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let rate = total as f64 / seconds;
    let report = json!({
        "provider": provider.name(), "clients": clients, "requests_per_client": per_client, "images_per_request": 1,
        "max_batch": 64, "max_queue_delay_ms": delay_ms, "requests": total, "seconds": seconds,
        "images_per_second": rate, "latency_p50_s": percentile(&lat, 0.5), "latency_p99_s": percentile(&lat, 0.99),
        "sequential_single_image_per_second": sequential_rate, "batching_gain": rate / sequential_rate,
        "max_relative_error_vs_direct": worst, "checked": total,
    });
    let out = format!("{}/../benches/results/serve_load_{}.json", env!("CARGO_MANIFEST_DIR"), provider.name());
    std::fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).expect("write the result");
    println!("{report}");
}
