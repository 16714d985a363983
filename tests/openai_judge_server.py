"""An OpenAI-compatible chat server for tests whose "model" is a scripted judge, run as its own process.

    python -m tests.openai_judge_server --port 8124 --log judge.jsonl

`POST /v1/chat/completions` reads the last user message and answers as embedkit's judge prompts expect:
- AC-GenRM's criteria prompt ("Write the criteria"): `<criteria>how often the text says good</criteria>`;
- ReflectRM's reflection prompt ("checking the work of several judges"): `<choice>1</choice>`;
- any pairwise prompt with "Response A: …" and "Response B: …": the response that says "good" more often wins
  (`<verdict>A</verdict>` / `<verdict>B</verdict>`, a tie when equal); a response containing "garble" makes
  the answer unreadable (no verdict); one containing "firstbias" makes the judge answer A whatever the order.
Every request is appended to the `--log` jsonl (`{"prompt": …, "text": …}`). `GET /health` answers ok.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
from pathlib import Path

PAIR_RE = re.compile(r"Response A: (.*?)\n\nResponse B: (.*?)(?:\n\n|\n?$)", re.DOTALL)


def judge_text(prompt: str) -> str:
    """The scripted judge's answer to one prompt."""
    if "Write the criteria" in prompt:
        return "<criteria>how often the text says good</criteria>"
    if "checking the work of several judges" in prompt:
        return "The first analysis is careful. <choice>1</choice>"
    found = PAIR_RE.search(prompt)
    if not found:
        return "I cannot tell what to judge."
    a, b = found.group(1), found.group(2)
    if "garble" in a or "garble" in b:
        return "Both are fine, I suppose."
    if "firstbias" in a or "firstbias" in b:
        return "<critique>the first one</critique> <verdict>A</verdict>"
    ca, cb = a.lower().count("good"), b.lower().count("good")
    verdict = "A" if ca > cb else "B" if cb > ca else "tie"
    return f"<critique>A says good {ca} times, B {cb} times.</critique> <verdict>{verdict}</verdict>"


def build_app(log_path: Path):
    from fastapi import FastAPI

    app = FastAPI()
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        text = judge_text(prompt)
        with lock, open(log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"prompt": prompt, "text": text}) + "\n")
        return {"id": "chat-test", "object": "chat.completion", "model": body.get("model", "judge"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True, help="jsonl file: one line per request")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(build_app(Path(args.log)), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
