//! The Burn model against the arrays the PyTorch reference computed from the same checkpoint.

mod common;

use burn::prelude::*;
use common::*;
use itarflow::Labels;
use itarflow::model::patchify;
use itarflow::sample::{CfgStyle, Guidance, SampleOptions, denoise, noise_levels, reverse, tweedie};

const TOL: f64 = 1e-4;

#[test]
fn forward_matches_reference() {
    let v = vectors();
    let model = tiny(false);
    let x: Tensor<4> = tensor(&v, "x");
    let t = tensor_as(&v, "t", [4]);
    check(&v, "x_patchified", patchify(x.clone(), 2), 1e-7);
    let fwd = model.forward(x, t.clone(), &labels(&v, "y"));
    check(&v, "z", fwd.z.clone(), TOL);
    check(&v, "block_outputs", Tensor::stack::<4>(fwd.outputs.clone(), 0), TOL);
    check(&v, "block_logdets", Tensor::stack::<2>(fwd.layer_logdets.clone(), 0), TOL);
    check(&v, "logdets", fwd.logdet.clone(), TOL);
    let lik = model.likelihood(&fwd);
    check(&v, "loss_per_sample", lik.loss.clone(), TOL);
    check(&v, "logp", lik.log_prob.clone(), TOL);
    check(&v, "train_loss_reweight_ones", lik.loss.clone().mean(), TOL);
    check(&v, "train_loss_reweight_t", (lik.loss * t).mean(), TOL);
}

#[test]
fn safetensors_and_pth_load_the_same_weights() {
    let v = vectors();
    let (a, b) = (tiny(false), tiny(true));
    let x: Tensor<4> = tensor(&v, "x");
    let t = tensor_as(&v, "t", [4]);
    let za = values(a.forward(x.clone(), t.clone(), &labels(&v, "y")).z);
    let zb = values(b.forward(x, t, &labels(&v, "y")).z);
    assert_eq!(za, zb);
}

#[test]
fn unconditional_rows_match_reference() {
    let v = vectors();
    let model = tiny(false);
    let x: Tensor<4> = tensor(&v, "x");
    let t = tensor_as(&v, "t", [4]);
    let mixed = model.forward(x.clone(), t.clone(), &labels(&v, "y_mixed"));
    check(&v, "z_ymixed", mixed.z, TOL);
    check(&v, "logdets_ymixed", mixed.logdet, TOL);
    let none = model.forward(x, t, &Labels::None);
    check(&v, "z_ynone", none.z, TOL);
    check(&v, "logdets_ynone", none.logdet, TOL);
}

#[test]
fn score_and_tweedie_match_reference() {
    let v = vectors();
    let model = tiny(false);
    let x: Tensor<4> = tensor(&v, "x");
    let t: Tensor<1> = tensor_as(&v, "t", [4]);
    let y = labels(&v, "y");
    let (score, logp) = model.score(x.clone(), t.clone(), &y);
    check(&v, "score", score.clone(), TOL);
    check(&v, "logp", logp, TOL);
    let d = 256.0;
    check(&v, "grad_loss_per_sample", score.clone().div_scalar(-d), TOL);
    let t2 = t.square().reshape([4, 1, 1, 1]);
    check(&v, "x0_tweedie_per_sample_t", x.clone() + score * t2, TOL);
    // The reference's batch self-denoiser at one t for all rows.
    let (_, sd_t) = array(&v, "sd_t");
    check(&v, "sd_x0", tweedie(&model, x, sd_t[0] as f64, &y, false, 0), TOL);
}

fn reverse_with(guidance: Guidance) -> Tensor<4> {
    let v = vectors();
    let model = tiny(false);
    let (_, rev_t) = array(&v, "rev_t");
    reverse(&model, tensor(&v, "rev_z"), rev_t[0] as f64, &labels(&v, "y"), &guidance, &mut |_| {})
}

#[test]
fn reverse_without_guidance_matches_reference() {
    check(&vectors(), "rev_g0", reverse_with(Guidance::default()), TOL);
}

#[test]
fn reverse_with_guidance_matches_reference() {
    let all = Guidance { scale: 2.0, style: CfgStyle::Tarflow, layers: usize::MAX, annealed: false, uncond_temperature: 1.0 };
    check(&vectors(), "rev_g2", reverse_with(all), TOL);
    check(&vectors(), "rev_g2_anneal", reverse_with(Guidance { annealed: true, ..all }), TOL);
    check(&vectors(), "rev_g2_anneal_gf1", reverse_with(Guidance { annealed: true, layers: 1, ..all }), TOL);
}

#[test]
fn iterative_denoising_matches_reference() {
    let v = vectors();
    let model = tiny(false);
    let ts = noise_levels(0.3, 0.01, 10);
    check(&v, "itd_ts", Tensor::<1>::from_data(TensorData::new(ts.iter().map(|&t| t as f32).collect(), [10]), &device()), 1e-7);
    let y = labels(&v, "y");
    let x0 = tensor(&v, "itd_x_init");
    // Every step's input and Tweedie estimate.
    let x_in: Tensor<5> = tensor(&v, "itd_x_in");
    let mut estimates = Vec::new();
    for (i, &t) in ts.iter().enumerate() {
        let xi = x_in.clone().narrow(0, i, 1).reshape([4, 1, 16, 16]);
        estimates.push(tweedie(&model, xi, t, &y, false, 0));
    }
    check(&v, "itd_x0", Tensor::stack::<5>(estimates, 0), TOL);
    let opts = SampleOptions { guidance: Guidance::default(), t_max: 0.3, t_min: 0.01, denoise_steps: 10, clip: false, denoise_batch: 3 };
    check(&v, "itd_x_final", denoise(&model, x0, &y, &opts, &mut |_| {}), TOL);
}

#[test]
fn the_comparison_fails_an_output_holding_nan_or_inf() {
    let v = vectors();
    let (_, z) = array(&v, "z");
    assert!(rel_err(&z, &z) == 0.0);
    for bad in [f32::NAN, f32::INFINITY] {
        let mut ours = z.clone();
        ours[3] = bad;
        assert_eq!(rel_err(&ours, &z), f64::INFINITY, "{bad}");
        assert_eq!(max_diff(&ours, &z), f64::INFINITY, "{bad}");
        let all_bad = vec![bad; z.len()];
        assert_eq!(rel_err(&all_bad, &z), f64::INFINITY, "{bad}");
        let (shape, _) = array(&v, "z");
        let t: Tensor<3> = Tensor::from_data(TensorData::new(ours, [shape[0], shape[1], shape[2]]), &device());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&v, "z", t, TOL)));
        assert!(caught.is_err(), "check passed an output holding {bad}");
    }
}
