"""Search agents over any `Retriever` (Search-R1 protocol), with an LLM or a deterministic policy.

    from agents.search_agent import AgentConfig, HeuristicPolicy, SearchAgent, load_questions, summarize
    from agents.retrieval import IndexRetriever

    agent = SearchAgent(HeuristicPolicy(), IndexRetriever.from_path("indexes/hotpotqa"), AgentConfig())
    trajectories = agent.run(load_questions("questions.jsonl"))
    print(summarize(trajectories))
"""

from agents.search_agent.agent import SearchAgent, score
from agents.search_agent.config import AgentConfig
from agents.search_agent.evaluate import evaluate, format_report
from agents.search_agent.format import (
    INFORMATION_TEMPLATE,
    Action,
    information_block,
    parse_action,
    render_information,
    render_passages,
    restore_stop,
)
from agents.search_agent.policy import HeuristicPolicy, LLMPolicy, Policy
from agents.search_agent.questions import Question, load_questions
from agents.search_agent.resilient import ResilientRetriever, RetrievalResult
from agents.search_agent.trajectory import (
    Trajectory,
    Turn,
    read_trajectories,
    summarize,
    write_trajectories,
)

__all__ = [
    "INFORMATION_TEMPLATE",
    "Action",
    "AgentConfig",
    "HeuristicPolicy",
    "LLMPolicy",
    "Policy",
    "Question",
    "ResilientRetriever",
    "RetrievalResult",
    "SearchAgent",
    "Trajectory",
    "Turn",
    "evaluate",
    "format_report",
    "information_block",
    "load_questions",
    "parse_action",
    "read_trajectories",
    "render_information",
    "render_passages",
    "restore_stop",
    "score",
    "summarize",
    "write_trajectories",
]
