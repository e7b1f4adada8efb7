#!/usr/bin/env python3
"""What an exported graph asks of a GPU, counted from its shapes (no GPU needed).

    python3 benches/graph_cost.py GRAPH.onnx BATCH [--top K]

The graph's symbolic dims are set (N = BATCH, K = 11 noise levels, P = 0), ONNX shape inference
gives every value's shape, and each node that runs a kernel (all but Reshape, Shape, Squeeze,
Unsqueeze, Identity, and nodes of constants only, which engines fold at load) is counted with the bytes of its non-constant inputs and outputs, and each
MatMul with its floating-point operations. Printed: the totals, a rough time at 3 TB/s, 2.5 us per
kernel and 400 TFLOP/s (50 for IEEE fp32), and the heaviest ops by type and output shape.

The numbers are the exported graph's, before an engine fuses anything (ONNX Runtime fuses the
forward GELU's five nodes into one, a Transpose into the MatMul that reads it, ...), so they
overcount the same way for every variant of a graph: they compare exports, they do not predict
a GPU's time. For scale: the three rough times of the s64 score graph as exported before 2026-12-05 (fp16,
batch 16) add up to 24.8 ms, and ONNX Runtime CUDA measured 23.6 ms for it on an NVIDIA H200
(benches/results/graph_cost.md).
"""
import argparse
import collections
import signal

import numpy as np
import onnx
from onnx import shape_inference

FREE = {"Reshape", "Shape", "Squeeze", "Unsqueeze", "Identity"}
ELEMENT_BYTES = {1: 4, 10: 2, 7: 8, 9: 1, 6: 4, 11: 8}


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graph")
    ap.add_argument("batch", type=int)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()
    m = onnx.load(a.graph, load_external_data=False)
    for i in m.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = {"K": 11, "P": 0}.get(d.dim_param, a.batch)
    m = shape_inference.infer_shapes(m, data_prop=True)
    info = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        t = v.type.tensor_type
        info[v.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim])
    constants = {i.name for i in m.graph.initializer}

    def nbytes(name):
        if not name or name in constants or name not in info:
            return 0
        ty, dims = info[name]
        if any(d is None for d in dims):
            return 0
        return int(np.prod(dims) if dims else 1) * ELEMENT_BYTES.get(ty, 4)

    by_op = collections.defaultdict(lambda: [0, 0, 0.0])
    by_shape = collections.defaultdict(lambda: [0, 0])
    for n in m.graph.node:
        # Nodes of constants only (products of weights) are folded by the engines at load.
        if n.input and all(not x or x in constants for x in n.input):
            constants.update(n.output)
            continue
        if n.op_type in FREE:
            continue
        b = sum(nbytes(x) for x in list(n.input) + list(n.output))
        flops = 0.0
        if n.op_type == "MatMul" and n.input[0] in info and n.output[0] in info:
            k = info[n.input[0]][1][-1]
            out = info[n.output[0]][1]
            if k and all(out):
                flops = 2.0 * float(np.prod(out)) * k
        row = by_op[n.op_type]
        row[0] += 1
        row[1] += b
        row[2] += flops
        ty, dims = info.get(n.output[0], (0, None))
        key = (n.op_type, tuple(dims) if dims else None, "fp16" if ty == 10 else "fp32" if ty == 1 else str(ty))
        by_shape[key][0] += 1
        by_shape[key][1] += b
    kernels = sum(r[0] for r in by_op.values())
    total = sum(r[1] for r in by_op.values())
    flops = sum(r[2] for r in by_op.values())
    print(f"{a.graph}, batch {a.batch}: {kernels} kernels, {total / 1e9:.2f} GB moved, {flops / 1e12:.3f} TFLOP in MatMul")
    print(
        f"  at 3 TB/s {total / 3e12 * 1e3:.2f} ms; 2.5 us per kernel {kernels * 2.5e-3:.2f} ms; "
        f"MatMul at 400 TFLOP/s {flops / 4e14 * 1e3:.2f} ms (IEEE fp32 at 50: {flops / 5e13 * 1e3:.2f} ms)"
    )
    print("  by op:")
    for op, (c, b, f) in sorted(by_op.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"    {op:20s} {c:5d} nodes {b / 1e9:7.3f} GB" + (f" {f / 1e9:9.1f} GFLOP" if f else ""))
    print("  by op and output shape:")
    for (op, shape, ty), (c, b) in sorted(by_shape.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"    {op:14s} {str(shape):28s} {ty} {c:4d} nodes {b / 1e9:6.3f} GB")


if __name__ == "__main__":
    main()
