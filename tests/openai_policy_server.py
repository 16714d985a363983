"""An OpenAI-compatible completions server for tests, run as its own process: it serves a transformers causal LM
folder on the CPU the way vLLM and SGLang serve a policy for RL rollouts, and reloads weights from disk through
SGLang's endpoint.

    python -m tests.openai_policy_server --model runs/policy --port 8123 --log server.jsonl

- `POST /v1/completions`: `prompt` as token ids (or text), `max_tokens`, `temperature`, `top_p`, `top_k`,
  `seed`, `stop`; the stop string stays in the text (vLLM's `include_stop_str_in_output`, SGLang's
  `no_stop_trim`), `finish_reason` is "stop" (EOS or a stop string, then `stop_reason` names it) or "length".
- `POST /update_weights_from_disk {"model_path": ...}` (SGLang's API): load the model saved there.
- `GET /health`, `GET /v1/models`.

Every completion and reload is appended to the `--log` jsonl file (the reloads with a digest of the weights
loaded, `weights_digest`), so a test can tell what the server generated and which weights it served.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from pathlib import Path
from typing import Any


def weights_digest(model: Any) -> str:
    """sha256 over a model's parameters and buffers in name order (the same weights give the same digest)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def build_app(model_path: str, log_path: Path):
    import torch
    from fastapi import FastAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    app = FastAPI()
    lock = threading.Lock()  # one generation or reload at a time: a reload never meets a half-done generation
    state: dict[str, Any] = {}

    def record(entry: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def load(path: str) -> str:
        state["tokenizer"] = AutoTokenizer.from_pretrained(path)
        state["model"] = AutoModelForCausalLM.from_pretrained(path).eval()
        state["path"] = path
        return weights_digest(state["model"])

    record({"event": "start", "model_path": model_path, "digest": load(model_path)})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": state["path"], "object": "model"}]}

    @app.post("/update_weights_from_disk")
    def update_weights_from_disk(body: dict) -> dict:
        with lock:
            digest = load(body["model_path"])
        record({"event": "reload", "model_path": body["model_path"], "digest": digest})
        return {"success": True, "message": "Succeeded to update model weights."}

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:
        with lock:
            tokenizer, model = state["tokenizer"], state["model"]
            prompt = body["prompt"]
            ids = list(prompt) if isinstance(prompt, list) else tokenizer.encode(prompt)
            temperature = float(body.get("temperature", 1.0))
            kwargs: dict[str, Any] = {"max_new_tokens": int(body.get("max_tokens", 16)),
                                      "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
            if temperature > 0:
                torch.manual_seed(int(body.get("seed") or 0))
                kwargs.update(do_sample=True, temperature=temperature, top_p=float(body.get("top_p", 1.0)),
                              top_k=int(body.get("top_k", 0) or 0))
            else:
                kwargs.update(do_sample=False)
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
            tokens = out[0, len(ids):].tolist()
        eos = tokenizer.eos_token_id in tokens
        if eos:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(tokens, skip_special_tokens=bool(body.get("skip_special_tokens", True)))
        hits = sorted((text.index(s) + len(s), s) for s in body.get("stop") or [] if s in text)
        stop_reason = None
        if hits:  # the first stop string ends the text and stays in it
            end, stop_reason = hits[0]
            text = text[:end]
        finish = "stop" if hits or eos else "length"
        record({"event": "completion", "prompt": ids, "text": text, "finish_reason": finish})
        return {"id": "cmpl-test", "object": "text_completion", "model": state["path"],
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason}]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a transformers causal LM folder (with its tokenizer)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="jsonl file: one line per completion and reload")
    args = parser.parse_args()
    import torch
    import uvicorn

    torch.set_num_threads(1)
    uvicorn.run(build_app(args.model, Path(args.log)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
