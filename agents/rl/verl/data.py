"""QA questions as verl RL rows for Search-R1-style training with the embedkit search tool.

    from agents.rl.verl.data import write_search_data
    write_search_data({"nq": "../shared/data/qa_questions/nq_open_test.jsonl",
                       "hotpotqa": "../shared/data/hotpotqa_dev500/dev_subsampled.jsonl"},
                      "data/search_r1", test_size=100)      # -> train.parquet, test.parquet

    embedkit rl verl-data --source nq=../shared/data/qa_questions/nq_open_test.jsonl --out data/search_r1

One row per question in verl's RL layout (what `verl.utils.dataset.RLHFDataset` and the agent loop read):
- `data_source`: `searchR1_<name>`, the names verl's default reward (`verl.utils.reward_score`) scores with
  Search-R1's exact match of the last `<answer>…</answer>` against `reward_model.ground_truth.target`;
- `agent_name`: `tool_agent` (verl's `ToolAgentLoop` calling `agents.rl.verl.search_tool`) or `search_r1_agent`
  (`agents.rl.verl.search_r1_loop`, Search-R1's `<search>` tags);
- `prompt`: one user message, the loop's instruction with the question; `ability`: `fact-reasoning`;
- `reward_model`: `{style: rule, ground_truth: {target: [answers]}}`;
- `extra_info`: `split`, `index`, `id`, `question`, and `tools_kwargs.search.create_kwargs.question`, which
  the tool receives in `create()` (for an Agentic-R `query_template` "{question} [SEP] {query}").
Questions are read by `agents.search_agent.questions.load_questions` (NQ-open jsonl, HotpotQA jsonl, Search-R1
or FlashRAG files); each file is written atomically. The last `test_size` questions of every source are the test
split, so the two splits never share a question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.search_agent.config import DEFAULT_PROMPT
from agents.search_agent.questions import Question, load_questions
from embedkit.errors import DataFormatError, EmbedkitError
from embedkit.io import atomic_write

TOOL_NAME = "search"  # the name rows address in tools_kwargs; agents.rl.verl.search_tool registers under it
# The data sources verl 0.9's default reward function scores with Search-R1's exact match (as `searchR1_<name>`).
SEARCH_R1_SOURCES = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")

# Our own wording for a tool-calling model (the tool's name and the <answer> tag are the protocol).
TOOL_INSTRUCTION = (
    "Answer the question below. Think step by step. Whenever you are missing a fact, call the `search` tool "
    "with a short query; its top passages come back between <information> and </information>, and you may "
    "search several times. When you know the answer, write it inside <answer> and </answer> as a short "
    "phrase without explanation, for example <answer> Paris </answer>.\nQuestion: {question}\n"
)
# The agent loop a row asks for, and the instruction that teaches its protocol: verl's ToolAgentLoop with tool
# calls, or `agents.rl.verl.search_r1_loop` with Search-R1's <search> tags (embedkit's agent prompt).
AGENT_LOOPS = {"tool_agent": TOOL_INSTRUCTION, "search_r1_agent": DEFAULT_PROMPT}


def verl_row(question: Question, source: str, *, split: str, index: int, agent_loop: str = "tool_agent",
             instruction: str | None = None) -> dict[str, Any]:  # fmt: skip
    """One question as a verl RL row (layout in the module docstring)."""
    instruction = instruction or AGENT_LOOPS[agent_loop]
    text = question.question.strip()
    if text and text[-1] not in "?.!":
        text += "?"
    return {
        "data_source": f"searchR1_{source}",
        "agent_name": agent_loop,
        "prompt": [{"role": "user", "content": instruction.format(question=text)}],
        "ability": "fact-reasoning",
        "reward_model": {"style": "rule", "ground_truth": {"target": list(question.answers)}},
        "extra_info": {
            "split": split, "index": index, "id": question.id, "question": question.question,
            "need_tools_kwargs": True,
            "tools_kwargs": {TOOL_NAME: {"create_kwargs": {"question": question.question}}},
        },
    }  # fmt: skip


def split_rows(sources: Mapping[str, str | Path], *, test_size: int = 100, limit: int | None = None,
               agent_loop: str = "tool_agent", instruction: str | None = None) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """`{"train": rows, "test": rows}`: per source, its first `limit` answered questions, the last `test_size`
    of them held out for test."""
    if not sources:
        raise EmbedkitError("no question sources given")
    if agent_loop not in AGENT_LOOPS:
        raise EmbedkitError(f"unknown agent loop {agent_loop!r}; choose {' or '.join(AGENT_LOOPS)}")
    instruction = instruction or AGENT_LOOPS[agent_loop]
    if "{question}" not in instruction:
        raise DataFormatError("the instruction must contain {question}", field="instruction")
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for name, path in sources.items():
        if name not in SEARCH_R1_SOURCES:
            raise DataFormatError(f"unknown source name {name!r}: verl's default reward scores "
                                  f"searchR1_<name> for {', '.join(SEARCH_R1_SOURCES)}")  # fmt: skip
        questions = [q for q in load_questions(path, limit=limit) if q.answers]
        if len(questions) <= test_size:
            raise DataFormatError(f"{len(questions)} answered questions; a test split of {test_size} leaves no "
                                  "training questions", path=path)  # fmt: skip
        cut = len(questions) - test_size
        for split, part in (("train", questions[:cut]), ("test", questions[cut:])):
            rows, start = splits[split], len(splits[split])
            rows.extend(verl_row(q, name, split=split, index=start + i, agent_loop=agent_loop, instruction=instruction)
                        for i, q in enumerate(part))  # fmt: skip
    return splits


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows to one parquet file, atomically (readers see the old file or the whole new one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows))
    with atomic_write(path, "wb") as handle:
        pq.write_table(table, handle)
    return Path(path)


def write_search_data(sources: Mapping[str, str | Path], out: str | Path, *, test_size: int = 100,
                      limit: int | None = None, agent_loop: str = "tool_agent",
                      instruction: str | None = None) -> dict[str, Path]:  # fmt: skip
    """`<out>/train.parquet` and `<out>/test.parquet` from named question files (see `split_rows`)."""
    splits = split_rows(sources, test_size=test_size, limit=limit, agent_loop=agent_loop, instruction=instruction)
    out = Path(out)
    return {split: write_rows(rows, out / f"{split}.parquet") for split, rows in splits.items() if rows}
