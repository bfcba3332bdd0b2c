"""A fixed, deterministic corpus of RAG-like chunks for the embedding benchmarks.

Why hand-written and generated here: the benchmark must run offline and give the same texts on
every machine, so figures from different runs compare. Real retrieval corpora are chunks cut
from documents by a sliding window: they start and stop mid-sentence, vary in length, and (for
this project's users) mix English and Chinese. So the chunks below are cut from a pool of
hand-written sentences with a seeded RNG: a chunk starts at a random word (or character) of a
random sentence, runs on through further random sentences of the same language, and stops at a
drawn target length of about 8 to 120 tokens of all-MiniLM-L6-v2's tokenizer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["CHINESE", "ENGLISH", "build_corpus"]

ENGLISH: tuple[str, ...] = (
    "To reset your password, open Settings, choose Security, and follow the link we email to you.",
    "The warranty covers manufacturing defects for two years from the date of purchase.",
    "Refunds are issued to the original payment method within five to seven business days.",
    "If the device does not power on, hold the power button for ten seconds and try again.",
    "The API returns a 429 status code when a client exceeds its rate limit; retry after the "
    "number of seconds given in the Retry-After header.",
    "Each request must carry a bearer token in the Authorization header.",
    "Batch requests of up to two thousand inputs are accepted, but smaller batches give lower latency.",
    "The migration adds a nullable column first, backfills it in chunks, and only then adds the constraint.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Mitochondria produce most of the cell's supply of adenosine triphosphate.",
    "The French Revolution began in 1789 and reshaped the political order of Europe.",
    "The Great Wall was built and rebuilt over many centuries to defend against northern invasions.",
    "Interest rates rose sharply in 2022 as central banks tried to bring inflation under control.",
    "The quarterly report shows revenue up eight percent, driven mainly by subscription growth.",
    "Employees may carry over up to five days of unused annual leave into the next calendar year.",
    "Visitors must sign in at reception and wear their badge at all times while in the building.",
    "Store the medicine below 25 degrees Celsius and keep it out of the reach of children.",
    "Take one tablet twice a day with food; do not exceed the recommended dose.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "Our office is closed on public holidays, but the support line remains open around the clock.",
    "A vector database stores embeddings and finds the nearest neighbours of a query vector.",
    "Retrieval-augmented generation grounds a language model's answer in documents fetched at query time.",
    "Cosine similarity measures the angle between two vectors, ignoring their length.",
    "Chunk long documents into passages of a few hundred tokens before embedding them.",
    "The tenant is responsible for minor repairs, while the landlord handles structural maintenance.",
    "This agreement is governed by the laws of the State of New York.",
    "Preheat the oven to 200 degrees, then bake the bread for thirty-five minutes until golden.",
    "The hiking trail is closed after heavy rain because of the risk of landslides.",
    "Solar panels produce less electricity in winter, when days are short and the sun is low.",
    "Backups run every night at two o'clock and are kept for thirty days.",
    "Kubernetes restarts a container automatically when its liveness probe fails.",
    "The committee will review all applications and announce the results by the end of March.",
)

CHINESE: tuple[str, ...] = (
    "如需重置密码，请打开设置，选择安全选项，然后点击我们发送到您邮箱的链接。",
    "本产品自购买之日起享受两年保修，保修范围仅限于制造缺陷。",
    "退款将在五至七个工作日内退回到您原来的付款账户。",
    "如果设备无法开机，请长按电源键十秒钟后再试一次。",
    "当客户端超过速率限制时，接口会返回状态码四二九，请在等待指定时间后重试。",
    "每个请求都必须在授权头中携带有效的访问令牌。",
    "光合作用把光能转化为化学能，并储存在葡萄糖中。",
    "线粒体为细胞提供了大部分能量，被称为细胞的动力工厂。",
    "长城在许多个世纪里不断修建和重建，用来抵御北方的入侵。",
    "唐朝是中国历史上经济繁荣、文化开放的一个重要时期。",
    "为了控制通货膨胀，各国央行在二零二二年大幅提高了利率。",
    "季度报告显示，收入同比增长百分之八，主要来自订阅业务的增长。",
    "员工每年最多可以将五天未使用的年假结转到下一年。",
    "访客必须在前台登记，并在公司内全程佩戴访客证。",
    "请将药品存放在二十五摄氏度以下，并放在儿童接触不到的地方。",
    "每日两次，每次一片，随餐服用，请勿超过推荐剂量。",
    "开往机场的列车每十五分钟一班，从四号站台出发。",
    "向量数据库存储文本的嵌入向量，并能快速找到与查询最相近的结果。",
    "检索增强生成会先检索相关文档，再让语言模型根据这些文档回答问题。",
    "在生成嵌入之前，应先把长文档切分成几百个词元的段落。",
    "租户负责日常小修，房东负责房屋结构的维护。",
    "烤箱预热到两百度，然后把面包烤三十五分钟，直到表面金黄。",
    "大雨过后山路有滑坡危险，徒步路线将暂时关闭。",
    "系统每天凌晨两点自动备份数据，备份保留三十天。",
    "评审委员会将审核所有申请，并在三月底之前公布结果。",
)


@dataclass(frozen=True)
class _Unit:
    """A piece a chunk may stop after: an English word or one Chinese character."""

    text: str
    cost: float  # estimated tokens of all-MiniLM-L6-v2's WordPiece tokenizer
    glue: str  # what joins it to the previous unit


_CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def _units(sentence: str) -> list[_Unit]:
    """Split a sentence the way the estimate counts it: words for English, characters for Chinese."""
    if _CJK.search(sentence):
        # BERT's tokenizer splits CJK characters (and full-width punctuation) one token each.
        return [_Unit(ch, 1.0, "") for ch in sentence]
    # Short English words are one WordPiece token; longer or numeric ones split into a few.
    return [_Unit(word, 1.0 + len(word) // 7 + word.count("-"), " ") for word in sentence.split()]


def _target_tokens(rng: random.Random) -> int:
    """Chunk lengths as a RAG index has them: some titles and short answers, mostly passages."""
    bucket = rng.random()
    if bucket < 0.25:
        return rng.randint(8, 24)
    if bucket < 0.70:
        return rng.randint(25, 70)
    return rng.randint(71, 118)


def _chunk(rng: random.Random, pool: list[list[_Unit]], mixed_pool: list[list[_Unit]] | None) -> str:
    """One chunk: from a random point of a random sentence, on through more, to a drawn length."""
    # Two specials ([CLS], [SEP]) count towards the model's tokens.
    budget = _target_tokens(rng) - 2
    sentence = rng.choice(pool)
    start = rng.randrange(len(sentence)) if rng.random() < 0.6 else 0
    parts: list[str] = []
    used = 0.0
    units = sentence[start:]
    while True:
        for index, unit in enumerate(units):
            if used + unit.cost > budget and parts:
                return "".join(parts).strip()
            parts.append(("" if index == 0 else unit.glue) + unit.text)
            used += unit.cost
        # Sentence boundary: a bilingual document switches language now and then. Chinese runs on
        # without a space; anything next to English gets one.
        source = mixed_pool if mixed_pool is not None and rng.random() < 0.5 else pool
        units = rng.choice(source)
        if units[0].glue or parts[-1][-1:].isascii():
            parts.append(" ")


def build_corpus(size: int = 2048, seed: int = 20240607) -> list[str]:
    """``size`` distinct chunks, the same for a given seed on every machine and Python version.

    About 65% English, 25% Chinese and 10% bilingual chunks, in shuffled order (so requests and
    batches see a realistic mix of lengths, as from many concurrent users).
    """
    rng = random.Random(seed)
    english = [_units(s) for s in ENGLISH]
    chinese = [_units(s) for s in CHINESE]
    seen: set[str] = set()
    texts: list[str] = []
    while len(texts) < size:
        kind = rng.random()
        if kind < 0.65:
            text = _chunk(rng, english, None)
        elif kind < 0.90:
            text = _chunk(rng, chinese, None)
        else:
            text = _chunk(rng, english, chinese)
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


if __name__ == "__main__":
    for sample in build_corpus(12):
        print(repr(sample))
