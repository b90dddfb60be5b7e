"""Two synthetic corpora over one vocabulary, for the DAPT benchmark (bench/bench_dapt.py).

    python -m bench.dapt_corpora --out-dir D [--general-docs N] [--domain-docs N] [--seed S]

writes ``D/general.txt``, ``D/domain.txt`` (documents separated by a blank line, one sentence per
line) and ``D/vocab.txt`` (one ERNIE-style vocab covering both), and prints how different they are.

* **general**: the project's toy corpus (``data_tools.toy_corpus``: everyday news-like sentences
  about research, companies, cities...; slots filled independently), in which 3% of the sentences
  are clinical sentences of the domain generator, as a web crawl holds a little medical text.
  So the domain's words are in the general corpus, but rare.
* **domain**: clinical case notes. Each document follows one patient with one disease, in the order
  of a note (admission, history, symptoms, examination, diagnosis, treatment, progress, advice),
  and a fixed knowledge table ties every disease to its symptoms, drugs, tests and organ: the
  structure a masked LM can learn (which drug goes with which disease, across sentences). The notes
  use the general corpus's grammar words (times, connectors, some subjects) but mostly their own
  vocabulary: diseases, drugs, symptoms, departments, doses ("500 mg").

Both are deterministic in their seed. `divergence(...)` measures the difference on token
unigrams (Jensen-Shannon divergence in bits and the overlap of the most frequent tokens, the
measure Gururangan et al. 2020 use for their domains). Nothing here imports paddle.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

from data_tools import toy_corpus as toy
from data_tools.vocab import SPECIAL_TOKENS, is_wwm_cjk_char

# Share of the general corpus's sentences that come from the domain generator (fixed a priori, not tuned).
GENERAL_DOMAIN_SHARE = 0.03

# disease -> (symptoms, drugs, tests, organ)
KNOWLEDGE: Dict[str, tuple] = {
    "糖尿病": (["口渴", "多尿", "乏力"], ["胰岛素", "二甲双胍"], ["血糖", "糖化血红蛋白"], "胰腺"),
    "高血压": (["头痛", "眩晕", "心悸"], ["氨氯地平", "缬沙坦"], ["血压", "心电图"], "血管"),
    "肺炎": (["发热", "咳嗽", "咳痰"], ["阿莫西林", "头孢曲松"], ["胸片", "血常规"], "肺部"),
    "哮喘": (["喘息", "胸闷", "咳嗽"], ["沙丁胺醇", "布地奈德"], ["肺功能", "胸片"], "支气管"),
    "胃炎": (["腹痛", "恶心", "反酸"], ["奥美拉唑", "铝碳酸镁"], ["胃镜", "呼气试验"], "胃黏膜"),
    "肝炎": (["黄疸", "乏力", "食欲不振"], ["恩替卡韦", "干扰素"], ["肝功能", "病毒载量"], "肝脏"),
    "贫血": (["乏力", "面色苍白", "头晕"], ["硫酸亚铁", "叶酸"], ["血常规", "骨髓穿刺"], "骨髓"),
    "痛风": (["关节肿痛", "红肿", "发热"], ["秋水仙碱", "别嘌醇"], ["血尿酸", "关节超声"], "关节"),
    "心衰": (["气促", "水肿", "乏力"], ["呋塞米", "地高辛"], ["心脏超声", "脑钠肽"], "心脏"),
    "癫痫": (["抽搐", "意识丧失", "头痛"], ["丙戊酸钠", "卡马西平"], ["脑电图", "头颅磁共振"], "大脑"),
    "抑郁症": (["失眠", "情绪低落", "食欲减退"], ["舍曲林", "氟西汀"], ["量表评估", "甲状腺功能"], "神经"),
    "肾炎": (["血尿", "蛋白尿", "水肿"], ["泼尼松", "环磷酰胺"], ["尿常规", "肾穿刺"], "肾脏"),
    "甲亢": (["心悸", "消瘦", "多汗"], ["甲巯咪唑", "普萘洛尔"], ["甲状腺功能", "甲状腺超声"], "甲状腺"),
    "结核": (["低热", "盗汗", "咳嗽"], ["异烟肼", "利福平"], ["痰涂片", "胸部ct"], "肺部"),
    "偏头痛": (["头痛", "畏光", "呕吐"], ["布洛芬", "舒马普坦"], ["头颅ct", "神经检查"], "大脑"),
    "鼻炎": (["鼻塞", "流涕", "打喷嚏"], ["氯雷他定", "糠酸莫米松"], ["过敏原检测", "鼻内镜"], "鼻腔"),
}
DISEASES = sorted(KNOWLEDGE)
PATIENTS = ["患者", "病人", "男性患者", "女性患者", "老年患者", "患儿"]
DOCTORS = ["主治医师", "住院医师", "护士", "专科医生", "医生"]
DEPARTMENTS = ["内科", "急诊科", "呼吸科", "心内科", "消化科", "神经科", "儿科", "门诊"]
CHANGES = ["明显缓解", "有所减轻", "逐渐加重", "未见好转", "基本消失"]
FINDINGS = ["轻度异常", "明显升高", "轻度升高", "未见异常", "炎症改变", "结构紊乱"]
THERAPIES = ["对症治疗", "饮食控制", "康复训练", "物理治疗", "手术治疗", "定期随访"]
ADVICE = ["低盐饮食", "规律作息", "按时服药", "避免劳累", "戒烟限酒", "适量运动"]
FREQS = ["每日一次", "每日两次", "每日三次", "每晚一次", "必要时"]
DOSES = [5, 10, 20, 25, 50, 100, 200, 250, 500]
PERIODS = ["一周", "两周", "一个月", "三个月", "半年"]
# grammar shared with the general corpus (its time words and connectors)
SHARED_TIMES = toy.TIMES
SHARED_CONNECTORS = ["因此", "但是", "同时", "然后", "所以", "另外"]


def _pick_other(rng: random.Random, items: Sequence[str], not_this: str) -> str:
    while True:
        x = rng.choice(items)
        if x != not_this:
            return x


def _case_note(rng: random.Random) -> List[str]:
    """One clinical note: one patient, one disease, sections in a note's order (some optional)."""
    disease = rng.choice(DISEASES)
    symptoms, drugs, tests, organ = KNOWLEDGE[disease]
    patient = rng.choice(PATIENTS)
    s1, s2 = rng.sample(symptoms, 2)
    drug, test = rng.choice(drugs), rng.choice(tests)
    out = [f"{patient}，{rng.randint(18, 90)}岁，因{s1}{rng.randint(2, 30)}天就诊于{rng.choice(DEPARTMENTS)}。"]
    if rng.random() < 0.6:
        other = _pick_other(rng, DISEASES, disease)
        out.append(f"既往有{other}病史，长期服用{rng.choice(KNOWLEDGE[other][1])}。")
    out.append(f"{patient}自述{s1}伴{s2}，{rng.choice(SHARED_TIMES)}{rng.choice(CHANGES)}。")
    out.append(f"查体发现{organ}{rng.choice(FINDINGS)}，{test}提示{rng.choice(FINDINGS)}。")
    out.append(f"结合{test}结果，诊断为{disease}。")
    out.append(f"给予{drug} {rng.choice(DOSES)} mg {rng.choice(FREQS)}口服，并{rng.choice(THERAPIES)}。")
    for _ in range(rng.randint(0, 3)):
        s = rng.choice(symptoms)
        out.append(f"{rng.choice(SHARED_CONNECTORS)}治疗{rng.randint(2, 14)}天后，{s}{rng.choice(CHANGES)}，"
                   f"复查{rng.choice(tests)}{rng.choice(FINDINGS)}。")
    if rng.random() < 0.5:
        d2 = _pick_other(rng, drugs, drug) if len(drugs) > 1 else drug
        out.append(f"{disease}患者常出现{s1}和{s2}，{drug}和{d2}是常用药物。")
    out.append(f"{rng.choice(DOCTORS)}建议{patient}{rng.choice(ADVICE)}，{rng.choice(PERIODS)}后复查{test}。")
    return out


def domain_sentence(rng: random.Random) -> str:
    """One sentence of a clinical note (for the general corpus's small domain share)."""
    return rng.choice(_case_note(rng))


def general_documents(num_docs: int, seed: int = 1234, domain_share: float = GENERAL_DOMAIN_SHARE) -> List[List[str]]:
    docs = toy.generate_documents(num_docs, seed)
    rng = random.Random(seed + 7919)
    return [[domain_sentence(rng) if rng.random() < domain_share else s for s in doc] for doc in docs]


def domain_documents(num_docs: int, seed: int = 4321) -> List[List[str]]:
    rng = random.Random(seed)
    return [_case_note(rng) for _ in range(num_docs)]


def _domain_strings() -> List[str]:
    words: List[str] = []
    for disease, (symptoms, drugs, tests, organ) in KNOWLEDGE.items():
        words += [disease, organ] + symptoms + drugs + tests
    words += PATIENTS + DOCTORS + DEPARTMENTS + CHANGES + FINDINGS + THERAPIES + ADVICE + FREQS + PERIODS
    # the templates' own characters
    words += ["岁因天就诊于", "既往有病史长期服用", "自述伴", "查体发现提示", "结合结果诊断为", "给予口服并",
              "治疗天后复查", "患者常出现和是常用药物", "建议后复查"]
    return words


def vocab_tokens() -> List[str]:
    """The shared vocab: specials, punctuation, digits, letters, English pieces, every CJK character of
    both generators, then the ``##`` continuation forms (the toy vocab's layout)."""
    general_words = (toy.SUBJECTS + toy.ADVERBS + toy.VERBS + toy.OBJECTS + toy.PLACES + toy.TIMES
                     + toy.ADJECTIVES + toy.CONNECTORS + toy.TEMPLATES)
    cjk = sorted({ch for w in general_words + _domain_strings() for ch in w if is_wwm_cjk_char(ch)})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    toks: List[str] = list(SPECIAL_TOKENS)
    seen = set(toks)
    for t in toy.PUNCT + digits + letters + toy.ENGLISH_PIECES + cjk + ["##" + c for c in cjk] \
            + ["##" + t for t in letters + digits]:
        if t not in seen:
            seen.add(t)
            toks.append(t)
    return toks


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _body(docs: List[List[str]]) -> str:
    return "\n\n".join("\n".join(d) for d in docs) + "\n"


def write_corpora(out_dir: str, general_docs: int = 6000, domain_docs: int = 3000, seed: int = 1234) -> Dict[str, str]:
    """Write general.txt, domain.txt and vocab.txt into out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"general": os.path.join(out_dir, "general.txt"), "domain": os.path.join(out_dir, "domain.txt"),
             "vocab": os.path.join(out_dir, "vocab.txt")}
    _write(paths["general"], _body(general_documents(general_docs, seed)))
    _write(paths["domain"], _body(domain_documents(domain_docs, seed + 1)))
    _write(paths["vocab"], "\n".join(vocab_tokens()) + "\n")
    return paths


# ---------------------------------------------------------------- divergence ---

def read_documents(path: str) -> List[List[str]]:
    """The documents of a text corpus written by `write_corpora` (blank line between documents)."""
    with open(path, encoding="utf-8") as f:
        return [[s for s in block.split("\n") if s.strip()] for block in f.read().split("\n\n") if block.strip()]


def token_counts(docs: Iterable[Sequence[str]], vocab_file: str) -> Counter:
    """Unigram counts of token ids (the project's WordPiece tokenizer, no whole-word marks)."""
    from data_tools.tokenizer import FastWordPieceTokenizer

    tok = FastWordPieceTokenizer(vocab_file)
    counts: Counter = Counter()
    for doc in docs:
        for sentence in doc:
            counts.update(tok.encode(sentence))
    return counts


def divergence(p_counts: Counter, q_counts: Counter, top: int = 50) -> Dict[str, float]:
    """How different two unigram distributions are.

    jsd_bits: Jensen-Shannon divergence, base 2 (0 = identical, 1 = disjoint supports);
    top_overlap: share of the `top` most frequent tokens of one that are also among the other's `top`;
    q_mass_rare_in_p: probability mass of q on tokens whose frequency in p is below a tenth of theirs in q.
    """
    keys = set(p_counts) | set(q_counts)
    np_, nq = sum(p_counts.values()), sum(q_counts.values())
    jsd = 0.0
    rare = 0.0
    for k in keys:
        p, q = p_counts.get(k, 0) / np_, q_counts.get(k, 0) / nq
        m = (p + q) / 2
        if p > 0:
            jsd += 0.5 * p * math.log2(p / m)
        if q > 0:
            jsd += 0.5 * q * math.log2(q / m)
        if q > 0 and p < q / 10:
            rare += q
    top_p = {k for k, _ in p_counts.most_common(top)}
    top_q = {k for k, _ in q_counts.most_common(top)}
    return {"jsd_bits": jsd, "top_overlap": len(top_p & top_q) / max(1, min(top, len(top_p), len(top_q))),
            "q_mass_rare_in_p": rare, "top": top}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dapt_corpora", description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--general-docs", type=int, default=6000)
    p.add_argument("--domain-docs", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    paths = write_corpora(a.out_dir, a.general_docs, a.domain_docs, a.seed)
    d = divergence(token_counts(read_documents(paths["general"]), paths["vocab"]),
                   token_counts(read_documents(paths["domain"]), paths["vocab"]))
    print(f"wrote {paths['general']}, {paths['domain']}, {paths['vocab']}; general vs domain: "
          f"JSD {d['jsd_bits']:.3f} bits, top-{d['top']} overlap {d['top_overlap']:.0%}, "
          f"domain mass on tokens rare in general {d['q_mass_rare_in_p']:.0%}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
