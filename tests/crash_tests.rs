//! Crash safety: `itarflow train` killed with SIGKILL at random moments (checkpoint writes
//! included) always resumes from its last complete checkpoint and ends bit-identical to a run
//! that was never interrupted, with a metrics log that reads as one run; `itarflow export`
//! killed at random moments never leaves a half package where a package is looked for.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn idx(dir: &Path) {
    // 64 grey 8x8 images of 4 classes (a bright quadrant per class).
    let mut images = vec![0, 0, 8, 3];
    for d in [64u32, 8, 8] {
        images.extend(d.to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend(64u32.to_be_bytes());
    for i in 0..64usize {
        let k = i % 4;
        for y in 0..8 {
            for x in 0..8 {
                let inside = (y / 4 == k / 2) && (x / 4 == k % 2);
                images.push(if inside { 200 + (i % 7) as u8 } else { 30 + (i % 5) as u8 });
            }
        }
        labels.push(k as u8);
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
}

const STEPS: u64 = 300;

fn train(data: &Path, config: &Path, run: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_itarflow"));
    let resume = run.join("checkpoint").exists() || run.join("checkpoint.old").exists();
    if resume {
        cmd.arg("train").arg("--resume").arg(run);
    } else {
        cmd.args(["train", "--dataset", "idx", "--batch-size", "8", "--checkpoint-every", "7", "--sample-every", "0"])
            .args(["--eval-every", "0", "--log-every", "1", "--seed", "5", "--ema", "0.9", "--steps", &STEPS.to_string()])
            .arg("--data-dir")
            .arg(data)
            .arg("--model-config")
            .arg(config)
            .arg("--out-dir")
            .arg(run);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn finish(child: Child) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// (step, loss) of every training log line.
fn losses(run: &Path) -> Vec<(u64, String)> {
    itarflow::train::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r.get("loss").is_some())
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].to_string()))
        .collect()
}

#[test]
fn training_killed_at_random_moments_resumes_to_the_uninterrupted_result() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    idx(&data);
    let config = tmp.path().join("model.json");
    std::fs::write(
        &config,
        r#"{"img_size": 8, "in_channels": 1, "patch_sizes": [2], "num_layers": 2, "widths": [32],
            "blocks_per_layer": [1], "head_dim": 16, "expansion": 4, "num_classes": 4,
            "t_min": 0.01, "t_max": 0.3}"#,
    )
    .unwrap();
    let straight = tmp.path().join("straight");
    finish(train(&data, &config, &straight).spawn().unwrap());

    let killed = tmp.path().join("killed");
    let mut noise = itarflow_base::GaussianNoise::new(2024);
    let mut kills = 0;
    for _ in 0..8 {
        let mut child = train(&data, &config, &killed).spawn().unwrap();
        // Somewhere in start-up, a step or a checkpoint write.
        std::thread::sleep(Duration::from_millis(80 + (noise.next_open01() * 500.0) as u64));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        // Whatever the moment, the run is resumable: its checkpoint (if it has one) is complete.
        if killed.join("checkpoint").exists() || killed.join("checkpoint.old").exists() {
            let state = itarflow::train::state::read_state(&killed).expect("a killed run's checkpoint reads");
            assert!(state.step <= STEPS);
            println!("killed; resumes at step {}", state.step);
        }
    }
    assert!(kills >= 2, "the run finished before it could be killed enough ({kills} kills)");
    finish(train(&data, &config, &killed).spawn().unwrap());

    // Every tensor bit for bit (the files' headers list their metadata in no fixed order).
    let tensors = |run: &PathBuf| itarflow::checkpoint::NamedTensors::read(&run.join("model.safetensors")).unwrap().tensors;
    assert!(tensors(&straight) == tensors(&killed), "the resumed run's weights differ from the uninterrupted run's");
    let (a, b) = (losses(&straight), losses(&killed));
    assert_eq!(b.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=STEPS).collect::<Vec<_>>(), "steps logged once each, in order");
    assert_eq!(a, b, "the metrics log reads as the uninterrupted run's");
}

#[test]
fn an_export_killed_at_random_moments_never_leaves_a_half_package() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tmp.path().join("m.safetensors");
    let init = Command::new(env!("CARGO_BIN_EXE_itarflow")).args(["init", "--preset", "fmnist-s", "--out"]).arg(&ckpt).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let out = tmp.path().join("pkg");
    let mut noise = itarflow_base::GaussianNoise::new(7);
    let mut complete = 0;
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_itarflow"))
            .args(["export", "--precision", "both", "--ckpt"])
            .arg(&ckpt)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if round > 0 {
            std::thread::sleep(Duration::from_millis((noise.next_open01() * 1500.0) as u64));
            let _ = child.kill();
        }
        child.wait().unwrap();
        // Where a package is, it is whole: every file present with its recorded checksum.
        if out.exists() {
            itarflow_rt::Model::load(&out).unwrap_or_else(|e| panic!("round {round}: a half package at {}: {e}", out.display()));
            complete += 1;
        }
    }
    assert!(complete >= 1);
}
