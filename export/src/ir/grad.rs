//! Reverse-mode differentiation of a graph, written into the same graph.
//!
//! Given seed gradients for some values and the values to differentiate with respect to, walks
//! the nodes in reverse topological order and applies each op's adjoint rule, only along paths
//! that connect the two (weights and conditioning branches get no gradient nodes).

use std::collections::HashMap;

use super::{Graph, V};

/// Adds the gradient of sum_i <seed_i, value_i> with respect to each of `wrt`; returns, per
/// `wrt` value, its gradient (None when no seeded value depends on it).
pub fn gradients(g: &mut Graph, seeds: &[(V, V)], wrt: &[V]) -> Vec<Option<V>> {
    let n_values = g.values.len();
    let forward_nodes = g.nodes.len();
    // Values that depend on a `wrt` value.
    let mut depends = vec![false; n_values];
    for &w in wrt {
        depends[w.0] = true;
    }
    for node in &g.nodes {
        if node.inputs.iter().any(|i| depends[i.0]) {
            depends[node.output.0] = true;
        }
    }
    // Values that a seeded value depends on.
    let mut feeds = vec![false; n_values];
    for &(v, _) in seeds {
        feeds[v.0] = true;
    }
    for node in g.nodes.iter().rev() {
        if feeds[node.output.0] {
            for i in &node.inputs {
                feeds[i.0] = true;
            }
        }
    }
    let needed = |v: V| depends[v.0] && feeds[v.0];

    let mut grads: HashMap<V, V> = HashMap::new();
    for &(v, s) in seeds {
        accumulate(g, &mut grads, v, s);
    }
    for k in (0..forward_nodes).rev() {
        let node = g.nodes[k].clone();
        if !needed(node.output) {
            continue;
        }
        let Some(&gy) = grads.get(&node.output) else { continue };
        let wants: Vec<bool> = node.inputs.iter().map(|&i| needed(i)).collect();
        if !wants.iter().any(|&w| w) {
            continue;
        }
        let scope = node.name.rsplit_once('.').map(|(s, _)| s.to_string());
        let gx = match scope {
            Some(s) => g.scoped(&format!("{s}.grad"), |g| node.op.vjp(g, &node, gy, &wants)),
            None => g.scoped("grad", |g| node.op.vjp(g, &node, gy, &wants)),
        };
        for ((&input, want), gi) in node.inputs.iter().zip(&wants).zip(gx) {
            if let (true, Some(gi)) = (want, gi) {
                accumulate(g, &mut grads, input, gi);
            }
        }
    }
    wrt.iter().map(|w| grads.get(w).copied()).collect()
}

fn accumulate(g: &mut Graph, grads: &mut HashMap<V, V>, v: V, gv: V) {
    let total = match grads.get(&v) {
        Some(&prev) => g.plus(prev, gv),
        None => gv,
    };
    grads.insert(v, total);
}
