#!/usr/bin/env python3
"""Reads a server's model configurations and repository index through Triton's own clients, over
REST and gRPC (`get_model_config`, `get_model_repository_index`; Triton's model configuration and
model repository extensions), tries to load a model, and prints one JSON line per protocol in a
common form: per model its batching, inputs, outputs, instance groups and parameters; the index;
the load's refusal.

    python3 tests/serve/triton_config.py HTTP_ADDR GRPC_ADDR MODEL...
"""
import json
import sys

import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException


def tensor(t, is_input):
    """One input or output (gRPC's JSON writes int64 as strings and leaves defaults out)."""
    out = {"name": t["name"], "data_type": t.get("data_type", "TYPE_INVALID"), "dims": [int(d) for d in t.get("dims", [])]}
    if is_input:
        out["optional"] = bool(t.get("optional", False))
    return out


def config(c):
    return {
        "name": c["name"],
        "platform": c.get("platform", ""),
        "backend": c.get("backend", ""),
        "max_batch_size": int(c.get("max_batch_size", 0)),
        "input": [tensor(t, True) for t in c.get("input", [])],
        "output": [tensor(t, False) for t in c.get("output", [])],
        "instance_group": [{"kind": g.get("kind", "KIND_AUTO"), "count": int(g.get("count", 0))} for g in c.get("instance_group", [])],
        "parameters": {k: v.get("string_value", "") for k, v in c.get("parameters", {}).items()},
    }


def index(models):
    return sorted(({"name": m["name"], "version": m.get("version", ""), "state": m.get("state", "")} for m in models), key=lambda m: m["name"])


def refusal(load):
    try:
        load()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return None


http_addr, grpc_addr, models = sys.argv[1], sys.argv[2], sys.argv[3:]
h = http_client.InferenceServerClient(http_addr)
print(json.dumps({"http": {
    "configs": {m: config(h.get_model_config(m)) for m in models},
    "index": index(h.get_model_repository_index()),
    "extensions": h.get_server_metadata()["extensions"],
    "load": refusal(lambda: h.load_model(models[0])),
}}))
g = grpc_client.InferenceServerClient(grpc_addr)
print(json.dumps({"grpc": {
    "configs": {m: config(g.get_model_config(m, as_json=True)["config"]) for m in models},
    "index": index(g.get_model_repository_index(as_json=True).get("models", [])),
    "extensions": g.get_server_metadata(as_json=True)["extensions"],
    "load": refusal(lambda: g.load_model(models[0])),
}}))
