//! One flow layer written against the IR builder: its conditioning, its transformer over a full
//! sequence or one token with a KV cache, and its affine transform. Mirrors the Burn model
//! (src/model/flow_layer.rs) and the reference's MetaBlock.

use crate::ExportError;
use crate::ir::{ConstData, DType, Dim, Graph, V};
use crate::model::weights::Weights;
use crate::ops::{Op, Un};

/// The inputs of one inversion step: the token (N, c) at permuted position `pos` (int64 scalar),
/// the layer's conditioning (N, C), the per-row inverse attention temperature (N,) (None: 1)
/// and the per-block past keys and values.
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    pub token: V,
    pub pos: V,
    pub cond: V,
    pub inv_temp: Option<V>,
    pub past: &'a [(V, V)],
}

/// The KV cache of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Keys and values (N, H, P, d) grow by the token (Concat).
    Growing,
    /// Keys and values (N, H, T, d), the token's written at `pos` (ScatterElements), the slots
    /// after it masked.
    Fixed,
    /// As `Fixed`, the keys stored transposed, (N, H, d, T): the scores q K^T need no transpose
    /// of the whole cache each step (the loop graphs, whose caches only they read); the scatter
    /// indices made once for all blocks, the writes meant to run in place (past and present
    /// bound to one buffer).
    FixedKeysTransposed,
}

/// The loop inputs of one fused inversion step (fixed-length cache, keys transposed, the token
/// update inside): the layer's tokens `seq` (N, T, c) in permuted order (positions up to `pos`
/// inverted, the rest still the prior's values), `pos` (int64 scalar), the conditioning (N, C),
/// the per-block past keys and values, and for a guided layer the guidance inputs.
#[derive(Clone, Copy)]
pub struct InvertInputs<'a> {
    pub seq: V,
    pub pos: V,
    pub cond: V,
    /// Keys (N, H, d, T) and values (N, H, T, d) per block; with a leading axis of 2 on a
    /// guided layer (conditional rows, then unconditional).
    pub past: &'a [(V, V)],
    pub guidance: Option<GuidanceInputs>,
}

/// Guidance of a fused inversion step: the N images run twice, conditional rows then
/// unconditional ones (shapes keep the factor 2 as an axis of its own, so that every dim is a
/// multiple of the one batch symbol). The step's `cond` is then both branches' (2, N, C).
#[derive(Clone, Copy)]
pub struct GuidanceInputs {
    /// Both branches' inverse attention temperatures (2, N) (the conditional rows' 1).
    pub inv_temp: V,
    /// w at each inversion step (T,): step `pos` uses entry `pos` (constant, or annealed).
    pub weights: V,
    pub style: GuidedStyle,
}

/// How a guided step combines the branches (a graph per style; see `itarflow_base::sampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidedStyle {
    Tarflow,
    Starflow,
}

/// Weights of one transformer block as graph constants.
struct Block {
    ln1: (V, V),
    qkv: (V, V),
    proj: (V, V),
    ln2: (V, V),
    fc1: (V, V),
    fc2: (V, V),
}

/// A flow layer's constants in one graph, ready to be applied.
pub struct Layer {
    pub index: usize,
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
    pub token_dim: usize,
    pub flip: bool,
    pub affine: bool,
    /// Position embeddings in the layer's permuted order, (T, C).
    pos: V,
    proj_in: (V, V),
    proj_out: (V, V),
    blocks: Vec<Block>,
    time: ((V, V), (V, V)),
    /// (K + 1, C): the class embeddings and, last, their mean (the unconditional row).
    classes: Option<(V, usize)>,
}

const LN_EPS: f32 = 1e-5;
/// Score of the masked slots of a fixed KV cache: finite in fp16, and exp(-30000) = 0 in fp32.
const MASKED_SCORE: f32 = -30000.0;

fn block(w: &Weights, g: &mut Graph, name: &str, width: usize) -> Result<Block, ExportError> {
    let e = width * w.config.expansion;
    Ok(Block {
        ln1: w.norm(g, &format!("{name}.attention.norm"), "attn.norm", width)?,
        qkv: w.linear(g, &format!("{name}.attention.qkv"), "attn.qkv", width, 3 * width)?,
        proj: w.linear(g, &format!("{name}.attention.proj"), "attn.proj", width, width)?,
        ln2: w.norm(g, &format!("{name}.mlp.norm"), "mlp.norm", width)?,
        fc1: w.linear(g, &format!("{name}.mlp.main.0"), "mlp.fc1", width, e)?,
        fc2: w.linear(g, &format!("{name}.mlp.main.2"), "mlp.fc2", e, width)?,
    })
}

/// The 'starflow' classifier-free guidance of the (scale, shift) pairs of the conditional and
/// unconditional branches with weight `w` (see `itarflow_base::sampling`): r = min(s_c / s_u,
/// 1)^2, s = s_c / sqrt(1 + w - w r), b = ((1 + w) b_c - w r b_u) / (1 + w - w r). (The
/// 'tarflow' style is linear in the pair: [`Layer::invert_step`] combines the updated tokens.)
fn combine_starflow(g: &mut Graph, w: V, (sc, bc): (V, V), (su, bu): (V, V)) -> (V, V) {
    let ratio = g.divide(sc, su);
    let one = g.scalar(1.0);
    let above = g.add(Op::Less, &[one, ratio]);
    let ratio = g.add(Op::Where, &[above, one, ratio]);
    let r = g.times(ratio, ratio);
    let one_w = g.plus(one, w);
    let wr = g.times(w, r);
    let den = g.minus(one_w, wr);
    let root = g.unary(Un::Sqrt, den);
    let cb = g.times(one_w, bc);
    let ub = g.times(wr, bu);
    let num = g.minus(cb, ub);
    (g.divide(sc, root), g.divide(num, den))
}

impl Layer {
    /// Loads layer `l`'s weights into `g` as named constants (`layer{l}.*`).
    pub fn load(w: &Weights, g: &mut Graph, l: usize) -> Result<Self, ExportError> {
        let c = w.config;
        let (width, tokens, token_dim) = (c.width(l), c.tokens(l), c.token_dim(l));
        let p = format!("blocks.{l}");
        g.scoped(&format!("layer{l}"), |g| {
            let flip = l % 2 == 1;
            let pos_data = w.get(&format!("{p}.pos_embed"), &[tokens, width])?;
            let mut pos_perm = Vec::with_capacity(pos_data.len());
            for n in 0..tokens {
                let src = if flip { tokens - 1 - n } else { n };
                pos_perm.extend_from_slice(&pos_data[src * width..(src + 1) * width]);
            }
            let pos = g.weight("pos_embed", &[tokens, width], pos_perm);
            let classes = if c.num_classes > 0 {
                let k = c.num_classes;
                let table = w.get(&format!("{p}.class_embed"), &[k, 1, width])?;
                let mut data = table.to_vec();
                for j in 0..width {
                    data.push((0..k).map(|i| table[i * width + j] as f64).sum::<f64>() as f32 / k as f32);
                }
                Some((g.weight("class_embed", &[k + 1, width], data), k))
            } else {
                None
            };
            let out_dim = if c.affine { 2 * token_dim } else { token_dim };
            let mut blocks = Vec::new();
            for k in 0..c.shared_backbone_blocks {
                blocks.push(g.scoped(&format!("shared{k}"), |g| block(w, g, &format!("shared_backbone.{k}"), width))?);
            }
            for k in 0..c.own_blocks(l) {
                blocks.push(g.scoped(&format!("block{k}"), |g| block(w, g, &format!("{p}.head_blocks.{k}"), width))?);
            }
            Ok(Self {
                index: l,
                width,
                heads: c.heads(l),
                head_dim: c.head_dim,
                tokens,
                token_dim,
                flip,
                affine: c.affine,
                pos,
                proj_in: w.linear(g, &format!("{p}.proj_in"), "proj_in", token_dim, width)?,
                proj_out: w.linear(g, &format!("{p}.proj_out"), "proj_out", width, out_dim)?,
                blocks,
                time: (
                    w.linear(g, &format!("{p}.time_embed.mlp.0"), "time.fc1", width, 4 * width)?,
                    w.linear(g, &format!("{p}.time_embed.mlp.2"), "time.fc2", 4 * width, width)?,
                ),
                classes,
            })
        })
    }

    fn scope(&self) -> String {
        format!("layer{}", self.index)
    }

    /// Time plus class embedding (N, C) for noise levels `t` (N,) and labels `y` (N,) int64
    /// (negative = unconditional).
    pub fn cond(&self, g: &mut Graph, t: V, y: Option<V>) -> V {
        g.scoped(&self.scope(), |g| {
            g.scoped("cond", |g| {
                let half = self.width / 2;
                let log_t = g.unary(Un::Log, t);
                let s = g.reshape(log_t, &[-1, 1]);
                let freqs: Vec<f32> = (0..half).map(|k| (-(10000f64.ln()) * k as f64 / half as f64).exp() as f32).collect();
                let f = g.constant(None, ConstData::F32(freqs), &[1, half]);
                let args = g.times(s, f);
                let sin = g.unary(Un::Sin, args);
                let cos = g.unary(Un::Cos, args);
                let mut e = g.concat(&[sin, cos], 1);
                if self.width % 2 == 1 {
                    e = g.pad(e, 1, 0, 1);
                }
                let ((w1, b1), (w2, b2)) = self.time;
                let h = g.linear(e, w1, b1);
                let h = g.gelu(h);
                let mut cond = g.linear(h, w2, b2);
                if let (Some((table, k)), Some(y)) = (self.classes, y) {
                    let zero = g.constant(None, ConstData::I64(vec![0]), &[]);
                    let uncond = g.constant(None, ConstData::I64(vec![k as i64]), &[]);
                    let neg = g.add(Op::Less, &[y, zero]);
                    let idx = g.add(Op::Where, &[neg, uncond, y]);
                    let emb = g.gather(table, idx, 0);
                    cond = g.plus(cond, emb);
                }
                cond
            })
        })
    }

    fn attention_full(&self, g: &mut Graph, h: V, b: &Block, mask: V) -> V {
        let (q, k, v) = self.qkv(g, h, b);
        let q = self.scale_queries(g, q, None, false);
        let kt = g.transpose_last(k);
        let out = g.attention(q, kt, v, mask);
        self.merge(g, out, b)
    }

    /// LayerNorm then a linear layer. (Folding the LayerNorm's affine into the layer, so that
    /// the adjoint could read xhat from the LayerNorm's output, was tried: two passes fewer per
    /// LayerNorm in the score graphs, but tract's plan of the demo's score graph at batch 16 then
    /// peaked at 125 MB instead of 107 MB.)
    fn norm_linear(&self, g: &mut Graph, h: V, (scale, beta): (V, V), (w, b): (V, V)) -> V {
        let x = g.layer_norm(h, scale, beta, LN_EPS);
        g.linear(x, w, b)
    }

    /// q, k, v of shape (N, H, T, d) from the block's input h; q unscaled (see
    /// [`Layer::scale_queries`]).
    fn qkv(&self, g: &mut Graph, h: V, b: &Block) -> (V, V, V) {
        let qkv = self.norm_linear(g, h, b.ln1, b.qkv);
        let (h, d) = (self.heads as i64, self.head_dim as i64);
        let qkv = g.reshape(qkv, &[0, 0, 3 * h, d]);
        let qkv = g.transpose(qkv, vec![0, 2, 1, 3]);
        let hh = self.heads;
        let q = g.slice(qkv, 1, 0, hh);
        let k = g.slice(qkv, 1, hh, 2 * hh);
        let v = g.slice(qkv, 1, 2 * hh, 3 * hh);
        (q, k, v)
    }

    /// q d^-1/2, times a per-row inverse temperature if given. With `temperature_first` the
    /// constant product comes last, right before the scores' product, where ONNX Runtime folds
    /// it into the matrix product: one kernel fewer per block, for the loop graphs (GPUs). The
    /// step graphs (the CPU's) keep the constant first: ONNX Runtime's CPU step of the demo took
    /// 6% longer on one thread with the product folded (0.665 against 0.632 ms).
    fn scale_queries(&self, g: &mut Graph, q: V, inv_temp: Option<V>, temperature_first: bool) -> V {
        let c = (self.head_dim as f32).powf(-0.5);
        match inv_temp {
            Some(it) if temperature_first => {
                let q = g.times(q, it);
                g.scale(q, c)
            }
            Some(it) => {
                let q = g.scale(q, c);
                g.times(q, it)
            }
            None => g.scale(q, c),
        }
    }

    fn merge(&self, g: &mut Graph, out: V, b: &Block) -> V {
        let out = g.transpose(out, vec![0, 2, 1, 3]);
        let out = g.reshape(out, &[0, 0, self.width as i64]);
        let (w, bias) = b.proj;
        g.linear(out, w, bias)
    }

    fn mlp(&self, g: &mut Graph, h: V, b: &Block) -> V {
        let x = self.norm_linear(g, h, b.ln2, b.fc1);
        let x = g.gelu(x);
        let (w2, b2) = b.fc2;
        g.linear(x, w2, b2)
    }

    /// Splits the network output (.., c or 2c) along `axis` into (a, b); a = 0 when shift-only.
    fn split(&self, g: &mut Graph, o: V, axis: usize) -> (V, V) {
        let c = self.token_dim;
        if self.affine {
            (g.slice(o, axis, 0, c), g.slice(o, axis, c, 2 * c))
        } else {
            let zero = g.scalar(0.0);
            (g.add(Op::Expand, &[zero, o]), o)
        }
    }

    /// Forward (data -> noise) of tokens `x` (N, T, c) in data order: the output in data order
    /// and the logdet (N,) = -mean(a).
    pub fn forward(&self, g: &mut Graph, x: V, cond: V) -> (V, V) {
        g.scoped(&self.scope(), |g| {
            let u = if self.flip { g.flip(x, 1) } else { x };
            // Token n's (a, b) come from the transformer's output at n - 1, so its output at the
            // last token is never used, and causal attention keeps the last token from every
            // other: the transformer runs on the first T - 1 tokens (1/T of the work saved).
            let t = self.tokens.saturating_sub(1).max(1);
            let (v, pos) = if t < self.tokens { (g.slice(u, 1, 0, t), g.slice(self.pos, 0, 0, t)) } else { (u, self.pos) };
            // The bias joins the position embeddings (a sum of constants, folded at load).
            let (w, b) = self.proj_in;
            let h = g.matmul(v, w);
            let pos = g.plus(pos, b);
            let h = g.plus(h, pos);
            let c = g.reshape(cond, &[0, 1, self.width as i64]);
            let mut h = g.plus(h, c);
            let mask: Vec<f32> = (0..t * t).map(|n| if n % t > n / t { f32::NEG_INFINITY } else { 0.0 }).collect();
            let mask = g.constant(Some("causal_mask"), ConstData::F32(mask), &[t, t]);
            for (k, blk) in self.blocks.iter().enumerate() {
                h = g.scoped(&format!("b{k}"), |g| {
                    let a = self.attention_full(g, h, blk, mask);
                    let h = g.plus(h, a);
                    let m = self.mlp(g, h, blk);
                    g.plus(h, m)
                });
            }
            let (w, bias) = self.proj_out;
            let o = g.linear(h, w, bias);
            // Shift right by one token: token n uses the output at n - 1, token 0 zeros.
            let o = if t < self.tokens { o } else { g.slice(o, 1, 0, t - 1) };
            let o = g.pad(o, 1, 1, 0);
            let (a, shift) = self.split(g, o, 2);
            let d = g.minus(u, shift);
            let na = g.unary(Un::Neg, a);
            let s = g.unary(Un::Exp, na);
            let z = g.times(d, s);
            let z = if self.flip { g.flip(z, 1) } else { z };
            let m = g.mean(a, &[1, 2]);
            let m = g.reshape(m, &[-1]);
            let logdet = g.unary(Un::Neg, m);
            (z, logdet)
        })
    }

    /// One inversion step (see [`StepInputs`]). Returns (a, b) of the next token, each (N, c),
    /// and the per-block presents.
    ///
    /// Growing cache: past (N, H, P, d) with P = pos, presents (N, H, P + 1, d) by Concat. Fixed
    /// caches: past and presents (N, H, T, d) (keys (N, H, d, T) when transposed); the new key and
    /// value are written at `pos` by ScatterElements and attention masks the slots after `pos`,
    /// so every shape but the batch is static (what TensorRT engines want).
    pub fn step(&self, g: &mut Graph, io: &StepInputs, cache: Cache) -> (V, V, Vec<(V, V)>) {
        let StepInputs { token, pos, cond, inv_temp, past } = *io;
        let fixed = cache != Cache::Growing;
        g.scoped(&self.scope(), |g| {
            let x = g.reshape(token, &[0, 1, self.token_dim as i64]);
            // The bias joins the position embeddings (folded at load): one Add fewer per step.
            let (w, b) = self.proj_in;
            let h = g.matmul(x, w);
            let table = g.plus(self.pos, b);
            let pe = g.gather(table, pos, 0);
            let h = g.plus(h, pe);
            let c = g.reshape(cond, &[0, 1, self.width as i64]);
            let mut h = g.plus(h, c);
            let it = inv_temp.map(|t| g.reshape(t, &[-1, 1, 1, 1]));
            // Fixed cache: slots after pos get a large negative score (exp underflows to 0), row
            // pos of a constant table (one Gather per step, not a comparison and a Where).
            let later_mask = fixed.then(|| {
                let t = self.tokens;
                let rows: Vec<f32> = (0..t * t).map(|n| if n % t > n / t { MASKED_SCORE } else { 0.0 }).collect();
                let table = g.constant(None, ConstData::F32(rows), &[t, t]);
                g.gather(table, pos, 0)
            });
            // The loop graphs' cache writes: ScatterElements at pos, whose indices (pos expanded to
            // the new key's and value's shapes, the same in every block) are made once. The
            // runtime binds each past and present to the same buffer, so the write is in place:
            // ONNX Runtime's ScatterElements copies its data input only when the output is
            // another buffer.
            let mut slot_indices: Option<(V, V)> = None;
            let mut presents = Vec::new();
            for (k, blk) in self.blocks.iter().enumerate() {
                let (pk, pv) = past[k];
                h = g.scoped(&format!("b{k}"), |g| {
                    let (q, kk, vv) = self.qkv(g, h, blk);
                    let q = self.scale_queries(g, q, it, cache == Cache::FixedKeysTransposed);
                    // The presents, then the keys (transposed) and values the attention reads.
                    let (keys, vals, kt, vt) = match cache {
                        Cache::Growing => {
                            let (keys, vals) = (g.concat(&[pk, kk], 2), g.concat(&[pv, vv], 2));
                            (keys, vals, g.transpose_last(keys), vals)
                        }
                        Cache::Fixed => {
                            let p4 = g.reshape(pos, &[1, 1, 1, 1]);
                            let idx = g.add(Op::Expand, &[p4, kk]);
                            let (keys, vals) = (g.scatter_elements(pk, idx, kk, 2), g.scatter_elements(pv, idx, vv, 2));
                            (keys, vals, g.transpose_last(keys), vals)
                        }
                        Cache::FixedKeysTransposed => {
                            // A guided loop's caches are (2, N, H, ., .), both branches: the
                            // write happens on them as they are (graph input to graph output, one
                            // buffer: in place) and the attention reads (2N, H, ., .) views.
                            let kkt = g.transpose_last(kk);
                            let rank = g.rank(pk);
                            let (hh, d, t) = (self.heads as i64, self.head_dim as i64, self.tokens as i64);
                            let (kw, vw) =
                                if rank == 5 { (g.reshape(kkt, &[2, -1, hh, d, 1]), g.reshape(vv, &[2, -1, hh, 1, d])) } else { (kkt, vv) };
                            let (idx_k, idx_v) = *slot_indices.get_or_insert_with(|| {
                                let p = g.reshape(pos, &vec![1; rank]);
                                (g.add(Op::Expand, &[p, kw]), g.add(Op::Expand, &[p, vw]))
                            });
                            let vals = g.scatter_elements(pv, idx_v, vw, rank - 2);
                            let keys = g.scatter_elements(pk, idx_k, kw, rank - 1);
                            if rank == 5 {
                                (keys, vals, g.reshape(keys, &[-1, hh, d, t]), g.reshape(vals, &[-1, hh, t, d]))
                            } else {
                                (keys, vals, keys, vals)
                            }
                        }
                    };
                    presents.push((keys, vals));
                    let mut scores = g.matmul(q, kt);
                    if let Some(m) = later_mask {
                        scores = g.plus(scores, m);
                    }
                    let attn = g.softmax(scores, 3);
                    let out = g.matmul(attn, vt);
                    let a = self.merge(g, out, blk);
                    let h = g.plus(h, a);
                    let m = self.mlp(g, h, blk);
                    g.plus(h, m)
                });
            }
            let (w, bias) = self.proj_out;
            let o = g.linear(h, w, bias);
            let out_dim = if self.affine { 2 * self.token_dim } else { self.token_dim };
            let o = g.reshape(o, &[0, out_dim as i64]);
            let (a, b) = self.split(g, o, 1);
            (a, b, presents)
        })
    }

    /// One fused inversion step (see [`InvertInputs`]): the transformer on token `pos` with the
    /// fixed-length cache gives (a, b) of token `pos` + 1, whose prior value z becomes
    /// u = z exp(a) + b (on a guided layer, with the guided combination of both branches'
    /// (exp(a), b)), written into the sequence at `pos` + 1. Returns the new sequence, `pos` + 1
    /// and the presents, shaped as the pasts: the next step's loop inputs.
    pub fn invert_step(&self, g: &mut Graph, io: &InvertInputs) -> (V, V, Vec<(V, V)>) {
        let c = self.token_dim as i64;
        let token = g.gather(io.seq, io.pos, 1);
        let t = self.tokens as i64;
        let step = |g: &mut Graph, token: V, cond: V, inv_temp: Option<V>, past: &[(V, V)]| {
            self.step(g, &StepInputs { token, pos: io.pos, cond, inv_temp, past }, Cache::FixedKeysTransposed)
        };
        let (a, b, presents) = match io.guidance {
            None => step(g, token, io.cond, None, io.past),
            Some(gi) => {
                // 2N rows: the conditional branch, then the unconditional one. Both branches'
                // conditioning and temperatures come stacked (the runtime stacks them once per
                // layer, not the graph at every step).
                let tokens = g.concat(&[token, token], 0);
                let cond = g.reshape(io.cond, &[-1, self.width as i64]);
                let inv_temp = g.reshape(gi.inv_temp, &[-1]);
                // The caches stay (2, N, H, ., .) (see `Cache::FixedKeysTransposed`).
                step(g, tokens, cond, Some(inv_temp), io.past)
            }
        };
        g.scoped(&self.scope(), |g| {
            g.scoped("update", |g| {
                let one = g.constant(None, ConstData::I64(vec![1]), &[]);
                let next = g.binary(crate::ops::Bin::Add, io.pos, one);
                let z = g.gather(io.seq, next, 1);
                // (2N, c) -> (2, N, c): the conditional half, then the unconditional one.
                let half = |g: &mut Graph, v: V, k: i64| {
                    let two = g.reshape(v, &[2, -1, c]);
                    let idx = g.constant(None, ConstData::I64(vec![k]), &[]);
                    g.gather(two, idx, 0)
                };
                let u = match io.guidance {
                    None => {
                        let s = g.unary(Un::Exp, a);
                        let zs = g.times(z, s);
                        g.plus(zs, b)
                    }
                    Some(gi) if gi.style == GuidedStyle::Tarflow => {
                        // The 'tarflow' combination is linear in (exp(a), b), so it is that of
                        // both branches' updated tokens u_k = z exp(a_k) + b_k: u = u_c + w (u_c
                        // - u_u), the update computed once over both branches (13 kernels where
                        // combining scales and shifts apart took 18).
                        let s = g.unary(Un::Exp, a);
                        let s = g.reshape(s, &[2, -1, c]);
                        let b = g.reshape(b, &[2, -1, c]);
                        let zs = g.times(z, s);
                        let both = g.plus(zs, b);
                        let branch = |g: &mut Graph, k: i64| {
                            let idx = g.constant(None, ConstData::I64(vec![k]), &[]);
                            g.gather(both, idx, 0)
                        };
                        let (uc, uu) = (branch(g, 0), branch(g, 1));
                        let w = g.gather(gi.weights, io.pos, 0);
                        let du = g.minus(uc, uu);
                        let wdu = g.times(w, du);
                        g.plus(uc, wdu)
                    }
                    Some(gi) => {
                        let (ac, au, bc, bu) = (half(g, a, 0), half(g, a, 1), half(g, b, 0), half(g, b, 1));
                        let sc = g.unary(Un::Exp, ac);
                        let su = g.unary(Un::Exp, au);
                        let w = g.gather(gi.weights, io.pos, 0);
                        let (s, shift) = combine_starflow(g, w, (sc, bc), (su, bu));
                        let zs = g.times(z, s);
                        g.plus(zs, shift)
                    }
                };
                let u = g.reshape(u, &[0, 1, c]);
                let slots = g.ints((0..t).collect());
                let at = g.add(Op::Equal, &[slots, next]);
                let at = g.reshape(at, &[1, t, 1]);
                let seq = g.add(Op::Where, &[at, u, io.seq]);
                (seq, next, presents)
            })
        })
    }

    /// Shape of a KV cache with `past` tokens: (N, H, P, d).
    pub fn cache_shape(&self, past: Dim) -> Vec<Dim> {
        vec![Dim::sym("N"), Dim::N(self.heads), past, Dim::N(self.head_dim)]
    }

    /// Shape of a transposed key cache of `tokens` slots: (N, H, d, T).
    pub fn keys_transposed_shape(&self, tokens: usize) -> Vec<Dim> {
        vec![Dim::sym("N"), Dim::N(self.heads), Dim::N(self.head_dim), Dim::N(tokens)]
    }

    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }
}
