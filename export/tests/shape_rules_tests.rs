//! The IR's shape rules refuse inputs that do not fit their op, naming the node, as tract's do:
//! dtypes that disagree, a product's inner dimensions, broadcast conflicts, ranks and index
//! types; a graph without misfits checks clean.

use itarflow_export::ir::{ConstData, DType, Dim, Graph};
use itarflow_export::ops::Op;

fn input(g: &mut Graph, name: &str, dtype: DType, dims: &[usize]) -> itarflow_export::ir::V {
    g.input(name, dtype, dims.iter().map(|&d| Dim::N(d)).collect())
}

fn misfit(build: impl FnOnce(&mut Graph), expect: &[&str]) {
    let mut g = Graph::new("t");
    build(&mut g);
    let e = g.check().expect_err("a misfit goes unreported");
    for part in expect {
        assert!(e.contains(part), "{e:?} lacks {part:?}");
    }
}

#[test]
fn misfits_are_reported_with_the_node() {
    misfit(
        |g| {
            let (a, b) = (input(g, "a", DType::F32, &[2, 3]), input(g, "b", DType::F32, &[4, 5]));
            g.matmul(a, b);
        },
        &["MatMul", "inner dimensions", "[2, 3] @ [4, 5]"],
    );
    misfit(
        |g| {
            let (a, b) = (input(g, "a", DType::F32, &[3]), input(g, "b", DType::F32, &[4]));
            g.plus(a, b);
        },
        &["Add", "do not broadcast"],
    );
    misfit(
        |g| {
            let (a, b) = (input(g, "a", DType::F32, &[3]), input(g, "b", DType::F16, &[3]));
            g.times(a, b);
        },
        &["Mul", "float32 and float16"],
    );
    misfit(
        |g| {
            let (a, b) = (input(g, "a", DType::F32, &[2, 3]), input(g, "b", DType::F32, &[2, 3, 1]));
            g.concat(&[a, b], 0);
        },
        &["Concat"],
    );
    misfit(
        |g| {
            let (c, a) = (input(g, "c", DType::F32, &[3]), input(g, "a", DType::F32, &[3]));
            g.add(Op::Where, &[c, a, a]);
        },
        &["Where", "not bool"],
    );
    misfit(
        |g| {
            let a = input(g, "a", DType::F32, &[2, 3]);
            let i = g.constant(None, ConstData::F32(vec![0.0]), &[1]);
            g.gather(a, i, 0);
        },
        &["Gather", "int64"],
    );
    misfit(
        |g| {
            let a = input(g, "a", DType::F32, &[2, 3]);
            g.reshape(a, &[4, 2]);
        },
        &["Reshape", "6 values"],
    );
    misfit(
        |g| {
            let a = input(g, "a", DType::F32, &[2, 3]);
            g.slice(a, 1, 2, 5);
        },
        &["Slice", "[2, 5)"],
    );
}

#[test]
fn fitting_graphs_check_clean() {
    let mut g = Graph::new("t");
    let x = g.input("x", DType::F32, vec![Dim::sym("N"), Dim::N(3)]);
    let w = g.constant(Some("w"), ConstData::F32(vec![0.5; 12]), &[3, 4]);
    let b = g.constant(Some("b"), ConstData::F32(vec![0.1; 4]), &[4]);
    let y = g.linear(x, w, b);
    let y = g.reshape(y, &[0, 2, 2]);
    g.output(y, "y");
    assert_eq!(g.check(), Ok(()));
}
