"""`embedkit fidelity`: compression-fidelity probes on a CoCoA (compressor-decoder) checkpoint."""

from __future__ import annotations

import argparse
import json

from embedkit.cli._common import add_command

EXAMPLES = """\
  embedkit fidelity --model runs/cocoa/pretrain/model                  # the built-in planted-fact texts
  embedkit fidelity --model runs/cocoa/pretrain/model --texts my_texts.jsonl --out fidelity.json
  embedkit fidelity --model runs/cocoa/pretrain/model --texts notes.txt --max-new-tokens 64 --markdown fidelity.md
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers, "fidelity", run, help="probe what survives compression into the <EOS> embedding",
        description="Compress each text into its <EOS> state, decode it back through the EOS bridge, and\n"
                    "report reconstruction BLEU, exact-token recovery, entity/number preservation, role swaps\n"
                    "(\"Alice hit Bob\" -> \"Bob hit Alice\"), effective rank of the EOS embeddings and mean\n"
                    "decoding entropy. Texts: jsonl of {text, entities, numbers, roles: {agent, action,\n"
                    "patient}}, or a .txt file with one text per line.",
        examples=EXAMPLES,
    )
    parser.add_argument("--model", required=True, help="CoCoA checkpoint (folder or hub id)")
    parser.add_argument("--texts", help="probe texts (default: the built-in planted-fact set)")
    parser.add_argument("--max-new-tokens", type=int, help="decoding limit (default: text length + 8)")
    parser.add_argument("--eos-token", default="<|endoftext|>")
    parser.add_argument("--content-attention", choices=["causal", "bidirectional"], default="causal")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", help="write the full report (with per-text rows) as JSON")
    parser.add_argument("--markdown", help="write the report as a markdown table")


def run(args: argparse.Namespace) -> int:
    from embedkit.fidelity import PLANTED_TEXTS, EosCompressor, read_probe_texts, run_probes
    from embedkit.io import atomic_write

    texts = read_probe_texts(args.texts) if args.texts else PLANTED_TEXTS
    compressor = EosCompressor.from_path(args.model, device=args.device, eos_token=args.eos_token,
                                         content_attention=args.content_attention)
    report = run_probes(compressor, texts, model_name=args.model, max_new_tokens=args.max_new_tokens)
    text = report.summary_markdown()
    print(text)
    if args.out:
        with atomic_write(args.out) as handle:
            json.dump(report.model_dump(), handle, indent=2)
    if args.markdown:
        with atomic_write(args.markdown) as handle:
            handle.write(text + "\n")
    return 0
