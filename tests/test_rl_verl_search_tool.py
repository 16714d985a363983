"""The embedkit search tool inside verl 0.9.1, against embedkit's retrieval server on 127.0.0.1.

- verl's own loader (`verl.tools.tool_registry.load_all_tools`) reads configs/verl/search_tool.yaml;
- the tool's `/retrieve` calls reach embedkit's server app under uvicorn on a real socket (dense MiniLM index,
  bearer key) and come back in
  Search-R1's `<information>` rendering; the Agentic-R template sends "{question} [SEP] {query}";
- failures (wrong key, a 503 that clears, a server that never answers, bad arguments) become the tool's text;
- `embedkit rl verl-data` rows load with `datasets` and with verl's `RLHFDataset` (tool schemas included), and
  verl's default reward scores them;
- configs/verl/search_r1_{grpo,ppo}.yaml compose with hydra into verl's own config dataclasses;
- verl's stock `ToolAgentLoop`, configured by search_r1_grpo.yaml, runs one two-turn session from such a row: the only scripted part is the LLM
  server (`server_manager.generate` returns fixed token ids: first a tool call, then an answer); the loop, its
  hermes parser, the chat-template merge and the tool are verl's and ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MULTIHOP_DOCS, running_server, write_jsonl

pytest.importorskip("verl")

ROOT = Path(__file__).resolve().parent.parent
TOOL_CONFIG = ROOT / "configs" / "verl" / "search_tool.yaml"
API_KEY = "tool-test-key"
KISS_AND_TELL = MULTIHOP_DOCS[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_encoder):
    """embedkit's server app (what `embedkit serve` runs) under uvicorn on 127.0.0.1, with a bearer key, over a
    dense MiniLM index of the multi-hop documents (in this process: the session's MiniLM is loaded once)."""
    from embedkit.data import iter_documents
    from embedkit.index import Index, build_dense_index
    from embedkit.server.app import create_app
    from embedkit.server.config import ServerConfig
    from embedkit.server.service import RetrievalService

    folder = tmp_path_factory.mktemp("verl_tool")
    corpus = write_jsonl(folder / "corpus.jsonl",
                         [{"_id": i, "title": title, "text": text} for i, title, text in MULTIHOP_DOCS])  # fmt: skip
    index = build_dense_index(iter_documents(corpus), minilm_encoder, folder / "dense", quiet=True)
    config = ServerConfig(index=str(index), api_key=API_KEY, device="cpu")
    service = RetrievalService(config, {"dense": Index.load(index, encoder=minilm_encoder)})
    with running_server(create_app(config, service), lifespan="on") as url:
        yield url


def rlhf_dataset(path: Path, tokenizer, data_config, cache: Path):
    """verl's `RLHFDataset` over `path`, its overlong-prompt filter run in this process.

    With `filter_overlong_prompts_workers` >= 1, `datasets` (4.1 on) filters in a worker pool and replaces
    `os.environ` with a deep copy taken when the filter started (`arrow_dataset.py`: `os.environ = prev_env`);
    monkeypatch's undo then edits the old mapping, so every variable a test had set stays in the new one for the
    rest of the session ($EMBEDKIT_API_KEY and $EMBEDKIT_SEARCH_URL leaked that way)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    data_config.update(cache_dir=str(cache), filter_overlong_prompts_workers=None)
    environ = os.environ
    dataset = RLHFDataset(str(path), tokenizer, data_config)
    assert os.environ is environ, "the dataset replaced os.environ: the test's variables would outlive it"
    return dataset


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("EMBEDKIT_API_KEY", API_KEY)


def make_tool(url: str, **settings):
    from agents.rl.verl.search_tool import EmbedkitSearchTool

    return EmbedkitSearchTool({"type": "native", "url": url, **settings}, None)


def call(tool, parameters: dict, question: str | None = None):
    """One tool call the way ToolAgentLoop makes it: create (with the row's create_kwargs), execute, release."""

    async def run():
        create_kwargs = {"question": question} if question is not None else {}
        instance, _ = await tool.create(create_kwargs=create_kwargs)
        try:
            return await tool.execute(instance, parameters)
        finally:
            await tool.release(instance)

    return asyncio.run(run())


def test_verl_loads_the_tool_config(served, keyed, monkeypatch):
    from verl.tools.tool_registry import load_all_tools

    from agents.rl.verl.search_tool import TOOL_SCHEMA, EmbedkitSearchTool

    monkeypatch.setenv("EMBEDKIT_SEARCH_URL", served)
    [tool] = load_all_tools(tool_config_path=str(TOOL_CONFIG), function_tool_path=None)
    assert isinstance(tool, EmbedkitSearchTool) and tool.name == "search"
    assert tool.settings.url == served and tool.settings.topk == 3
    # the YAML's schema is the one the class offers when a config gives none
    assert tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True) == TOOL_SCHEMA
    response, reward, metrics = call(tool, {"query": "Kiss and Tell 1945 film"})
    assert reward == 0.0 and metrics == {"queries": 1, "passages": 3, "failed": 0}
    assert response.text.startswith("\n\n<information>Doc 1(Title: Kiss and Tell (1945 film)) Kiss and Tell is a "
                                    "1945 comedy film")  # fmt: skip
    assert response.text.endswith("</information>\n\n") and response.text.count("\nDoc ") == 2


def test_the_agentic_r_tool_config(served, keyed, monkeypatch):
    from verl.tools.tool_registry import load_all_tools

    from agents.rl.verl.search_tool import TOOL_SCHEMA

    monkeypatch.setenv("EMBEDKIT_SEARCH_URL", served)
    [tool] = load_all_tools(tool_config_path=str(ROOT / "configs" / "verl" / "search_tool_agentic_r.yaml"),
                            function_tool_path=None)  # fmt: skip
    assert tool.settings.query_template == "{question} [SEP] {query}"
    assert tool.tool_schema.model_dump(exclude_unset=True, exclude_none=True) == TOOL_SCHEMA
    assert tool.retriever_inputs({"query": "her job"}, "Who is she?") == ["Who is she? [SEP] her job"]


def test_results_match_the_server_and_the_agentic_r_template(served, keyed):
    """Same passages as a direct `/retrieve`; the template's text is what the server is asked."""
    from agents.http_retriever import RetrievalClient

    tool = make_tool(served, topk=2, result_format="passages", query_template="{question} [SEP] {query}")
    question = "What position did the star of Kiss and Tell hold?"
    response, _, metrics = call(tool, {"query": "Shirley Temple government position"}, question=question)
    with RetrievalClient(served, api_key=API_KEY) as client:
        [hits] = client.retrieve([f"{question} [SEP] Shirley Temple government position"], 2)
    titles = [hit["document"]["contents"].split("\n")[0] for hit in hits]
    assert response.text.splitlines()[0].startswith(f"Doc 1(Title: {titles[0]}) ")
    assert response.text.splitlines()[1].startswith(f"Doc 2(Title: {titles[1]}) ")
    assert "<information>" not in response.text and metrics["passages"] == 2
    # without the question the template cannot be filled: the model is told, nothing is sent
    response, _, metrics = call(tool, {"query": "Shirley Temple"})
    assert metrics["failed"] == 1 and "has no question" in response.text
    # upstream verl's search tool schema sends a query_list
    response, _, metrics = call(make_tool(served, topk=1), {"query_list": ["volcano", "bread"]})
    assert metrics == {"queries": 2, "passages": 2, "failed": 0}
    assert "Title: Volcano" in response.text and "Title: Bread" in response.text


@pytest.mark.parametrize("parameters", [{}, {"query": "   "}, {"query": 3}, {"query_list": ["a"] * 9}])
def test_bad_arguments_are_answered_not_raised(served, keyed, parameters):
    response, _, metrics = call(make_tool(served), parameters)
    assert metrics["failed"] == 1 and response.text.startswith("\n\n<information>(search failed: ")


def test_wrong_key_is_reported_at_once(served, monkeypatch):
    monkeypatch.setenv("EMBEDKIT_API_KEY", "wrong")
    response, _, metrics = call(make_tool(served, retries=3), {"query": "bread"})
    assert metrics["failed"] == 1 and "HTTP 401" in response.text and "Bearer" in response.text
    app = Flaky(failures=5, status=401)  # repeating a refused request cannot help: one attempt only
    with running_server(app, lifespan="off") as url:
        response, _, metrics = call(make_tool(url, retries=3, backoff_s=0.05), {"query": "bread"})
    assert app.calls == 1 and metrics["failed"] == 1 and "HTTP 401" in response.text
    monkeypatch.setenv("MY_KEY", "caf\u00e9")
    from embedkit.errors import DataFormatError

    with pytest.raises(DataFormatError, match="MY_KEY.*not ASCII"):
        make_tool(served, api_key_env="MY_KEY")


class Flaky:
    """An ASGI `/retrieve` that answers `status` (503) `failures` times, then Search-R1's result; `delay` stalls
    each answer."""

    def __init__(self, failures: int = 0, delay: float = 0.0, status: int = 503) -> None:
        self.failures, self.delay, self.status, self.calls = failures, delay, status, 0
        self.lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        await asyncio.sleep(self.delay)
        if fail:
            payload, status = {"detail": "busy"}, self.status
        else:
            queries = json.loads(body)["queries"]
            payload = {"result": [[{"document": {"id": "b1", "contents": "Bread\nBread is baked from flour."},
                                    "score": 0.5}] for _ in queries]}  # fmt: skip
            status = 200
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": data})


def test_retries_with_backoff_then_succeeds():
    app = Flaky(failures=2)
    with running_server(app, lifespan="off") as url:
        response, _, metrics = call(make_tool(url, retries=2, backoff_s=0.05, api_key_env=None), {"query": "bread"})
    assert app.calls == 3 and metrics["failed"] == 0
    assert response.text == "\n\n<information>Doc 1(Title: Bread) Bread is baked from flour.</information>\n\n"
    app = Flaky(failures=5)
    with running_server(app, lifespan="off") as url:
        response, _, metrics = call(make_tool(url, retries=1, backoff_s=0.05, api_key_env=None), {"query": "bread"})
    assert app.calls == 2 and metrics["failed"] == 1 and "after 2 attempts: HTTP 503: busy" in response.text


def test_timeouts_and_a_dead_server_end_the_call_not_the_rollout():
    from tests.helpers import free_port

    app = Flaky(delay=1.5)
    with running_server(app, lifespan="off") as url:
        response, _, metrics = call(make_tool(url, timeout_s=0.3, retries=1, backoff_s=0.0, api_key_env=None),
                                    {"query": "bread"})  # fmt: skip
    assert metrics["failed"] == 1 and "ReadTimeout" in response.text and app.calls == 2
    dead = f"http://127.0.0.1:{free_port()}"
    response, _, metrics = call(make_tool(dead, retries=0, api_key_env=None), {"query": "bread"})
    assert metrics["failed"] == 1 and "ConnectError" in response.text


def test_settings_are_checked_when_the_tool_is_built():
    from embedkit.errors import DataFormatError

    with pytest.raises(DataFormatError, match="query_template"):
        make_tool("http://127.0.0.1:9", query_template="{question}")
    with pytest.raises(DataFormatError, match="topk"):
        make_tool("http://127.0.0.1:9", topk=0)
    with pytest.raises(DataFormatError, match="timeout"):
        make_tool("http://127.0.0.1:9", timeout=3)  # a misspelt key is not ignored


# --- data prep and verl's dataset ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verl_data(tmp_path_factory, shared_data):
    """`embedkit rl verl-data` over the shared NQ-open and HotpotQA files (first 20 of each, 5 held out)."""
    from embedkit.cli import main

    nq = shared_data / "qa_questions" / "nq_open_test.jsonl"
    hotpot = shared_data / "hotpotqa_dev500" / "dev_subsampled.jsonl"
    if not (nq.is_file() and hotpot.is_file()):
        pytest.skip("the shared NQ-open / HotpotQA files are absent")
    out = tmp_path_factory.mktemp("verl_data") / "search_r1"
    code = main(["rl", "verl-data", "--source", f"nq={nq}", "--source", f"hotpotqa={hotpot}", "--out", str(out),
                 "--limit", "20", "--test-size", "5"])  # fmt: skip
    assert code == 0
    return out


def test_data_rows_load_with_datasets_and_score_with_verls_reward(verl_data):
    import datasets
    from verl.utils.reward_score import default_compute_score

    splits = datasets.load_dataset("parquet", data_files={s: str(verl_data / f"{s}.parquet") for s in ("train", "test")})
    assert (len(splits["train"]), len(splits["test"])) == (30, 10)
    assert splits["train"]["extra_info"][0]["index"] == 0 and splits["test"]["extra_info"][9]["index"] == 9
    train_ids = {row["id"] for row in splits["train"]["extra_info"]}
    assert not train_ids & {row["id"] for row in splits["test"]["extra_info"]}
    row = splits["train"][0]
    assert row["data_source"] == "searchR1_nq" and row["agent_name"] == "tool_agent"
    assert row["ability"] == "fact-reasoning" and row["prompt"][0]["role"] == "user"
    question = row["extra_info"]["question"]
    assert row["prompt"][0]["content"].endswith(f"Question: {question}?\n")
    assert row["extra_info"]["tools_kwargs"] == {"search": {"create_kwargs": {"question": question}}}
    answer = row["reward_model"]["ground_truth"]["target"][0]
    hotpot = splits["test"][9]
    assert hotpot["data_source"] == "searchR1_hotpotqa"
    # verl's own reward for these data sources: Search-R1's exact match on the last <answer>
    assert default_compute_score(row["data_source"], f"<answer> {answer} </answer>", row["reward_model"]["ground_truth"]) == 1.0
    assert default_compute_score(row["data_source"], "<answer> no idea </answer>", row["reward_model"]["ground_truth"]) == 0.0


def test_data_prep_refuses_bad_input(tmp_path, shared_data, capsys):
    from embedkit.cli import main

    nq = shared_data / "qa_questions" / "nq_open_test.jsonl"
    if not nq.is_file():
        pytest.skip("the shared NQ-open file is absent")
    assert main(["rl", "verl-data", "--source", f"squad={nq}", "--out", str(tmp_path / "a")]) == 2
    assert "unknown source name 'squad'" in capsys.readouterr().err
    assert main(["rl", "verl-data", "--source", f"nq={nq}", "--limit", "3", "--test-size", "3",
                 "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "leaves no training questions" in capsys.readouterr().err
    assert main(["rl", "verl-data", "--source", str(nq), "--out", str(tmp_path / "c")]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- verl's ToolAgentLoop -----------------------------------------------------------------------------------

TOOL_TAGS = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
# Qwen's ChatML shape with hermes tool calls, small enough to read.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\ntools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- elif m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content }}"
    "{%- for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer():
    """The character tokenizer with every printable character and the ChatML / hermes tags as tokens."""
    import string

    from agents.rl.toy import CHARS, build_char_tokenizer

    missing = [c for c in string.printable if c not in CHARS and c not in "\r\x0b\x0c"]
    tokenizer = build_char_tokenizer(TOOL_TAGS + missing)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def compose_verl(name: str, overrides: list[str] | None = None):
    """A config of configs/verl as `python -m verl.trainer.main_ppo --config-path configs/verl --config-name NAME`
    composes it (hydra, verl's ppo_trainer found through the file's searchpath)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs" / "verl"), version_base=None):
        return compose(config_name=name, overrides=overrides or [])


@pytest.fixture(scope="module")
def verl_config():
    return compose_verl("search_r1_grpo")


@pytest.mark.filterwarnings("ignore:Disabled critic")
def test_search_r1_configs_compose_into_verls_dataclasses(verl_config):
    """Search-R1's settings (train_grpo.sh / train_ppo.sh) in verl 0.9 keys; verl's own dataclasses accept them."""
    from verl.trainer.ppo.utils import need_critic
    from verl.utils.config import omega_conf_to_dataclass

    ppo = compose_verl("search_r1_ppo")
    for config, estimator, n, warmup in ((verl_config, "grpo", 5, 0.285), (ppo, "gae", 1, 0.95)):
        rollout, actor = config.actor_rollout_ref.rollout, config.actor_rollout_ref.actor
        assert (config.algorithm.adv_estimator, rollout.n, actor.optim.lr_warmup_steps_ratio) == (estimator, n, warmup)
        assert actor.optim.lr == 1e-6 and config.data.train_batch_size == 512 and actor.ppo_mini_batch_size == 256
        assert rollout.multi_turn.enable and rollout.multi_turn.format == "hermes"
        assert rollout.multi_turn.max_assistant_turns == 3 and rollout.agent.default_agent_loop == "tool_agent"
        assert config.data.tool_config_path == rollout.multi_turn.tool_config_path == "configs/verl/search_tool.yaml"
        assert omega_conf_to_dataclass(rollout).multi_turn.max_user_turns == 2
        omega_conf_to_dataclass(actor)
    assert verl_config.actor_rollout_ref.actor.use_kl_loss and not verl_config.algorithm.use_kl_in_reward
    assert not need_critic(verl_config) and need_critic(ppo)
    assert ppo.critic.model.path == ppo.actor_rollout_ref.model.path and ppo.critic.optim.lr == 1e-5
    assert ppo.algorithm.use_kl_in_reward and ppo.algorithm.kl_ctrl.kl_coef == 0.001


class ScriptedServer:
    """verl's `server_manager` for the loop: `generate` returns the next scripted reply's token ids."""

    def __init__(self, tokenizer, replies: list[str]) -> None:
        self.tokenizer, self.replies = tokenizer, list(replies)
        self.prompts: list[list[int]] = []

    async def generate(self, *, request_id, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.prompts.append(list(prompt_ids))
        ids = self.tokenizer.encode(self.replies.pop(0), add_special_tokens=False)
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids), stop_reason="completed")


def test_verls_tool_agent_loop_runs_a_search_session(served, keyed, monkeypatch, verl_config, verl_data,
                                                     chat_tokenizer):  # fmt: skip
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.tools.tool_registry import load_all_tools
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.import_utils import resolve_config_path

    monkeypatch.setenv("EMBEDKIT_SEARCH_URL", served)
    monkeypatch.chdir(ROOT)  # the shipped config names the tool config relative to the repo root
    data_config = OmegaConf.create(OmegaConf.to_container(verl_config.data, resolve=True))
    dataset = rlhf_dataset(verl_data / "train.parquet", chat_tokenizer, data_config, verl_data / "cache")
    assert len(dataset) == 30 and dataset.tool_schemas[0]["function"]["name"] == "search"
    row = dataset[0]
    assert row["agent_name"] == "tool_agent" and row["tools_kwargs"]["search"]["create_kwargs"]["question"]

    call_text = '<tool_call>\n{"name": "search", "arguments": {"query": "Kiss and Tell 1945 film"}}\n</tool_call>'
    server = ScriptedServer(chat_tokenizer, [call_text + "<eos>", "<answer> Shirley Temple </answer><eos>"])
    multi_turn = verl_config.actor_rollout_ref.rollout.multi_turn

    async def session():
        tools = load_all_tools(tool_config_path=resolve_config_path(multi_turn.tool_config_path), function_tool_path=None)
        # built inside the running event loop, as verl's AgentLoopWorker builds it
        loop = hydra.utils.instantiate(
            config=_agent_loop_registry[row["agent_name"]], trainer_config=DictConfigWrap(config=verl_config),
            server_manager=server, tokenizer=chat_tokenizer, processor=None, hf_model_type=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(data_config), tools=ToolListWrap(tools),
        )  # fmt: skip
        sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
        return await loop.run(sampling, **row)

    output = asyncio.run(session())
    assert len(server.prompts) == 2 and output.num_turns == 4  # user, assistant (call), tool, assistant (answer)
    response = chat_tokenizer.decode(output.response_ids)
    tool_turn = ("<|im_start|>user\n<tool_response>\n\n\n<information>Doc 1(Title: Kiss and Tell (1945 film)) "
                 "Kiss and Tell is a 1945 comedy film")  # fmt: skip
    assert response.startswith(call_text) and tool_turn in response
    assert response.rstrip().endswith("<answer> Shirley Temple </answer><eos>")
    # the second generation saw the tool's passages; only the model's own tokens are trained on
    assert chat_tokenizer.decode(server.prompts[1]).endswith(
        response[: response.index("<answer>")])  # fmt: skip
    mask = output.response_mask
    assert len(mask) == len(output.response_ids) and mask[0] == 1 and mask[-1] == 1
    masked_text = chat_tokenizer.decode([t for t, m in zip(output.response_ids, mask, strict=True) if m == 0])
    assert "<information>Doc 1(Title: Kiss and Tell (1945 film))" in masked_text and "<tool_call>" not in masked_text
    assert output.extra_fields["tool_rewards"] == [0.0]


# --- the Search-R1 agent loop ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def search_r1_data(tmp_path_factory, shared_data):
    """Rows for `search_r1_agent` (Search-R1's tag instruction), from the shared NQ-open file."""
    from embedkit.cli import main

    nq = shared_data / "qa_questions" / "nq_open_test.jsonl"
    if not nq.is_file():
        pytest.skip("the shared NQ-open file is absent")
    out = tmp_path_factory.mktemp("verl_data_r1") / "search_r1"
    assert main(["rl", "verl-data", "--source", f"nq={nq}", "--out", str(out), "--limit", "6", "--test-size", "2",
                 "--agent-loop", "search_r1_agent"]) == 0  # fmt: skip
    return out


def run_search_r1_session(verl_config, data_folder, tokenizer, replies: list[str]):
    """One row through `search_r1_agent`, registered the way verl's agent-loop worker registers the loops of
    `rollout.agent.agent_loop_config_path` (configs/verl/search_r1_agent_loop.yaml)."""
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.tools.tool_registry import load_all_tools
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.import_utils import resolve_config_path

    rollout = verl_config.actor_rollout_ref.rollout
    entries: Any = OmegaConf.load(resolve_config_path(rollout.agent.agent_loop_config_path))
    for entry in entries:
        _agent_loop_registry[entry.name] = entry
    data_config = OmegaConf.create(OmegaConf.to_container(verl_config.data, resolve=True))
    row = rlhf_dataset(data_folder / "train.parquet", tokenizer, data_config, data_folder / "cache")[0]
    assert row["agent_name"] == "search_r1_agent"
    server = ScriptedServer(tokenizer, replies)

    async def session():
        tools = load_all_tools(tool_config_path=resolve_config_path(rollout.multi_turn.tool_config_path),
                               function_tool_path=None)  # fmt: skip
        loop = hydra.utils.instantiate(
            config=_agent_loop_registry[row["agent_name"]], trainer_config=DictConfigWrap(config=verl_config),
            server_manager=server, tokenizer=tokenizer, processor=None, hf_model_type=None,
            dataset_cls=RLHFDataset, data_config=DictConfigWrap(data_config), tools=ToolListWrap(tools),
        )  # fmt: skip
        return await loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}, **row)

    return row, server, asyncio.run(session())


def split_by_mask(tokenizer, output) -> tuple[str, str]:
    """(text of the model's tokens, text of the tokens the loop added)."""
    pairs = list(zip(output.response_ids, output.response_mask, strict=True))
    return (tokenizer.decode([t for t, m in pairs if m == 1]), tokenizer.decode([t for t, m in pairs if m == 0]))


def test_search_r1_loop_builds_search_r1s_token_stream(served, keyed, monkeypatch, verl_config, search_r1_data,
                                                       chat_tokenizer):  # fmt: skip
    """Generations are cut after the first complete tag (tokens after `</search>` dropped), a closing tag the
    server left out is put back, each search's `<information>` block is appended inside the same assistant turn,
    and only the model's tokens are trained on, with the log-probs the server sent."""
    from agents.http_retriever import HttpRetriever, RetrievalClient
    from agents.search_agent.format import information_block, render_passages

    monkeypatch.setenv("EMBEDKIT_SEARCH_URL", served)
    monkeypatch.chdir(ROOT)
    first = "<think>I need the film.</think>\n<search> Kiss and Tell 1945 film </search>"
    second = "<think>Now her job.</think>\n<search> Shirley Temple government position "
    answer = "<answer> Chief of Protocol </answer>"
    row, server, output = run_search_r1_session(verl_config, search_r1_data, chat_tokenizer, [
        first + "\n<information>made up</information><eos>", second, answer + "<eos>"])  # fmt: skip
    retriever = HttpRetriever(served, api_key=API_KEY)
    queries = ("Kiss and Tell 1945 film", "Shirley Temple government position")
    blocks = [information_block(render_passages(retriever.retrieve([q], 3)[0])) for q in queries]
    # Search-R1's rule (generation.py, _passages2string and execute_predictions) written out on the raw answer:
    # "Doc {i}(Title: {first line}) {other lines}\n" per hit, stripped, between "\n\n<information>" and
    # "</information>\n\n" (verl's upstream search tool writes "Doc {i} (Title: …)", with a space)
    with RetrievalClient(served, api_key=API_KEY) as client:
        for block, hits in zip(blocks, client.retrieve(list(queries), 3), strict=True):
            lines = [hit["document"]["contents"].split("\n") for hit in hits]
            rendered = "".join(f"Doc {i}(Title: {ls[0]}) {chr(10).join(ls[1:])}\n" for i, ls in enumerate(lines, 1))
            assert block == f"\n\n<information>{rendered.strip()}</information>\n\n"
    stream = first + blocks[0] + second + "</search>" + blocks[1] + answer
    assert chat_tokenizer.decode(output.response_ids) == stream
    model_text, added_text = split_by_mask(chat_tokenizer, output)
    assert model_text == first + second + answer and added_text == blocks[0] + "</search>" + blocks[1]
    assert "made up" not in stream and output.num_turns == 4
    prefix = chat_tokenizer.apply_chat_template(row["raw_prompt"], add_generation_prompt=True, tokenize=False)
    assert prefix.endswith("<|im_start|>assistant\n") and "<search>" in prefix  # Search-R1's tag instruction
    assert [chat_tokenizer.decode(p) for p in server.prompts] == [
        prefix, prefix + first + blocks[0], prefix + first + blocks[0] + second + "</search>" + blocks[1]]
    assert output.response_logprobs == [-0.5 if m else 0.0 for m in output.response_mask]
    assert output.extra_fields["search_calls"] == 2


def test_search_r1_loop_answers_invalid_turns_and_runs_no_search_on_the_last(served, keyed, monkeypatch,
                                                                            verl_config, search_r1_data,
                                                                            chat_tokenizer):  # fmt: skip
    from agents.search_agent.config import DEFAULT_INVALID_FEEDBACK

    monkeypatch.setenv("EMBEDKIT_SEARCH_URL", served)
    monkeypatch.chdir(ROOT)
    assert verl_config.actor_rollout_ref.rollout.multi_turn.max_assistant_turns == 3
    _, server, output = run_search_r1_session(verl_config, search_r1_data, chat_tokenizer, [
        "I am not sure.<eos>", "<search> bread </search>", "<search> flour </search>"])  # fmt: skip
    model_text, added_text = split_by_mask(chat_tokenizer, output)
    assert model_text == "I am not sure.<search> bread </search><search> flour </search>"
    assert added_text.startswith(DEFAULT_INVALID_FEEDBACK) and added_text.count("<information>") == 1
    assert "Title: Bread" in added_text
    assert chat_tokenizer.decode(output.response_ids).endswith("</information>\n\n<search> flour </search>")
    assert len(server.prompts) == 3 and output.extra_fields["search_calls"] == 1
