//! Soak: many sampling runs through the library in one process, watching resident memory and
//! open file descriptors. They must stay flat (no leak across runs) and no run may fail.
//!
//!   cargo bench -p itarflow-rt --bench soak        (SOAK_RUNS=1000, SOAK_PROVIDER=tract|cpu,
//!                                                   SOAK_IMAGES=4; writes benches/results/soak_<provider>.json)

use std::time::Instant;

use itarflow_rt::{Model, Provider, Sampler};

fn status(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse::<f64>().ok().map(|kb| kb / 1024.0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let runs: usize = env("SOAK_RUNS", 1000);
    let images: usize = env("SOAK_IMAGES", 4);
    let provider: Provider = std::env::var("SOAK_PROVIDER").unwrap_or_else(|_| "tract".into()).parse().expect("provider");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fmnist/package");
    let model = Model::load(dir).expect("the demo package loads");
    let sampler = Sampler::builder(model).provider(provider).cfg(2.0).num_images(images).build().expect("sampler");
    sampler.warm_up().expect("graphs load");
    let mut points = Vec::new();
    let start = Instant::now();
    let mut failures = 0;
    for run in 0..runs {
        // Each run its own noise: a new seed through the retry-free path.
        let z = itarflow_base::prior_noise(run as u64, images * sampler.model().noise_len());
        if let Err(e) = sampler.sample_from(&z, sampler.labels(), &mut |_| {}) {
            failures += 1;
            eprintln!("run {run}: {e}");
        }
        if run == 0 || (run + 1) % (runs / 20).max(1) == 0 {
            let p = serde_json::json!({
                "run": run + 1, "rss_mib": status("VmRSS:"), "fds": open_fds(), "seconds": start.elapsed().as_secs_f64(),
            });
            eprintln!("{p}");
            points.push(p);
        }
    }
    let first = &points[0];
    let last = &points[points.len() - 1];
    let summary = serde_json::json!({
        "provider": provider.name(), "runs": runs, "images_per_run": images, "failures": failures,
        "rss_mib_first": first["rss_mib"], "rss_mib_last": last["rss_mib"], "peak_rss_mib": status("VmHWM:"),
        "fds_first": first["fds"], "fds_last": last["fds"], "seconds": start.elapsed().as_secs_f64(), "points": points,
    });
    let out = format!("{}/../benches/results/soak_{}.json", env!("CARGO_MANIFEST_DIR"), provider.name());
    std::fs::write(&out, serde_json::to_string_pretty(&summary).unwrap()).expect("write the result");
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({
            "provider": provider.name(), "runs": runs, "failures": failures,
            "rss_mib": [first["rss_mib"], last["rss_mib"]], "fds": [first["fds"], last["fds"]], "result": out,
        }))
        .unwrap()
    );
    assert_eq!(failures, 0, "runs failed");
}
