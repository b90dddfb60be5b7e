"""Deterministic synthetic Chinese+English corpus and matching ERNIE-style vocab.

    python -m data_tools.toy_corpus --out-dir D [--docs N] [--seed S] [--format txt|jsonl]

writes ``D/corpus.txt`` (documents separated by a blank line, one sentence per
line; or ``D/corpus.jsonl`` with ``{"text": ...}``) and ``D/vocab.txt``
(``[PAD] [CLS] [SEP] [MASK] [UNK]`` first, then punctuation, digits, English
wordpieces, CJK characters and their ``##`` continuation forms).  The sentences
are built from common Chinese words that jieba segments into multi-character
words, so whole-word masking has something to do.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import List, Optional

from .vocab import SPECIAL_TOKENS

SUBJECTS = ["我们", "他们", "研究人员", "学生", "老师", "医生", "工程师", "公司", "政府", "科学家",
            "记者", "专家", "用户", "团队", "企业", "学校", "医院", "作者", "农民", "朋友"]
ADVERBS = ["经常", "已经", "正在", "非常", "一直", "逐渐", "积极", "认真", "努力", "共同", "迅速", "主要"]
VERBS = ["研究", "开发", "使用", "讨论", "分析", "提高", "建设", "改善", "推动", "支持", "发现", "管理",
         "学习", "设计", "评估", "完成", "参加", "解决", "保护", "介绍", "训练", "优化"]
OBJECTS = ["技术", "经济", "模型", "数据", "问题", "方法", "系统", "市场", "环境", "教育", "文化", "历史",
           "语言", "能力", "质量", "服务", "产品", "项目", "资源", "社会", "健康", "安全", "网络", "计算机",
           "人工智能", "自然语言", "机器学习", "深度学习", "信息", "科学", "知识", "工作", "生活", "发展"]
PLACES = ["北京", "上海", "广州", "深圳", "中国", "美国", "欧洲", "农村", "城市", "大学", "实验室"]
TIMES = ["今天", "去年", "明年", "最近", "目前", "过去", "未来", "现在", "以前", "后来"]
ADJECTIVES = ["重要", "复杂", "简单", "有效", "稳定", "快速", "传统", "先进", "丰富", "准确", "困难", "明显"]
CONNECTORS = ["因此", "但是", "而且", "同时", "然后", "所以", "另外", "虽然"]
ENGLISH = ["model", "data", "training", "learning", "network", "python", "paddle", "gpu", "cluster",
           "token", "ernie", "transformer", "attention", "batch", "dataset", "pretraining", "slurm",
           "node", "checkpoint", "tokenizer", "masking", "sentence", "words", "trained", "networks"]
ENGLISH_VERBS = ["uses", "needs", "improves", "reads", "builds", "checks", "learns", "splits"]

TEMPLATES = [
    "{time}，{subj}{adv}{verb}{obj}。",
    "{subj}在{place}{verb}{adj}的{obj}。",
    "{conn}{subj}{adv}使用 {eng} {verb}{obj}。",
    "{place}的{obj}{adv}{adj}，{subj}{verb}{obj2}。",
    "{subj}认为{obj}非常{adj}，而且{obj2}也很{adj2}。",
    "在{year}年，{subj}{verb}了{num}个{obj}项目。",
    "The {eng} {engv} the {eng2} for {obj}.",
    "{subj}和{subj2}一起{verb}{obj}、{obj2}和{obj3}。",
    "{time}{subj}{verb}的 {eng} {eng2} 在{place}很{adj}！",
    "为什么{obj}这么{adj}？{subj}正在{verb}这个问题。",
]

ENGLISH_PIECES = ["the", "for", "model", "data", "train", "learn", "net", "python", "paddle", "gpu",
                  "cluster", "token", "ernie", "trans", "attention", "batch", "set", "pre", "slurm",
                  "node", "check", "point", "mask", "sentence", "word", "use", "need", "improve", "read",
                  "build", "learns", "split", "##ing", "##s", "##ed", "##er", "##work", "##works",
                  "##former", "##set", "##izer", "##training", "##point", "##es", "##d"]
PUNCT = list("，。、：；！？“”（）") + list(".,;:!?'\"()-/%[]{}<>=+*&#@_~`^|\\$")


def _sentence(rng: random.Random) -> str:
    t = rng.choice(TEMPLATES)
    return t.format(
        time=rng.choice(TIMES), subj=rng.choice(SUBJECTS), subj2=rng.choice(SUBJECTS),
        adv=rng.choice(ADVERBS), verb=rng.choice(VERBS), obj=rng.choice(OBJECTS),
        obj2=rng.choice(OBJECTS), obj3=rng.choice(OBJECTS), place=rng.choice(PLACES),
        adj=rng.choice(ADJECTIVES), adj2=rng.choice(ADJECTIVES), conn=rng.choice(CONNECTORS),
        eng=rng.choice(ENGLISH), eng2=rng.choice(ENGLISH), engv=rng.choice(ENGLISH_VERBS),
        year=rng.randint(1990, 2030), num=rng.randint(2, 99))


def generate_documents(num_docs: int, seed: int = 1234, min_sents: int = 1, max_sents: int = 14) -> List[List[str]]:
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        k = rng.randint(min_sents, max_sents)
        docs.append([_sentence(rng) for _ in range(k)])
    return docs


def _template_chars() -> List[str]:
    chars = set()
    words = (SUBJECTS + ADVERBS + VERBS + OBJECTS + PLACES + TIMES + ADJECTIVES + CONNECTORS + TEMPLATES)
    for w in words:
        for ch in w:
            if "\u4e00" <= ch <= "\u9fa5":
                chars.add(ch)
    return sorted(chars)


def build_vocab_tokens(with_cjk_continuations: bool = True) -> List[str]:
    cjk = _template_chars()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    toks: List[str] = list(SPECIAL_TOKENS)
    seen = set(toks)

    def add(t: str) -> None:
        if t not in seen:
            seen.add(t)
            toks.append(t)

    for t in PUNCT + digits + letters + ENGLISH_PIECES + cjk:
        add(t)
    if with_cjk_continuations:
        for ch in cjk:
            add("##" + ch)
    for t in letters + digits:
        add("##" + t)
    return toks


def write_toy_corpus(out_dir: str, docs: int = 3000, seed: int = 1234, fmt: str = "txt",
                     with_cjk_continuations: bool = True) -> dict:
    """Write the corpus and vocab; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    documents = generate_documents(docs, seed)
    if fmt == "jsonl":
        corpus = os.path.join(out_dir, "corpus.jsonl")
        body = "".join(json.dumps({"text": "\n".join(d)}, ensure_ascii=False) + "\n" for d in documents)
    elif fmt == "txt":
        corpus = os.path.join(out_dir, "corpus.txt")
        body = "\n\n".join("\n".join(d) for d in documents) + "\n"
    else:
        raise ValueError(f"unknown format {fmt!r} (txt or jsonl)")
    vocab = os.path.join(out_dir, "vocab.txt")
    for path, text in ((corpus, body), (vocab, "\n".join(build_vocab_tokens(with_cjk_continuations)) + "\n")):
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    return {"corpus": corpus, "vocab": vocab, "docs": docs, "bytes": len(body.encode("utf-8"))}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_tools.toy_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--docs", type=int, default=3000, help="number of documents (default 3000, about 1.2 MB)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--format", choices=["txt", "jsonl"], default="txt")
    a = p.parse_args(argv)
    if a.docs < 1:
        p.error("--docs must be >= 1")
    info = write_toy_corpus(a.out_dir, a.docs, a.seed, a.format)
    print(f"wrote {info['corpus']} ({info['docs']} docs, {info['bytes'] / 1e6:.2f} MB) and {info['vocab']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
