"""Training tasks (registry `TASKS`): where prompts, ground truths, domains and tools come from.

- `digit_map`: toy arithmetic a tiny model learns in minutes on CPU. Prompt `next 3:` → `<answer>4</answer>`;
  domains `next` (d+1), `double` (2d), `square` (d²), `prev` (d−1), all mod 10.
- `search_kv`: toy search environment. Each document says `KEY is VALUE`; the prompt names a key; the policy
  must `<search> key </search>`, read the value from the `<information>` block a real embedkit dense index
  serves, and `<answer> value </answer>`.
- `jsonl`: your own prompts, one JSON object per line (`prompt`, `answer`, optional `domain`).

Demonstrations (for the supervised warm-up) show the format only: their answers are random digits, so RL
has everything left to learn.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.rl.registry import Registry
from agents.rl.rollout import Tool
from agents.search_agent.format import information_block
from embedkit.data import iter_json_lines
from embedkit.errors import DataFormatError, EmbedkitError


@dataclass(frozen=True)
class Example:
    prompt: str
    ground_truth: Any
    domain: str = "default"
    demonstration: str | None = None  # a response in the expected format, for the warm-up


@dataclass
class Task:
    examples: list[Example]
    tool: Tool | None = None

    def domains(self) -> list[str]:
        return sorted({e.domain for e in self.examples})

    def sample(self, n: int, rng: random.Random) -> list[Example]:
        """`n` examples, balanced over domains (round-robin) so every domain appears in each step."""
        by_domain = {d: [e for e in self.examples if e.domain == d] for d in self.domains()}
        names = list(by_domain)
        rng.shuffle(names)
        return [rng.choice(by_domain[names[i % len(names)]]) for i in range(n)]


TASKS: Registry[Callable[..., Task]] = Registry("task")
# generative reward models: judge prompts served in clean passes (lazy: imported on first use)
TASKS.add("judge_prompts", "agents.rewards.training:judge_prompts")

DIGIT_OPS: dict[str, Callable[[int], int]] = {
    "next": lambda d: (d + 1) % 10,
    "double": lambda d: (2 * d) % 10,
    "square": lambda d: (d * d) % 10,
    "prev": lambda d: (d - 1) % 10,
}


@TASKS.register("digit_map")
def digit_map(domains: list[str] | tuple[str, ...] = ("next",), seed: int = 0, demo: str = "copy") -> Task:
    """`demo: copy` warms up on `<answer>d</answer>` (the prompt's own digit: the format, and an answer that
    depends on the prompt, never the right one for next/double/prev); `demo: random` on random digits."""
    rng = random.Random(seed)
    examples = []
    if demo not in ("copy", "random"):
        raise EmbedkitError(f"digit_map demo must be copy or random, not '{demo}'")
    for domain in domains:
        if domain not in DIGIT_OPS:
            raise EmbedkitError(f"unknown digit_map domain '{domain}'; choose from {', '.join(DIGIT_OPS)}")
        for d in range(10):
            demo_digit = d if demo == "copy" else rng.randrange(10)
            demo_text = f"<answer>{demo_digit}</answer>"
            examples.append(Example(f"{domain} {d}:", str(DIGIT_OPS[domain](d)), domain, demo_text))
    return Task(examples)


SEARCH_KEYS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "robot", "maple", "ocean",
               "pearl", "zebra"]  # fmt: skip


def search_kv_documents(keys: list[str] | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(key, value) pairs of the toy search environment; values are digits fixed by `seed`."""
    rng = random.Random(seed)
    return [(key, str(rng.randrange(10))) for key in (keys or SEARCH_KEYS)]


def make_index_tool(index_path: str | Path, k: int = 1, max_chars: int = 400) -> Tool:
    """A search tool over an embedkit index: the top-`k` hits' text, joined (truncated to `max_chars`).
    Its `batch` attribute searches a list of queries in one encoder call."""
    from embedkit.index import Index

    index = Index.load(index_path)

    def render(hits: list) -> str:
        return " ".join(hit.text for hit in hits)[:max_chars]

    def search(query: str) -> str:
        return render(index.search(query or " ", k)[0])

    # many rollouts search at once: one encoder call for all of them
    search.batch = lambda queries: [render(h) for h in index.search([q or " " for q in queries], k)]  # type: ignore[attr-defined]
    return search


def build_search_kv_index(out: str | Path, keys: list[str] | None = None, seed: int = 0,
                          model: str = "sentence-transformers/all-MiniLM-L6-v2", encoder: Any = None) -> Path:  # fmt: skip
    """Write the toy environment's documents into a real dense index at `out` (kept if already there);
    pass an already loaded `embedkit.encoding.Encoder` to skip loading `model`."""
    from embedkit.data import Document
    from embedkit.encoding import Encoder, EncoderConfig
    from embedkit.index import build_dense_index

    out = Path(out)
    if (out / "manifest.json").exists():
        return out
    docs = [Document(id=f"kv{i}", text=f"{key} is {value}") for i, (key, value) in enumerate(search_kv_documents(keys, seed))]
    encoder = encoder or Encoder(EncoderConfig(model=model, batch_size=32))
    return build_dense_index(docs, encoder, out, quiet=True, overwrite=True)


@TASKS.register("search_kv")
def search_kv(index: str = "indexes/rl-search-kv", keys: list[str] | None = None, seed: int = 0, k: int = 1,
              build: bool = True) -> Task:  # fmt: skip
    """Needs the dense index at `index`; `build: true` creates it with the bundled MiniLM when missing."""
    if build:
        build_search_kv_index(index, keys, seed)
    tool = make_index_tool(index, k)
    rng = random.Random(seed + 1)
    examples = []
    for key, value in search_kv_documents(keys, seed):
        # the block exactly as the rollout injects it, so warm-up and RL see one format
        demo = f"<search> {key} </search>{information_block(f'{key} is {value}')}<answer> {rng.randrange(10)} </answer>"
        examples.append(Example(f"find {key}:", value, "search", demo))
    return Task(examples, tool)


@TASKS.register("jsonl")
def jsonl(path: str, prompt_field: str = "prompt", answer_field: str = "answer", domain_field: str = "domain",
          demonstration_field: str = "demonstration") -> Task:  # fmt: skip
    from agents.search_agent.questions import answer_list

    examples = []
    for line_no, record in iter_json_lines(path):
        prompt, answer = record.get(prompt_field), record.get(answer_field)
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):  # verl: [{"role": "user", …}]
            prompt = prompt[0].get("content")
        if answer_field == "answer" and (answer is None or isinstance(answer, str)):
            # verl / Search-R1 records hold the answer list elsewhere (extra_info.answer, ground_truth.target);
            # a joined string must not stand in for it.
            answers = answer_list(record, path=path, line=line_no)
            answer = answers if answer is None or len(answers) > 1 else answer
        for field, value in ((prompt_field, prompt), (answer_field, answer)):
            if value is None or value == []:
                raise DataFormatError("missing field", path=path, line=line_no, field=field, fields_found=record)
        examples.append(Example(str(prompt), answer, str(record.get(domain_field, "default")),
                                record.get(demonstration_field)))  # fmt: skip
    if not examples:
        raise DataFormatError("no examples", path=path)
    return Task(examples)
