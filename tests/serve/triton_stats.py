#!/usr/bin/env python3
"""Reads a server's per-model statistics through Triton's own clients, over REST and gRPC
(`get_inference_statistics`, Triton's statistics extension), and prints them as one JSON line per
protocol in a common form: per model, the counts (requests, images, runs, runs by batch size) and
whether every duration that was counted also took time.

    python3 tests/serve/triton_stats.py HTTP_ADDR GRPC_ADDR
"""
import json
import sys

import tritonclient.grpc as grpc_client
import tritonclient.http as http_client

FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def common(stats):
    """Both protocols' answers in one form (gRPC's JSON writes uint64 as strings and leaves zeros out)."""
    out = {}
    for m in stats["model_stats"]:
        inf = m.get("inference_stats", {})
        counts = {f: int(inf.get(f, {}).get("count", 0)) for f in FIELDS}
        timed = all(int(inf.get(f, {}).get("ns", 0)) > 0 for f in FIELDS if counts[f] > 0)
        batches = {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in m.get("batch_stats", [])}
        out[m["name"]] = {
            "version": m.get("version", ""),
            "inference_count": int(m.get("inference_count", 0)),
            "execution_count": int(m.get("execution_count", 0)),
            "last_inference": int(m.get("last_inference", 0)),
            "counts": counts,
            "timed": timed,
            "batches": {str(k): v for k, v in sorted(batches.items())},
        }
    return out


http_addr, grpc_addr = sys.argv[1], sys.argv[2]
print(json.dumps({"http": common(http_client.InferenceServerClient(http_addr).get_inference_statistics())}))
print(json.dumps({"grpc": common(grpc_client.InferenceServerClient(grpc_addr).get_inference_statistics(as_json=True))}))
