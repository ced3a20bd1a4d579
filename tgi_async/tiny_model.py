"""`tgi-async make-tiny-model DIR`: a deterministic random-weight Llama with a locally trained tokenizer.

It is the embedded default model (tests, `make run`, CI): no hub needed, a CPU step takes milliseconds, and it
has what real checkpoints have that the serving path reads: bos/eos/pad, a chat template, 4,096 positions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB_SIZE = 1024
MAX_POSITIONS = 4096
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# A ChatML-style template: system/user/assistant turns, generation prompt on request.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in is was for on with as by at from it this that be are or not have has had but "
    "what all were when we there can who which their said if will each about how up out them then she "
    "many some so these would other into more her two like him see time could no make than first been "
    "its now people my made over did down only way find use may water long little very after words "
    "called just where most know get through back much go good new write our me man too any day same "
    "right look think also around another came come work three word must because does part even place "
    "well such here take why things help put years different away again off went old number great tell "
    "men say small every found still between name should home big give air line set own under read last "
    "never us left end along while might next sound below saw something thought both few those always "
    "looked show large often together asked house world going want school important until form food keep "
    "children feet land side without boy once animals life enough took sometimes four head above kind "
    "began almost live page got earth need far hand high year mother light parts country father let "
    "night following picture being study second eyes soon times story boys since white days ever paper "
    "hard near sentence better best across during today others however sure means knew its try told "
    "young miles sun ways thing whole hear example heard several change answer room sea against top "
    "turned learn point city play toward five using himself usually money model token batch decode "
    "prefill stream latency router shard queue kernel tensor cache block slot async sync"
).split()


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """Deterministic pseudo-English plus digits, punctuation and some non-ASCII, for the BPE trainer."""
    rng = random.Random(seed)
    extra = ["café", "naïve", "日本語", "emoji 🙂", "Ünïcödé", "42", "3.14", "x = y + 1;", "def f(a, b):"]
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(extra))
        sentence = " ".join(words)
        out.append(sentence[0].upper() + sentence[1:] + rng.choice([".", "!", "?", ",", ":"]))
    return out


def build_tokenizer(seed: int):
    """Train a byte-level BPE (GPT-2 style: every byte representable) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[UNK, BOS, EOS, PAD, "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )


def make_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write model (safetensors), tokenizer and generation config to `directory`; deterministic in seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        # NOTE: a wide init makes logits peaked, so greedy argmax is robust to the few-ulp differences
        # between paged attention and the reference path in tests.
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "tgi_async_tiny.json").write_text(json.dumps({"seed": seed}))
    return directory


def cached_tiny_model(cache_dir: str | Path, seed: int = 0) -> Path:
    """The tiny model under `cache_dir`, built on first use (a marker file says it is complete)."""
    directory = Path(cache_dir) / f"tiny-model-seed{seed}"
    if not (directory / "tgi_async_tiny.json").exists():
        make_tiny_model(directory, seed=seed)
    return directory
