//! The `itarflow` binary end to end: its outputs against the reference vectors, and its errors on
//! bad input (clear message, non-zero exit, no output file left behind).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use itarflow_base::{Array, Npz};

fn itarflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_itarflow")).args(args).output().expect("itarflow runs")
}

fn ok(args: &[&str]) {
    let out = itarflow(args);
    assert!(out.status.success(), "itarflow {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = itarflow(args);
    assert!(!out.status.success(), "itarflow {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ckpt() -> String {
    fixture("tiny16_c1.pth").display().to_string()
}

fn write(path: &Path, arrays: Vec<(&str, Array)>) -> String {
    let mut npz = Npz::new(path);
    for (name, a) in arrays {
        npz.insert(name, a);
    }
    npz.write().unwrap();
    path.display().to_string()
}

fn copy(v: &Npz, name: &str) -> Array {
    v.get(name).unwrap().clone()
}

fn compare(out: &Path, name: &str, v: &Npz, reference: &str, tol: f64) {
    let got = Npz::read(out).unwrap();
    let (_, ours) = array(&got, name);
    let (_, theirs) = array(v, reference);
    let e = rel_err(&ours, &theirs);
    println!("cli rel_err {reference:<20} {e:.3e}");
    assert!(e <= tol, "{reference}: {e:.3e}");
}

#[test]
fn eval_reproduces_reference_forward_and_score() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let input = write(&dir.path().join("in.npz"), vec![("x", copy(&v, "x")), ("t", copy(&v, "t")), ("y", copy(&v, "y"))]);
    let out = dir.path().join("out.npz");
    ok(&["eval", "--ckpt", &ckpt(), "--input", &input, "--output", out.to_str().unwrap()]);
    compare(&out, "z", &v, "z", 1e-4);
    compare(&out, "logdet", &v, "logdets", 1e-4);
    compare(&out, "logp", &v, "logp", 1e-4);
    compare(&out, "score", &v, "score", 1e-4);
}

#[test]
fn sample_from_given_noise_reproduces_reference_reverse() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let noise = write(&dir.path().join("z.npz"), vec![("z", copy(&v, "rev_z")), ("y", copy(&v, "y"))]);
    let out = dir.path().join("x.npz");
    let base = ["sample", "--ckpt", &ckpt(), "--noise", &noise, "--t-max", "0.3", "--denoise-steps", "0", "--output"];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        ok(&args);
    };
    run(&[]);
    compare(&out, "x", &v, "rev_g0", 1e-4);
    run(&["--cfg", "2", "--guide-layers", "all"]);
    compare(&out, "x", &v, "rev_g2", 1e-4);
    run(&["--cfg", "2", "--guide-layers", "all", "--anneal"]);
    compare(&out, "x", &v, "rev_g2_anneal", 1e-4);
    run(&["--cfg", "2", "--guide-layers", "1", "--anneal"]);
    compare(&out, "x", &v, "rev_g2_anneal_gf1", 1e-4);
}

#[test]
fn denoise_reproduces_reference_ode() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let input = write(&dir.path().join("in.npz"), vec![("x", copy(&v, "itd_x_init")), ("y", copy(&v, "y"))]);
    let out = dir.path().join("out.npz");
    let png = dir.path().join("out.png");
    ok(&[
        "denoise",
        "--ckpt",
        &ckpt(),
        "--input",
        &input,
        "--output",
        out.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--t-max",
        "0.3",
        "--t-min",
        "0.01",
        "--steps",
        "10",
    ]);
    compare(&out, "x", &v, "itd_x_final", 1e-4);
    assert!(std::fs::metadata(&png).unwrap().len() > 0);
}

#[test]
fn seeded_sampling_is_reproducible_and_writes_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.npz");
    let b = dir.path().join("b.npz");
    let png = dir.path().join("grid.png");
    let args = |out: &PathBuf| {
        vec![
            "sample".to_string(),
            "--ckpt".into(),
            ckpt(),
            "--num".into(),
            "3".into(),
            "--seed".into(),
            "5".into(),
            "--denoise-steps".into(),
            "2".into(),
            "--class".into(),
            "4".into(),
            "--output".into(),
            out.display().to_string(),
            "--out".into(),
            png.display().to_string(),
        ]
    };
    let run = |out: &PathBuf| ok(&args(out).iter().map(String::as_str).collect::<Vec<_>>());
    run(&a);
    run(&b);
    let (ra, rb) = (Npz::read(&a).unwrap(), Npz::read(&b).unwrap());
    assert_eq!(ra.get("x"), rb.get("x"));
    assert_eq!(ra.i64("y", 1, "", "").unwrap().1, vec![4, 4, 4]);
    assert_eq!(ra.get("x").unwrap().shape, vec![3, 1, 16, 16]);
    assert!(std::fs::metadata(&png).unwrap().len() > 0);
}

/// Runs `eval` on arrays that must be refused; checks the message and that no output appeared.
fn eval_refuses(arrays: Vec<(&str, Array)>, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let input = write(&dir.path().join("in.npz"), arrays);
    let out = dir.path().join("out.npz");
    let err = fails(&["eval", "--ckpt", &ckpt(), "--input", &input, "--output", out.to_str().unwrap()]);
    for e in expect {
        assert!(err.contains(e), "message lacks '{e}':\n{err}");
    }
    assert!(!out.exists(), "an output file was left behind");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "stray files");
}

#[test]
fn bad_arrays_are_refused_with_clear_errors() {
    let v = vectors();
    let x = copy(&v, "x");
    let t = copy(&v, "t");
    eval_refuses(vec![("x", x.clone())], &["no array 't'", "in.npz"]);
    eval_refuses(vec![("x", Array::f32(&[4, 256], vec![0.0; 1024])), ("t", t.clone())], &["'x'", "[4, 256]", "(B, 1, 16, 16)"]);
    eval_refuses(vec![("x", Array::f32(&[4, 3, 16, 16], vec![0.0; 3072])), ("t", t.clone())], &["'x'", "(B, 1, 16, 16)"]);
    eval_refuses(vec![("x", x.clone()), ("t", t.clone()), ("y", Array::f32(&[4], vec![1.0; 4]))], &["'y'", "float32", "int64"]);
    eval_refuses(vec![("x", x.clone()), ("t", Array::f32(&[4], vec![0.1, 0.0, 0.2, 0.3]))], &["t = 0", "> 0"]);
    eval_refuses(vec![("x", x.clone()), ("t", t.clone()), ("y", Array::i64(&[4], vec![1, 2, 10, 3]))], &["label 10", "0..9"]);
    let mut nan = vec![0.0f32; 1024];
    nan[17] = f32::NAN;
    eval_refuses(vec![("x", Array::f32(&[4, 1, 16, 16], nan)), ("t", t)], &["'x'", "non-finite", "index 17"]);
}

#[test]
fn truncated_or_missing_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny16_c1.pth", "tiny16_c1.safetensors"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = dir.path().join(format!("cut_{name}"));
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let out = dir.path().join("out.npz");
        let err = fails(&["sample", "--ckpt", cut.to_str().unwrap(), "--num", "1", "--output", out.to_str().unwrap()]);
        assert!(err.contains(&format!("cut_{name}")) && err.contains("corrupt or truncated"), "{err}");
        assert!(!out.exists());
    }
    let err = fails(&["info", "--ckpt", "/nonexistent/model.safetensors"]);
    assert!(err.contains("/nonexistent/model.safetensors") && err.to_lowercase().contains("no such file"), "{err}");
}

#[test]
fn sample_argument_errors_are_clear() {
    let err = fails(&["sample", "--ckpt", &ckpt(), "--num", "2"]);
    assert!(err.contains("--output") && err.contains("--out"), "{err}");
    let err = fails(&["sample", "--ckpt", &ckpt(), "--num", "2", "--class", "12", "--out", "/tmp/never.png"]);
    assert!(err.contains("label 12"), "{err}");
    let err = fails(&["sample", "--ckpt", &ckpt(), "--num", "2", "--t-max", "0", "--out", "/tmp/never.png"]);
    assert!(err.contains("--t-max") && err.contains("positive"), "{err}");
    let err = fails(&["sample", "--ckpt", &ckpt(), "--num", "2", "--in-channels", "3", "--out", "/tmp/never.png"]);
    assert!(err.contains("3 channel(s)"), "{err}");
    assert!(!Path::new("/tmp/never.png").exists());
}
