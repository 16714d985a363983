"""A Lucene index built by `embedkit index build --kind bm25` stores each document's raw JSON, as Search-R1 and
FlashRAG read it.

Their BM25 retriever opens the Lucene folder with pyserini's `LuceneSearcher`, checks that
`searcher.doc(0).raw()` is not None (else it wants the corpus file too), and turns each hit into
`json.loads(searcher.doc(hit.docid).raw())["contents"]`, whose first line is the title and the rest the text.
embedkit's index used to store no raw documents, so `raw()` was None. The reader here is a separate Python
process that imports pyserini and nothing of embedkit, as Search-R1's retrieval server does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from embedkit.lexical.java import java_available
from tests.helpers import write_jsonl
from tests.test_index_integrity import embedkit

pytestmark = [pytest.mark.slow, pytest.mark.needs_java,
              pytest.mark.skipif(not java_available(), reason="pyserini needs a Java 21+ runtime")]

RECORDS = [
    {"_id": "doc-otter", "title": "Otter", "text": "The otter swims in cold rivers and eats fish."},
    {"_id": "doc-heron", "title": "Heron", "text": "The heron stands still in shallow water."},
    {"_id": "doc-untitled", "text": "A lynx hunts hares in the snowy forest."},
]

#: Search-R1's BM25Retriever (search_r1/search/retrieval_server.py), reduced to what it does with the index.
SEARCH_R1_READER = """
import json, sys
from pyserini.search.lucene import LuceneSearcher
searcher = LuceneSearcher(sys.argv[1])
contain_doc = searcher.doc(0).raw() is not None
answers = []
for query in sys.argv[2:]:
    hits = searcher.search(query, 2)
    answers.append([{"docid": hit.docid, "raw": json.loads(searcher.doc(hit.docid).raw())} for hit in hits])
print(json.dumps({"contain_doc": contain_doc, "answers": answers}))
"""


def search_r1_read(lucene_folder, *queries: str) -> dict:
    from embedkit.lexical.java import ensure_jvm

    env = {**os.environ, "JAVA_HOME": str(ensure_jvm().home),
           "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "unused")}  # pyserini's import builds an OpenAI client
    result = subprocess.run([sys.executable, "-c", SEARCH_R1_READER, str(lucene_folder), *queries],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_search_r1_reads_raw_documents_from_the_lucene_index(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", RECORDS)
    built = embedkit("index", "build", "--kind", "bm25", "--corpus", corpus, "--out", tmp_path / "idx", "--quiet")
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["settings"]["backend"] == "pyserini"  # auto takes pyserini where Java 21+ is found

    read = search_r1_read(tmp_path / "idx" / "lucene", "otter rivers fish", "lynx snowy forest")
    assert read["contain_doc"] is True  # Search-R1 then reads documents from the index, not the corpus
    otter, lynx = (answer[0] for answer in read["answers"])
    # The id, and Search-R1's `contents`: title on the first line, text after (embedkit's /retrieve gives the same).
    assert otter["docid"] == "doc-otter"
    assert otter["raw"] == {"id": "doc-otter", "contents": "Otter\nThe otter swims in cold rivers and eats fish."}
    assert lynx["docid"] == "doc-untitled"
    assert lynx["raw"] == {"id": "doc-untitled", "contents": "A lynx hunts hares in the snowy forest."}

    verified = embedkit("index", "verify", tmp_path / "idx")  # the stored documents are recorded like every file
    assert verified.returncode == 0, verified.stderr
