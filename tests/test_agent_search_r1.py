"""Search-R1's token stream (`prompt_mode: search_r1`), the shared <information> template, one passage
formatter for in-process and HTTP retrieval, concurrent requests to an OpenAI-compatible server, and how
`hf:` models are loaded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents.llm import OpenAICompatibleBackend, TransformersBackend, load_causal_lm
from agents.retrieval import passage_from_contents
from agents.rl.rollout import RolloutSettings
from agents.rl.toy import build_char_tokenizer, build_tiny_causal_lm
from agents.search_agent import INFORMATION_TEMPLATE, AgentConfig, LLMPolicy, SearchAgent, render_information
from agents.search_agent.questions import Question
from embedkit.passage import Passage

CHAT_TEMPLATE = (
    "{% for m in messages %}### {{ m.role }}\n{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant\n{% endif %}"
)
QUESTION = Question("q1", "What position did Shirley Temple hold?", ["Chief of Protocol"])
WIKI18 = '"Shirley Temple"\nShirley Temple Black was an American actress.\nShe was Chief of Protocol.'


class OnePassage:
    """A `Retriever` over one wiki-18 style document (only `contents`, quoted title on the first line)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def retrieve(self, queries, k=3):
        self.queries += list(queries)
        return [[passage_from_contents("s1", WIKI18, score=0.9, rank=1)] for _ in queries]


class Recorder(BaseHTTPRequestHandler):
    """A stdlib OpenAI-compatible server: replies from `script(payload)`, records every payload and the
    largest number of requests it held at once; `barrier` (when set) holds requests until that many arrive."""

    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server's naming)
        server = self.server
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            server.inflight += 1
            server.max_inflight = max(server.max_inflight, server.inflight)
            server.requests.append((self.path, payload))
        try:
            if server.barrier is not None:
                server.barrier.wait(timeout=20)
            text = server.script(payload)
        finally:
            with self.lock:
                server.inflight -= 1
        if self.path.endswith("/chat/completions"):
            body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        else:
            body = {"choices": [{"index": 0, "text": text}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    server.inflight = server.max_inflight = 0
    server.requests, server.barrier = [], None
    server.script = lambda payload: "<answer> x "
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chat_tokenizer():
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_one_template_and_one_passage_form():
    assert RolloutSettings().information_template == INFORMATION_TEMPLATE == "\n\n<information>{result}</information>\n\n"
    passage = passage_from_contents("s1", WIKI18)
    assert passage == Passage.from_contents("s1", WIKI18) and passage.title == "Shirley Temple"
    # Search-R1's _passages2string renders "Doc i(Title: t) text"; the block is its "\n\n<information>…</information>\n\n"
    assert render_information([passage]) == ("\n\n<information>Doc 1(Title: Shirley Temple) Shirley Temple Black was "
                                              "an American actress. She was Chief of Protocol.</information>\n\n")
    titled = passage_from_contents("k1", "Kiss and Tell (1945 film)\nKiss and Tell is a film.")
    assert (titled.title, titled.text) == ("Kiss and Tell (1945 film)", "Kiss and Tell is a film.")


def test_search_r1_mode_builds_search_r1s_token_stream(llm_server, chat_tokenizer):
    """The chat template wraps the first user message only; the model then continues one assistant turn
    with each <information> block appended inside it, exactly the string Search-R1's loop grows."""
    server, url = llm_server
    replies = iter(["<think>I need her job.</think>\n<search> Shirley Temple ", "<answer> Chief of Protocol "])
    server.script = lambda payload: next(replies)
    instruction = "Answer with tags. Question: {question}\n"
    config = AgentConfig(prompt_mode="search_r1", prompt_template=instruction, top_k=1, max_turns=2)
    backend = OpenAICompatibleBackend(url, "policy", timeout=10, max_retries=0, chat=False, tokenizer=chat_tokenizer)
    retriever = OnePassage()
    trajectory = SearchAgent(LLMPolicy(backend), retriever, config).run([QUESTION])[0]
    assert trajectory.prediction == "Chief of Protocol" and trajectory.em == 1.0
    assert retriever.queries == ["Shirley Temple"]
    (path1, first), (path2, second) = server.requests
    assert path1 == path2 == "/v1/completions" and first["stop"] == ["</search>", "</answer>"]
    prefix = chat_tokenizer.apply_chat_template([{"role": "user", "content": instruction.format(question=QUESTION.question)}],
                                                add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert first["prompt"] == prefix == f"### user\n{instruction.format(question=QUESTION.question)}\n### assistant\n"
    information = ("\n\n<information>Doc 1(Title: Shirley Temple) Shirley Temple Black was an American actress. "
                   "She was Chief of Protocol.</information>\n\n")  # fmt: skip
    assert second["prompt"] == prefix + "<think>I need her job.</think>\n<search> Shirley Temple </search>" + information
    assert trajectory.transcript.endswith("<answer> Chief of Protocol </answer>")


def test_search_r1_mode_with_a_local_model_and_the_files_own_prompt(chat_tokenizer):
    """`hf:` backends apply their tokenizer's chat template; a question file's own instruction is used as is."""
    model = build_tiny_causal_lm(chat_tokenizer)
    policy = LLMPolicy(TransformersBackend(model, chat_tokenizer))
    question = Question("q", "who?", ["x"], prompt="Search-R1 instruction. Question: who?\n")
    agent = SearchAgent(policy, OnePassage(), AgentConfig(prompt_mode="search_r1"))
    trajectory = agent.start(question)
    assert trajectory.prompt == "Search-R1 instruction. Question: who?\n"
    assert policy.render(trajectory, agent.config) == "### user\nSearch-R1 instruction. Question: who?\n\n### assistant\n"
    templated = SearchAgent(policy, OnePassage(), AgentConfig(prompt_source="template")).start(question)
    assert templated.prompt.endswith("Question: who?\n") and "<search>" in templated.prompt
    no_template = LLMPolicy(OpenAICompatibleBackend("http://127.0.0.1:9", "m", chat=False))
    with pytest.raises(Exception, match="--llm-tokenizer"):
        no_template.render(trajectory, AgentConfig(prompt_mode="search_r1"))


def test_openai_backend_keeps_n_requests_in_flight(llm_server):
    server, url = llm_server
    server.barrier = threading.Barrier(4)  # passes only when 4 requests are in flight together
    server.script = lambda payload: payload["prompt"].upper()
    backend = OpenAICompatibleBackend(url, "m", timeout=30, max_retries=0, chat=False, concurrency=4)
    prompts = [f"prompt {i}" for i in range(8)]
    assert backend.generate(prompts, max_new_tokens=4, temperature=0.0, stop=None) == [p.upper() for p in prompts]
    assert server.max_inflight == 4 and len(server.requests) == 8
    server.barrier = None
    server.max_inflight = 0
    serial = OpenAICompatibleBackend(url, "m", timeout=30, max_retries=0, chat=False, concurrency=1)
    assert serial.generate(prompts[:3], max_new_tokens=4, temperature=0.0, stop=None) == [p.upper() for p in prompts[:3]]
    assert server.max_inflight == 1


def test_hf_models_load_fp32_on_cpu_and_bf16_on_gpu(tmp_path):
    import torch

    tokenizer = build_char_tokenizer()
    build_tiny_causal_lm(tokenizer).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model, _ = load_causal_lm(str(tmp_path / "lm"), device="cpu")
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    if torch.cuda.is_available():
        model, _ = load_causal_lm(str(tmp_path / "lm"))
        parameter = next(model.parameters())
        assert parameter.dtype == torch.bfloat16 and parameter.device.type == "cuda"
