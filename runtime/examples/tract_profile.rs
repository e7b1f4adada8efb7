//! Per-node time of one ONNX graph on tract, by operator: where tract's time goes.
//!
//!     cargo run --release -p itarflow-rt --example tract_profile -- GRAPH.onnx BATCH [PAST] [RUNS]
//!
//! Inputs are random (x, t in (0, 1), labels 0); a symbol P (cached tokens) is set to PAST.
//! Environment: `BY_NODE=1` lists every node with its input and output shapes instead of totals
//! per operator; `SYMBOLIC_P=1` leaves P symbolic in the plan (as itarflow-rt does) and feeds
//! PAST cached tokens; `NO_REWRITE=1` skips itarflow-rt's load-time rewrites (tract's own attention and Softmax).
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimplePlan, SimpleState, eval};

fn main() -> TractResult<()> {
    // As the itarflow-rt binary runs: freed memory kept for the next run (see `allocator`), and
    // subnormals flushed to zero as in every tract run of the runtime (see `denormals`: tract's
    // exp kernel takes ~12x longer on inputs whose results underflow, masked scores among them).
    itarflow_rt::allocator::retain_freed_memory();
    let _flush = itarflow_rt::provider::denormals::FlushToZero::new();
    let args: Vec<String> = std::env::args().collect();
    let path = &args[1];
    let batch: i64 = args[2].parse()?;
    let past: i64 = args.get(3).map_or(Ok(0), |s| s.parse())?;
    let runs: usize = args.get(4).map_or(Ok(10), |s| s.parse())?;
    let model = tract_onnx::onnx().model_for_path(path)?.into_typed()?;
    let mut values = HashMap::new();
    values.insert(model.symbols.sym("N"), TDim::Val(batch));
    if std::env::var("SYMBOLIC_P").is_err() {
        values.insert(model.symbols.sym("P"), TDim::Val(past));
    }
    let mut model = model.set_symbols(&values)?;
    if std::env::var("NO_REWRITE").is_err() {
        let (rewritten, r) = itarflow_rt::provider::tract::rewrite_for_cpu(model)?;
        eprintln!("rewritten: {r:?}");
        model = rewritten;
    }
    if let Ok(pattern) = std::env::var("DUMP") {
        for node in model.nodes.iter().filter(|n| n.name.contains(&pattern)) {
            let ins: Vec<String> = node.inputs.iter().map(|i| format!("{}/{}", model.node(i.node).name, i.slot)).collect();
            let info = node.op.info().unwrap_or_default().join("; ");
            println!("#{} {} {} [{info}] <- {:?} : {:?}", node.id, node.name, node.op.name(), ins, node.outputs[0].fact.shape);
        }
    }
    let model = model.into_optimized()?;
    let inputs: TVec<TValue> = model
        .input_outlets()?
        .iter()
        .map(|o| {
            let fact = model.outlet_fact(*o)?;
            let shape: Vec<usize> = fact
                .shape
                .iter()
                .map(|d| d.eval(&SymbolValues::default().with(&model.symbols.sym("P"), past)).to_i64().unwrap() as usize)
                .collect();
            let n: usize = shape.iter().product();
            let t = match fact.datum_type {
                DatumType::I64 => Tensor::from_shape(&shape, &vec![0i64; n])?,
                _ => Tensor::from_shape(&shape, &(0..n).map(|i| ((i * 7919 % 1000) as f32) / 1000.0).collect::<Vec<_>>())?,
            };
            Ok(t.into_tvalue())
        })
        .collect::<TractResult<_>>()?;
    let plan = SimplePlan::new(model)?;
    let mut state = SimpleState::new(&plan)?;
    let mut by_op: HashMap<String, (Duration, usize)> = HashMap::new();
    let mut total = Duration::ZERO;
    for r in 0..runs + 1 {
        let start = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let shapes: Vec<Vec<usize>> = input.iter().map(|t| t.shape().to_vec()).collect();
            let t = Instant::now();
            let out = eval(ctx, st, node, input);
            if r > 0 {
                let key = if std::env::var("BY_NODE").is_ok() {
                    let outs = out.as_ref().map(|o| o.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()).unwrap_or_default();
                    format!("{} {} {:?} -> {:?}", node.op().name(), node.name, shapes, outs)
                } else {
                    node.op().name().to_string()
                };
                let e = by_op.entry(key).or_default();
                e.0 += t.elapsed();
                e.1 += 1;
            }
            out
        })?;
        if r > 0 {
            total += start.elapsed();
        }
    }
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.0));
    println!("{path}: {:.2} ms per run", total.as_secs_f64() * 1e3 / runs as f64);
    for (op, (d, n)) in rows.iter().take(if std::env::var("BY_NODE").is_ok() { usize::MAX } else { 25 }) {
        println!("{:>9.3} ms {:>5} nodes  {op}", d.as_secs_f64() * 1e3 / runs as f64, n / runs);
    }
    Ok(())
}
