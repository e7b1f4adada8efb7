//! The graphs of a model package, each built from the layer pieces.

use itarflow_base::ModelConfig;

use super::layer::{Cache, GuidanceInputs, GuidedStyle, InvertInputs, Layer, StepInputs};
use super::weights::Weights;
use crate::ExportError;
use crate::ir::grad::gradients;
use crate::ir::simplify;
use crate::ir::{DType, Dim, Graph, V};
use crate::ops::Op;

fn n() -> Dim {
    Dim::sym("N")
}

fn labels_input(g: &mut Graph, c: &ModelConfig) -> Option<V> {
    (c.num_classes > 0).then(|| g.input("y", DType::I64, vec![n()]))
}

fn finish(mut g: Graph) -> Graph {
    simplify::fold_scalars(&mut g);
    simplify::remove_dead(&mut g);
    g
}

/// `layer{l}_forward`: (x (N,T,c), t (N,), y (N,)) -> (z (N,T,c), logdet (N,)), data order.
pub fn forward(w: &Weights, l: usize) -> Result<Graph, ExportError> {
    let c = w.config;
    let mut g = Graph::new(&format!("layer{l}_forward"));
    let x = g.input("x", DType::F32, vec![n(), Dim::N(c.tokens(l)), Dim::N(c.token_dim(l))]);
    let t = g.input("t", DType::F32, vec![n()]);
    let y = labels_input(&mut g, c);
    let layer = Layer::load(w, &mut g, l)?;
    let cond = layer.cond(&mut g, t, y);
    let (z, logdet) = layer.forward(&mut g, x, cond);
    g.output(z, "z");
    g.output(logdet, "logdet");
    Ok(finish(g))
}

/// `layer{l}_cond`: (t (N,), y (N,)) -> cond (N, C), computed once per layer per sampling run.
pub fn cond(w: &Weights, l: usize) -> Result<Graph, ExportError> {
    let c = w.config;
    let mut g = Graph::new(&format!("layer{l}_cond"));
    let t = g.input("t", DType::F32, vec![n()]);
    let y = labels_input(&mut g, c);
    let layer = Layer::load(w, &mut g, l)?;
    let cond = layer.cond(&mut g, t, y);
    g.output(cond, "cond");
    Ok(finish(g))
}

/// `layer{l}_step` (growing cache) and `layer{l}_step_fixed` (fixed-length cache): one token.
/// Inputs: token (N, c) at permuted position pos (int64 scalar), cond (N, C), inv_temp (N,),
/// past_k{b}, past_v{b} per block. Outputs: a, b (N, c) for the next token and present_k{b},
/// present_v{b}. Growing: past (N, H, P, d), presents (N, H, P+1, d). Fixed: past and presents
/// (N, H, T, d), the token's key and value written at pos.
pub fn step(w: &Weights, l: usize, fixed: bool) -> Result<Graph, ExportError> {
    let c = w.config;
    let name = if fixed { format!("layer{l}_step_fixed") } else { format!("layer{l}_step") };
    let mut g = Graph::new(&name);
    let token = g.input("token", DType::F32, vec![n(), Dim::N(c.token_dim(l))]);
    let pos = g.input("pos", DType::I64, vec![]);
    let cond = g.input("cond", DType::F32, vec![n(), Dim::N(c.width(l))]);
    let inv_temp = g.input("inv_temp", DType::F32, vec![n()]);
    let layer = Layer::load(w, &mut g, l)?;
    let cache = if fixed { Dim::N(c.tokens(l)) } else { Dim::sym("P") };
    let past: Vec<(V, V)> = (0..layer.depth())
        .map(|b| {
            let k = g.input(&format!("past_k{b}"), DType::F32, layer.cache_shape(cache.clone()));
            let v = g.input(&format!("past_v{b}"), DType::F32, layer.cache_shape(cache.clone()));
            (k, v)
        })
        .collect();
    let io = StepInputs { token, pos, cond, inv_temp: Some(inv_temp), past: &past };
    let (a, b, presents) = layer.step(&mut g, &io, if fixed { Cache::Fixed } else { Cache::Growing });
    g.output(a, "a");
    g.output(b, "b");
    for (i, (k, v)) in presents.into_iter().enumerate() {
        g.output(k, &format!("present_k{i}"));
        g.output(v, &format!("present_v{i}"));
    }
    Ok(finish(g))
}

/// `layer{l}_invert` and, guided, `layer{l}_invert_cfg` ('tarflow' guidance) or
/// `layer{l}_invert_cfg_starflow`: one fused inversion step, a loop body whose outputs are its
/// next run's state inputs, so that a layer's T - 1 steps run without the host (see
/// [`Layer::invert_step`]). Inputs: cond (N, C), or when guided both branches' cond (2, N, C)
/// (conditional first), inv_temp (2, N) and cfg_w (T,); then the state: seq (N, T, c), pos (int64
/// scalar), past_k{b} (N, H, d, T: keys transposed), past_v{b} (N, H, T, d), each with a
/// leading axis of 2 when guided (both branches' caches). Outputs: the next state, in order.
pub fn invert(w: &Weights, l: usize, guided: Option<GuidedStyle>) -> Result<Graph, ExportError> {
    let c = w.config;
    let name = match guided {
        None => format!("layer{l}_invert"),
        Some(GuidedStyle::Tarflow) => format!("layer{l}_invert_cfg"),
        Some(GuidedStyle::Starflow) => format!("layer{l}_invert_cfg_starflow"),
    };
    let mut g = Graph::new(&name);
    let mut cond_shape = vec![n(), Dim::N(c.width(l))];
    if guided.is_some() {
        cond_shape.insert(0, Dim::N(2));
    }
    let cond = g.input("cond", DType::F32, cond_shape);
    let guidance = guided.map(|style| GuidanceInputs {
        inv_temp: g.input("inv_temp", DType::F32, vec![Dim::N(2), n()]),
        weights: g.input("cfg_w", DType::F32, vec![Dim::N(c.tokens(l))]),
        style,
    });
    let seq = g.input("seq", DType::F32, vec![n(), Dim::N(c.tokens(l)), Dim::N(c.token_dim(l))]);
    let pos = g.input("pos", DType::I64, vec![]);
    let layer = Layer::load(w, &mut g, l)?;
    let (mut keys, mut values) = (layer.keys_transposed_shape(c.tokens(l)), layer.cache_shape(Dim::N(c.tokens(l))));
    if guided.is_some() {
        keys.insert(0, Dim::N(2));
        values.insert(0, Dim::N(2));
    }
    let past: Vec<(V, V)> = (0..layer.depth())
        .map(|b| {
            let k = g.input(&format!("past_k{b}"), DType::F32, keys.clone());
            let v = g.input(&format!("past_v{b}"), DType::F32, values.clone());
            (k, v)
        })
        .collect();
    let io = InvertInputs { seq, pos, cond, past: &past, guidance };
    let (seq, pos, presents) = layer.invert_step(&mut g, &io);
    g.output(seq, "seq_out");
    g.output(pos, "pos_out");
    for (i, (k, v)) in presents.into_iter().enumerate() {
        g.output(k, &format!("present_k{i}"));
        g.output(v, &format!("present_v{i}"));
    }
    Ok(finish(g))
}

/// (N, C, H, W) -> (N, T, C p p).
pub fn patchify(g: &mut Graph, x: V, c: &ModelConfig, p: usize) -> V {
    let gr = (c.img_size / p) as i64;
    let (ch, p) = (c.in_channels as i64, p as i64);
    let x = g.reshape(x, &[0, ch, gr, p, gr, p]);
    let x = g.transpose(x, vec![0, 2, 4, 1, 3, 5]);
    g.reshape(x, &[0, gr * gr, ch * p * p])
}

/// (N, T, C p p) -> (N, C, H, W).
pub fn unpatchify(g: &mut Graph, x: V, c: &ModelConfig, p: usize) -> V {
    let gr = (c.img_size / p) as i64;
    let (ch, p, s) = (c.in_channels as i64, p as i64, c.img_size as i64);
    let x = g.reshape(x, &[0, gr, gr, ch, p, p]);
    let x = g.transpose(x, vec![0, 3, 1, 4, 2, 5]);
    g.reshape(x, &[0, ch, s, s])
}

/// log p(x | t, y) of images `x` through every layer.
fn log_prob(g: &mut Graph, w: &Weights, x: V, t: V, y: Option<V>) -> Result<V, ExportError> {
    let c = w.config;
    let mut h = patchify(g, x, c, c.patch_size(0));
    if c.input_scale != 1.0 {
        h = g.scale(h, c.input_scale as f32);
    }
    let mut logdet: Option<V> = None;
    for l in 0..c.num_layers {
        if l > 0 && c.patch_size(l) != c.patch_size(l - 1) {
            let img = unpatchify(g, h, c, c.patch_size(l - 1));
            h = patchify(g, img, c, c.patch_size(l));
        }
        let layer = Layer::load(w, g, l)?;
        let cond = layer.cond(g, t, y);
        let (z, ld) = layer.forward(g, h, cond);
        logdet = Some(match logdet {
            Some(acc) => g.plus(acc, ld),
            None => ld,
        });
        h = z;
    }
    let d = c.data_dim() as f32;
    let sq = g.times(h, h);
    let ssum = g.sum(sq, &[1, 2]);
    let ssum = g.reshape(ssum, &[-1]);
    let a = g.scale(ssum, -0.5);
    let mut ld = logdet.expect("at least one layer");
    if c.input_scale != 1.0 {
        ld = g.shift(ld, c.input_scale.ln() as f32);
    }
    let b = g.scale(ld, d);
    let lp = g.plus(a, b);
    Ok(g.shift(lp, (-0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln()) as f32))
}

/// `score`: (x (N,C,H,W), t (N,), y (N,)) -> (score = grad_x log p (N,C,H,W), logp (N,)), the
/// whole model's forward and its reverse-mode gradient as explicit operators.
pub fn score(w: &Weights) -> Result<Graph, ExportError> {
    let c = w.config;
    let mut g = Graph::new("score");
    let s = c.img_size;
    let x = g.input("x", DType::F32, vec![n(), Dim::N(c.in_channels), Dim::N(s), Dim::N(s)]);
    let t = g.input("t", DType::F32, vec![n()]);
    let y = labels_input(&mut g, c);
    let logp = log_prob(&mut g, w, x, t, y)?;
    // d(sum_n logp_n)/dx: seed every sample's log p with 1.
    let one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[one, logp]);
    let grad = g.scoped("grad", |g| gradients(g, &[(logp, seed)], &[x]));
    let score = grad[0].expect("log p depends on x");
    g.output(score, "score");
    g.output(logp, "logp");
    Ok(finish(g))
}

/// `denoise_step`: one Euler step of phase 2 with the score computed inside, a loop body like
/// [`invert`]. Inputs: levels (N, K) (each image's noise levels, the last 0), y (N,), clip (2,)
/// (the bounds of the Tweedie estimate: [-1, 1], or infinite for none); then the state: x
/// (N, C, H, W) and step (int64 scalar). With t = levels[:, step] and t' = levels[:, step + 1]:
/// x0 = x + t^2 grad_x log p(x, t), clipped; x' = x - (x - x0) / t (t - t'). Outputs: x', step + 1.
pub fn denoise_step(w: &Weights) -> Result<Graph, ExportError> {
    let c = w.config;
    let mut g = Graph::new("denoise_step");
    let s = c.img_size;
    let levels = g.input("levels", DType::F32, vec![n(), Dim::sym("K")]);
    let y = labels_input(&mut g, c);
    let clip = g.input("clip", DType::F32, vec![Dim::N(2)]);
    let x = g.input("x", DType::F32, vec![n(), Dim::N(c.in_channels), Dim::N(s), Dim::N(s)]);
    let step = g.input("step", DType::I64, vec![]);
    let one = g.constant(None, crate::ir::ConstData::I64(vec![1]), &[]);
    let next = g.binary(crate::ops::Bin::Add, step, one);
    let t = g.gather(levels, step, 1);
    let t_next = g.gather(levels, next, 1);
    let logp = log_prob(&mut g, w, x, t, y)?;
    let seed_one = g.scalar(1.0);
    let seed = g.add(Op::Expand, &[seed_one, logp]);
    let grad = g.scoped("grad", |g| gradients(g, &[(logp, seed)], &[x]));
    let score = grad[0].expect("log p depends on x");
    let (x_next, step_out) = g.scoped("euler", |g| {
        let t4 = g.reshape(t, &[-1, 1, 1, 1]);
        let tt = g.times(t4, t4);
        let jump = g.times(tt, score);
        let mut x0 = g.plus(x, jump);
        let bound = |g: &mut Graph, k: i64| {
            let idx = g.constant(None, crate::ir::ConstData::I64(vec![k]), &[]);
            g.gather(clip, idx, 0)
        };
        let (lo, hi) = (bound(g, 0), bound(g, 1));
        let below = g.add(Op::Less, &[x0, lo]);
        x0 = g.add(Op::Where, &[below, lo, x0]);
        let above = g.add(Op::Less, &[hi, x0]);
        x0 = g.add(Op::Where, &[above, hi, x0]);
        let d = g.minus(x, x0);
        let vel = g.divide(d, t4);
        let dt = g.minus(t, t_next);
        let dt4 = g.reshape(dt, &[-1, 1, 1, 1]);
        let mv = g.times(vel, dt4);
        (g.minus(x, mv), next)
    });
    g.output(x_next, "x_out");
    g.output(step_out, "step_out");
    Ok(finish(g))
}

/// `layer{l}_vjp`: the vector-Jacobian product of one layer, recomputing its forward inside:
/// (x (N,T,c), t, y, g_z (N,T,c), g_logdet (N,)) -> g_x (N,T,c), the gradient of
/// <g_z, z> + <g_logdet, logdet> with respect to the layer input x. Chaining these from the last
/// layer down (seeded with g_z = -z and g_logdet = D) gives the score with the activations of one
/// layer alive at a time, so its peak memory does not grow with depth.
pub fn layer_vjp(w: &Weights, l: usize) -> Result<Graph, ExportError> {
    let c = w.config;
    let mut g = Graph::new(&format!("layer{l}_vjp"));
    let shape = vec![n(), Dim::N(c.tokens(l)), Dim::N(c.token_dim(l))];
    let x = g.input("x", DType::F32, shape.clone());
    let t = g.input("t", DType::F32, vec![n()]);
    let y = labels_input(&mut g, c);
    let gz = g.input("g_z", DType::F32, shape);
    let gld = g.input("g_logdet", DType::F32, vec![n()]);
    let layer = Layer::load(w, &mut g, l)?;
    let cond = layer.cond(&mut g, t, y);
    let (z, logdet) = layer.forward(&mut g, x, cond);
    let grad = g.scoped("grad", |g| gradients(g, &[(z, gz), (logdet, gld)], &[x]));
    let gx = grad[0].expect("the layer output depends on its input");
    g.output(gx, "g_x");
    Ok(finish(g))
}
