"""Calls an `itarflow-rt serve` server with NVIDIA Triton's own Python client (tritonclient[http,grpc],
installed by scripts/setup.sh), over REST or gRPC, and checks what it gets back. Run by
tests/serve_tests.rs:

    python3 tests/serve/triton_client.py http|grpc URL NAME EXPECTED.npz

EXPECTED.npz holds what the `itarflow-rt` command line computed for the same inputs:
`sample_x` (B, C, H, W) from `itarflow-rt sample --seed 7 --class 3 --num B --cfg 1.5`,
`score_x`, `score_t`, `score_y` with `score` and `logp` from `itarflow-rt score`, and `denoise_x`,
`denoise_y` with `denoised` from `itarflow-rt denoise`. Exits non-zero on the first mismatch.
"""

import sys

import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

protocol, url, name, expected = sys.argv[1], sys.argv[2], sys.argv[3], np.load(sys.argv[4])
GRPC = protocol == "grpc"
api = grpc if GRPC else http
client = api.InferenceServerClient(url=url)
TOL = 1e-5


def tensor(name, array, datatype, binary=True):
    """An input; gRPC clients always send raw contents, REST ones JSON or binary as asked."""
    t = api.InferInput(name, list(array.shape), datatype)
    if GRPC:
        t.set_data_from_numpy(array)
    else:
        t.set_data_from_numpy(array, binary_data=binary)
    return t


def output(name, binary=True):
    return grpc.InferRequestedOutput(name) if GRPC else http.InferRequestedOutput(name, binary_data=binary)


def refused(call, words, code=None):
    """`call` raises the server's refusal carrying `words` (and, over gRPC, status `code`)."""
    try:
        call()
    except InferenceServerException as e:
        ok = all(w in str(e) for w in words) and (code is None or not GRPC or code in str(e.status()))
        check(ok, f"refused: {e}")
        return
    check(False, f"refused with {words}")


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def close(ours, want, what):
    err = float(np.max(np.abs(ours - want)) / max(float(np.max(np.abs(want))), 1e-30))
    check(ours.shape == want.shape and err < TOL, f"{what} (relative error {err:.2e}, shapes {ours.shape} / {want.shape})")


check(client.is_server_live(), "server live")
check(client.is_server_ready(), "server ready")
meta = client.get_server_metadata(as_json=True) if GRPC else client.get_server_metadata()
check(meta["name"] == "itarflow-rt", "server metadata")
if not GRPC:
    check("binary_tensor_data" in meta["extensions"], "server metadata lists the binary tensor data extension")
for model in (name, f"{name}-score", f"{name}-denoise"):
    check(client.is_model_ready(model), f"model {model} ready")
    m = client.get_model_metadata(model, as_json=True) if GRPC else client.get_model_metadata(model)
    check(m["name"] == model and m["inputs"] and m["outputs"], f"model {model} metadata")

# The sampler, seeded: the same images as `itarflow-rt sample --seed 7 --class 3 --num B --cfg 1.5`,
# with JSON tensors and with binary data both ways.
want = expected["sample_x"]
b = want.shape[0]
for binary in (False, True) if not GRPC else (True,):
    inputs = [
        tensor("class", np.full(b, 3, dtype=np.int64), "INT64", binary),
        tensor("seed", np.array([7], dtype=np.int64), "INT64", binary),
        tensor("cfg", np.array([1.5], dtype=np.float32), "FP32", binary),
    ]
    r = client.infer(name, inputs, outputs=[output("images", binary)])
    how = "raw contents" if GRPC else "binary" if binary else "JSON"
    close(r.as_numpy("images"), want, f"seeded samples equal `itarflow-rt sample` ({protocol}, {how} tensors)")

# The score model: as `itarflow-rt score`.
inputs = []
for key, dtype in (("score_x", "FP32"), ("score_t", "FP32"), ("score_y", "INT64")):
    a = expected[key] if key == "score_x" else expected[key].reshape(-1)
    inputs.append(tensor(key.split("_")[1], a, dtype))
r = client.infer(f"{name}-score", inputs, outputs=[output("score"), output("logp", binary=False)])
close(r.as_numpy("score"), expected["score"], "score equals `itarflow-rt score`")
close(r.as_numpy("logp"), expected["logp"], "log p equals `itarflow-rt score`")

# The denoising model: as `itarflow-rt denoise`, all images and the first three (a size the
# server may pad).
for n in (len(expected["denoise_x"]), 3):
    x = tensor("x", expected["denoise_x"][:n], "FP32")
    y = tensor("y", expected["denoise_y"][:n], "INT64")
    r = client.infer(f"{name}-denoise", [x, y])
    close(r.as_numpy("images"), expected["denoised"][:n], f"{n} denoised images equal `itarflow-rt denoise`")

# Bad requests are InferenceServerExceptions carrying the server's message (and gRPC's code).
refused(lambda: client.infer(name, [tensor("class", np.array([99], dtype=np.int64), "INT64")]), ["out of range"], "INVALID_ARGUMENT")
refused(lambda: client.infer(name, [tensor("class", np.array([[1]], dtype=np.int64), "INT64")]), ["shape [1, 1]"], "INVALID_ARGUMENT")
refused(lambda: client.infer(name, [tensor("class", np.array([1.0], dtype=np.float32), "FP32")]), ["datatype FP32"], "INVALID_ARGUMENT")
refused(lambda: client.infer("nope", [tensor("class", np.array([1], dtype=np.int64), "INT64")]), ["unknown model 'nope'"], "NOT_FOUND")
if GRPC:
    # Streamed inference (ModelStreamInfer): both requests answered on the stream, the seeded one
    # with the command line's images (matched by its id), the bad one with the server's message.
    import queue

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    seeded = [
        tensor("class", np.full(b, 3, dtype=np.int64), "INT64"),
        tensor("seed", np.array([7], dtype=np.int64), "INT64"),
        tensor("cfg", np.array([1.5], dtype=np.float32), "FP32"),
    ]
    client.async_stream_infer(name, seeded, request_id="seeded", outputs=[output("images")])
    client.async_stream_infer(name, [tensor("class", np.array([99], dtype=np.int64), "INT64")], request_id="bad")
    got = [answers.get(timeout=120) for _ in range(2)]
    client.stop_stream()
    results = [r for r, e in got if e is None]
    errors = [str(e) for r, e in got if e is not None]
    check(len(results) == 1 and results[0].get_response().id == "seeded", f"one streamed answer, its id ({len(results)} answers)")
    close(results[0].as_numpy("images"), want, "streamed seeded samples equal `itarflow-rt sample`")
    check(len(errors) == 1 and "out of range" in errors[0], f"a streamed bad request answered with the reason: {errors}")
    # Past the server's --max-body-mib (2 in the test): refused before decoding, naming the setting.
    big = np.zeros((700, 1, 28, 28), dtype=np.float32)
    refused(lambda: client.infer(f"{name}-denoise", [tensor("x", big, "FP32")]), ["--max-body-mib"], "RESOURCE_EXHAUSTED")
print("all checks passed")
