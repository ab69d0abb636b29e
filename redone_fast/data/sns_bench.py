"""SNS-Bench reader: the real benchmark's twelve JSON files become evaluation Samples.

SNS-Bench (docs/design.md, "Data"; published at github.com/HC-Guo/SNS-Bench) is a folder of twelve JSON
files, each a list of items whose fields differ by file. The data is never copied into this repository:
it is read from a folder, `REDONE_SNS_BENCH` or `../shared/sns-bench` beside the repository root.

Every item becomes one Sample of task `sns_bench/<file stem>`, split "eval", id "<stem>/<index>":

- prompt: an instruction saying what to do, the item's own text (note, query, question, sentence
  pair, comment) and its candidates where the file has them, the output format, then "Answer:".
  The output format is the one the official SNS-Bench evaluators parse (redone_fast.rewards.sns_bench
  scores exactly as they do): one line; lists comma-separated for Note-Hashtag-multiple and Note-NER,
  " | " between the levels of Note-Taxonomy-multiple's path; a JSON list of strings for Note-CHLW and
  Note-MRC-simple ([] when nothing applies: the official code reads a list literal there); for
  Note-MRC-complex a JSON list of {"Option", "Reason"} objects inside <Result>...</Result>.
- answer: the reference in that same format. Note-Hashtag-multiple's and Note-NER's references become
  "a, b" (NO_ANSWER, "None", if one were empty); Note-CHLW's "['a', 'b']" and Note-MRC-simple's list of
  spans become JSON lists; Note-MRC-complex's answer becomes its <Result> part alone (the official
  evaluator reads nothing else). The scores use the file's own answer (meta raw_answer), as the
  official code does; `answer` is what a model is asked to write.
- reward: the task's default reward from redone_fast.data.tasks (the benchmark's metric, per sample).
- meta: file, index, raw_answer (the file's answer, untouched) and the parsed candidates, if any.

Candidates come as "a, b, c" strings or as list literals "['a', 'b']"; the literals are read by JSON
when they are JSON, otherwise by a small parser (the files do not escape apostrophes inside items:
"['the teacher's book']"). Nothing from the data is ever evaluated as code.

Run `python -m redone_fast.data.sns_bench [folder]` to print the per-file counts.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from redone_fast.data.schema import DataError, Sample, parse_sample
from redone_fast.data.tasks import TASKS

ENV_VAR = "REDONE_SNS_BENCH"
TASK_PREFIX = "sns_bench/"
NO_ANSWER = "None"  # the reference (and the requested output) when nothing in the item applies

# File stem -> number of items (SOURCE.md); 6,658 in all.
SNS_BENCH_FILES: dict[str, int] = {
    "Note-Taxonomy-single": 1205,
    "Note-Taxonomy-multiple": 800,
    "Note-Hashtag-single": 800,
    "Note-Hashtag-multiple": 795,
    "Note-QueryCorr-topic": 800,
    "Note-QueryCorr-explain": 144,
    "Note-MRC-simple": 800,
    "Note-MRC-complex": 227,
    "Note-NER": 517,
    "Note-Gender": 193,
    "Note-CHLW": 297,
    "Note-QueryGen": 80,
}
SNS_BENCH_TOTAL = sum(SNS_BENCH_FILES.values())


def default_root() -> Path:
    """`REDONE_SNS_BENCH` when set, else ../shared/sns-bench relative to the repository root."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    repo_root = Path(__file__).resolve().parents[2]  # redone_fast/data/sns_bench.py -> repository root
    return (repo_root / ".." / "shared" / "sns-bench").resolve()


# --------------------------------------------------------------------------------------------------
# Parsing list-like strings without evaluating them


class _ItemError(ValueError):
    """What is wrong with one item; the loader adds the file and the item index."""


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _scan_list(text: str, start: int) -> tuple[list[str], int]:
    """Read a list of quoted strings that opens at text[start] ("["); returns (items, index after "]").

    Items are quoted with ' or ". A quote ends its item only where it is followed by "]" or by ","
    and the next item's quote; any other quote of the same kind is part of the item, because the
    files write "['the teacher's book']" without escaping. Backslash escapes are honoured.
    """
    if start >= len(text) or text[start] != "[":
        raise ValueError("a list must start with '['")
    items: list[str] = []
    i = _skip_space(text, start + 1)
    if i < len(text) and text[i] == "]":
        return items, i + 1
    while True:
        if i >= len(text) or text[i] not in "'\"":
            raise ValueError(f"expected a quoted item at character {i}")
        quote, i, chars = text[i], i + 1, []
        while True:
            if i >= len(text):
                raise ValueError("unterminated quoted item")
            char = text[i]
            if char == "\\" and i + 1 < len(text):
                chars.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            if char == quote:
                after = _skip_space(text, i + 1)
                if after < len(text) and text[after] == "]":
                    items.append("".join(chars))
                    return items, after + 1
                if after < len(text) and text[after] == ",":
                    following = _skip_space(text, after + 1)
                    if following < len(text) and text[following] == "]":  # trailing comma
                        items.append("".join(chars))
                        return items, following + 1
                    if following < len(text) and text[following] in "'\"":
                        items.append("".join(chars))
                        i = following
                        break
            chars.append(char)
            i += 1


def parse_list_literal(text: str) -> list[str]:
    """The strings of a list literal: JSON ('["a", "b"]') or Python-style ("['a', 'b']")."""
    text = text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    items, end = _scan_list(text, 0)
    if _skip_space(text, end) != len(text):
        raise ValueError(f"unexpected text after the list: {text[end:end + 20]!r}")
    return items


def parse_candidates(text: str) -> list[str]:
    """Candidates in either form the files use: "a, b, c" or a list literal "['a', 'b']"."""
    text = text.strip()
    if text.startswith("["):
        items = parse_list_literal(text)
    else:
        items = text.split(",")
    return [item.strip() for item in items if item.strip()]


def join_list(items: Iterable[str], separator: str = ", ") -> str:
    """A list answer as one line: items stripped, empties dropped, NO_ANSWER when nothing is left."""
    cleaned = [" ".join(item.split()) for item in items]
    cleaned = [item for item in cleaned if item]
    return separator.join(cleaned) if cleaned else NO_ANSWER


def _json_list(items: Iterable[str]) -> str:
    """A list answer as a one-line JSON list of strings (also a Python literal: the official code evals it)."""
    return json.dumps(list(items), ensure_ascii=False)


def _show(items: list[str]) -> str:
    """Candidates for display: comma-separated, semicolons if an item itself holds a comma."""
    return ("; " if any("," in item for item in items) else ", ").join(items)


# --------------------------------------------------------------------------------------------------
# One builder per file: item -> (prompt, answer, extra meta)

Built = tuple[str, str, dict]


def _field(item: Mapping, name: str) -> str:
    if name not in item:
        raise _ItemError(f"missing field {name!r} (fields: {', '.join(sorted(map(str, item)))})")
    value = item[name]
    if not isinstance(value, str):
        raise _ItemError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _ItemError(f"field {name!r} is empty")
    return value.strip()


def _candidates(item: Mapping, name: str) -> list[str]:
    raw = _field(item, name)
    try:
        candidates = parse_candidates(raw)
    except ValueError as exc:
        raise _ItemError(f"field {name!r} is not a candidate list ({exc})") from None
    if not candidates:
        raise _ItemError(f"field {name!r} has no candidates")
    return candidates


def _prompt(instruction: str, blocks: Iterable[str], output: str) -> str:
    return "\n\n".join([instruction, *blocks, output]) + "\nAnswer:"


def _one_of(item: Mapping, allowed: tuple[str, ...]) -> str:
    answer = _field(item, "answer")
    if answer not in allowed:
        raise _ItemError(f"answer {answer!r} is not one of {', '.join(allowed)}")
    return answer


def _taxonomy_single(item: Mapping) -> Built:
    content, candidates = _field(item, "content"), _candidates(item, "candidates")
    prompt = _prompt(
        "Classify the social-media note below into exactly one of the candidate categories.",
        [f"Note:\n{content}", f"Candidate categories: {_field(item, 'candidates')}"],
        "Output only the category, copied exactly from the candidates, on a single line.")
    return prompt, _field(item, "answer"), {"candidates": candidates}


_LEVELS = ("primary", "secondary", "tertiary")


def _taxonomy_multiple(item: Mapping) -> Built:
    content = _field(item, "content")
    levels = {level: _candidates(item, f"candidates_{level}") for level in _LEVELS}
    answer = _field(item, "answer")
    path = [part.strip() for part in answer.split("|")]
    if len(path) != 3 or not all(path):
        raise _ItemError(f"answer {answer!r} is not a three-level path 'primary | secondary | tertiary'")
    prompt = _prompt(
        "Classify the social-media note below into a three-level category path: one primary, one "
        "secondary and one tertiary category, each chosen from its own candidate list.",
        [f"Note:\n{content}",
         "\n".join(f"{level.capitalize()} candidates: {_show(levels[level])}" for level in _LEVELS)],
        'Output the three categories in the order primary | secondary | tertiary, separated by " | " '
        "and copied exactly from the candidates, on a single line.")
    return prompt, " | ".join(path), {"candidates": levels}


def _hashtag_single(item: Mapping) -> Built:
    content, candidates = _field(item, "content"), _candidates(item, "candidates")
    prompt = _prompt(
        "Choose the one hashtag from the candidates that best fits the social-media note below.",
        [f"Note:\n{content}", f"Candidate hashtags: {_field(item, 'candidates')}"],
        "Output only that hashtag, copied exactly from the candidates, on a single line.")
    return prompt, _field(item, "answer"), {"candidates": candidates}


def _hashtag_multiple(item: Mapping) -> Built:
    content, candidates = _field(item, "content"), _candidates(item, "candidates")
    prompt = _prompt(
        "Choose every hashtag from the candidates that fits the social-media note below (one or more).",
        [f"Note:\n{content}", f"Candidate hashtags: {_field(item, 'candidates')}"],
        "Output the chosen hashtags, copied exactly from the candidates and separated by commas, on a "
        "single line.")
    return prompt, join_list(_field(item, "answer").split(",")), {"candidates": candidates}


_RELEVANCE_LEVELS = ("-1", "0", "1", "2", "3")


def _query_corr_topic(item: Mapping) -> Built:
    content = _field(item, "content")  # "```\nQuery: ...\nNote: ...\n```": the query is inside
    prompt = _prompt(
        "Rate how relevant the social-media note is to the search query (both are given below) on "
        "this scale: -1 = unrelated; 0 = shares words with the query but not its topic; 1 = related "
        "topic, but does not meet the query's need; 2 = relevant, meets part of the need; 3 = highly "
        "relevant, fully meets the need.",
        [content],
        "Output only the level (-1, 0, 1, 2 or 3) on a single line.")
    return prompt, _one_of(item, _RELEVANCE_LEVELS), {}


def _query_corr_explain(item: Mapping) -> Built:
    query, note = _field(item, "sentence1"), _field(item, "sentence2")
    prompt = _prompt(
        "Decide whether the social-media note below is relevant to the search query: would a user "
        "who searched for the query find what they were looking for in this note?",
        [f"Query: {query}", f"Note: {note}"],
        "Output only Yes or No on a single line.")
    return prompt, _one_of(item, ("Yes", "No")), {}


def _mrc_simple(item: Mapping) -> Built:
    query, content = _field(item, "query"), _field(item, "content")
    spans = item.get("answer")
    if not isinstance(spans, list) or not all(isinstance(span, str) for span in spans):
        raise _ItemError(f"field 'answer' must be a list of strings, got {type(spans).__name__}")
    prompt = _prompt(
        "Read the social-media note below and answer the query by extracting the passage or passages "
        "of the note that answer it.",
        [f"Query: {query}", f"Note:\n{content}"],
        'Output the extracted passages, copied from the note, as a JSON list of strings on a single line, '
        'e.g. ["first passage", "second passage"]. If the note does not answer the query, output [].')
    return prompt, _json_list(spans), {}


_RESULT = re.compile(r"<Result>(.*?)</Result>", re.S)


def _result_entries(answer: str) -> list[dict]:
    """The {"Option", "Reason"} objects of the answer's last <Result>...</Result> (a JSON list)."""
    found = _RESULT.findall(answer)
    if not found:
        raise _ItemError("answer has no <Result>...</Result>")
    try:
        entries = json.loads(found[-1])
    except json.JSONDecodeError as exc:
        raise _ItemError(f"the answer's <Result> is not JSON ({exc.msg})") from None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("Option"), str) and isinstance(e.get("Reason"), str)
            for e in entries):
        raise _ItemError("the answer's <Result> is not a list of {\"Option\": str, \"Reason\": str}")
    return [{"Option": e["Option"], "Reason": e["Reason"]} for e in entries]


def _mrc_complex(item: Mapping) -> Built:
    content = _field(item, "content")  # "Query: ...\nLevel: ...\n\nDoc:\n<Doc>...</Doc>"
    entries = _result_entries(_field(item, "answer"))
    prompt = _prompt(
        "Below are a search query, the level (kind) of answer it asks for, and a document. Find every "
        "item in the document that answers the query at that level (for example each book title, "
        "brand or product name the query asks for).",
        [content],
        'Output the items on a single line as a JSON list inside <Result> and </Result>, one object per '
        'item: its name copied from the document ("Option") and a short reason taken from the document '
        '("Reason"), e.g. <Result>[{"Option": "name", "Reason": "why"}]</Result>. If the document '
        'contains none, output <Result>[]</Result>.')
    return prompt, f"<Result>{json.dumps(entries, ensure_ascii=False)}</Result>", {}


def _ner(item: Mapping) -> Built:
    question, content = _field(item, "question"), _field(item, "content")
    prompt = _prompt(
        "Extract named entities from the social-media text below, as the question asks.",
        [f"Question: {question}", f"Text:\n{content}"],
        "Output every such entity, copied from the text and separated by commas, on a single line.")
    return prompt, join_list(_field(item, "answer").split(",")), {}


def _gender(item: Mapping) -> Built:
    content = _field(item, "content")
    prompt = _prompt(
        "Decide whether the social-media note below is gender-sensitive: does its appeal depend "
        "strongly on the reader's gender (it mainly attracts, or mainly concerns, one gender)?",
        [f"Note:\n{content}"],
        "Output only Yes or No on a single line.")
    return prompt, _one_of(item, ("Yes", "No")), {}


# The comment's options follow a header such as "Possible highlight word options list:" (the wording
# varies: highlighted / words / term / "are:"), then a list literal, then the file's own instruction.
_CHLW_OPTIONS = re.compile(r"\b(?:possible|potential)\s+highlight[^\n\[:]*:\s*(?=\[)", re.I)


def _chlw(item: Mapping) -> Built:
    content = _field(item, "content")
    headers = list(_CHLW_OPTIONS.finditer(content))
    if not headers:
        raise _ItemError("field 'content' has no highlight-word options list")
    header = headers[-1]
    try:
        options, _ = _scan_list(content, header.end())
        words = parse_list_literal(_field(item, "answer"))
    except ValueError as exc:
        raise _ItemError(f"cannot read the options or the answer as a list ({exc})") from None
    comment = content[:header.start()].strip()
    if not comment:
        raise _ItemError("field 'content' has no comment before its options list")
    options = [option.strip() for option in options if option.strip()]
    prompt = _prompt(
        "Below is a comment from a social-media note's comment thread, with candidate words taken "
        "from it. Choose the candidate words that should be highlighted in the comment (as links a "
        "reader can tap to search for them); choose none if no candidate deserves it.",
        [comment, f"Candidate words: {_show(options) if options else '(none)'}"],
        'Output the chosen words, copied exactly from the candidates, as a JSON list of strings on a '
        'single line, e.g. ["first word", "second word"]. If none should be highlighted, output [].')
    return prompt, _json_list(words), {"candidates": options}


def _query_gen(item: Mapping) -> Built:
    content = _field(item, "content")
    prompt = _prompt(
        "Write the search query that a user of the platform would type to find the social-media note "
        "below.",
        [content],
        "Output only the query, on a single line.")
    return prompt, " ".join(_field(item, "answer").split()), {}


BUILDERS: dict[str, Callable[[Mapping], Built]] = {
    "Note-Taxonomy-single": _taxonomy_single,
    "Note-Taxonomy-multiple": _taxonomy_multiple,
    "Note-Hashtag-single": _hashtag_single,
    "Note-Hashtag-multiple": _hashtag_multiple,
    "Note-QueryCorr-topic": _query_corr_topic,
    "Note-QueryCorr-explain": _query_corr_explain,
    "Note-MRC-simple": _mrc_simple,
    "Note-MRC-complex": _mrc_complex,
    "Note-NER": _ner,
    "Note-Gender": _gender,
    "Note-CHLW": _chlw,
    "Note-QueryGen": _query_gen,
}
assert set(BUILDERS) == set(SNS_BENCH_FILES)


# --------------------------------------------------------------------------------------------------
# Loading


def _stem(name: str) -> str:
    stem = name[len(TASK_PREFIX):] if name.startswith(TASK_PREFIX) else name
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    if stem not in SNS_BENCH_FILES:
        raise DataError(f"unknown SNS-Bench file {name!r} (known: {', '.join(SNS_BENCH_FILES)})")
    return stem


def _read_items(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: no such SNS-Bench file")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of items, got {type(items).__name__}")
    if not items:
        raise DataError(f"{path}: no items (empty list)")
    return items


def _load_file(path: Path, stem: str) -> list[Sample]:
    task = TASK_PREFIX + stem
    reward = TASKS[task].reward
    reward = {"name": reward["name"], "params": dict(reward.get("params", {}))}
    samples = []
    for index, item in enumerate(_read_items(path)):
        try:
            if not isinstance(item, dict):
                raise _ItemError(f"expected a JSON object, got {type(item).__name__}")
            prompt, answer, extra = BUILDERS[stem](item)
            record = {"task": task, "prompt": prompt, "answer": answer, "reward": reward, "split": "eval",
                      "id": f"{stem}/{index}",
                      "meta": {"file": path.name, "index": index, "raw_answer": item["answer"], **extra}}
            samples.append(parse_sample(record))
        except (_ItemError, DataError) as exc:
            raise DataError(f"{path}: item {index}: {exc}") from None
    expected = SNS_BENCH_FILES[stem]
    if len(samples) != expected:
        warnings.warn(f"{path}: {len(samples)} items, SNS-Bench has {expected}: another version of the file?",
                      stacklevel=3)
    return samples


def load_sns_bench(root: str | Path | None = None, *, files: Iterable[str] | None = None) -> dict[str, list[Sample]]:
    """Samples per task ("sns_bench/<stem>"), in SNS_BENCH_FILES order.

    root: the folder holding the JSON files (default: default_root()). files: the stems to read
    (also accepted as "sns_bench/<stem>" or "<stem>.json"); default all twelve. A missing folder or
    file, or a malformed item, raises DataError naming the path (and the item's index).
    """
    root = Path(root).expanduser().resolve() if root is not None else default_root()
    if not root.is_dir():
        raise DataError(f"{root}: no SNS-Bench folder here; get the data/ folder of github.com/HC-Guo/SNS-Bench "
                        f"and point {ENV_VAR} at it")
    wanted = set(SNS_BENCH_FILES) if files is None else {_stem(name) for name in files}
    samples = {}
    for stem in SNS_BENCH_FILES:
        if stem in wanted:
            samples[TASK_PREFIX + stem] = _load_file(root / f"{stem}.json", stem)
    return samples


def summary(samples_by_task: Mapping[str, list[Sample]]) -> list[tuple[str, int]]:
    """(task, number of samples) per task, in the mapping's order."""
    return [(task, len(samples)) for task, samples in samples_by_task.items()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else None
    try:
        samples = load_sns_bench(root)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    counts = summary(samples)
    width = max(len(task) for task, _ in counts)
    for task, count in counts:
        print(f"{task:<{width}}  {count:>5}  ({TASKS[task].reward['name']})")
    print(f"{'total':<{width}}  {sum(count for _, count in counts):>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
