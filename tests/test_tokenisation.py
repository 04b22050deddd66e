"""Prompt + target tokens are those of the whole text, for SentencePiece (LLaMA-2 style), byte-level BPE (tiny_world),
LLaMA-3's pre-tokenizer and SmolLM2's tokenizer: no stage teaches or measures a whitespace token that the text itself
does not have."""
import functools
import io

import pytest
import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerFast

from sft_knowledge.config import ModelError, TrainConfig
from sft_knowledge.data.facts import Fact
from sft_knowledge.decoding import encode_examples, encode_prompts, first_target_tokens, qa_prompt, qa_text
from sft_knowledge.pretrain import train_tokenizer
from sft_knowledge.train import sft_examples

CITIES = ["Paris", "Berlin", "Lisbon", "Vienna", "Oslo", "Madrid"]
PROMPTS = [qa_prompt(f"Where was Person{i} born?") for i in range(len(CITIES))]
YEAR = "1879"
SPACE_MARKS = "▁Ġ "  # SentencePiece's and byte-level BPE's spellings of a space in a token


def _corpus(markers: bool) -> list[str]:
    """A few hundred lines; tiny_world's corpus has no prompt markers (they are added tokens, as in pretrain.py)."""
    question = qa_prompt if markers else str
    return [f"{question(f'Where was Person{i} born?')} {CITIES[i % 6]}" for i in range(200)] + [
        f"The river {i} flows to {CITIES[i % 6]} since {1800 + i}." for i in range(200)]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A LLaMA-2-style SentencePiece model (BPE, dummy prefix, byte fallback, digits split), trained here."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(markers=True)), model_writer=buf, vocab_size=400, model_type="bpe", add_dummy_prefix=True,
        byte_fallback=True, split_digits=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("spm")
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    return path


@functools.cache  # reading the GGUF's vocabulary takes seconds: once per session
def _smollm2():
    from sft_knowledge.models import smollm2_gguf_file

    try:
        gguf = smollm2_gguf_file()
    except ModelError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


# LLaMA-3's pre-tokenizer (tiktoken's pattern: digits in groups of up to 3, never joined to the space before them).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")


def _llama3_style():
    """A byte-level BPE with LLaMA-3's pre-tokenizer and special tokens, trained here; prompt markers are plain text."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    bpe.train_from_iterator(_corpus(markers=True), trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=specials[0], eos_token=specials[1])


# The SentencePiece model wrapped three ways: from its .model alone (encodes exactly as SentencePiece does, as
# LLaMA-2 was pretrained) and as transformers' LlamaTokenizer, legacy (dummy prefix after every added token) or not.
BUILDERS = {
    "sentencepiece": lambda sp_dir: PreTrainedTokenizerFast.from_pretrained(sp_dir),
    "llama_legacy": lambda sp_dir: LlamaTokenizer.from_pretrained(sp_dir, legacy=True),
    "llama": lambda sp_dir: LlamaTokenizer.from_pretrained(sp_dir, legacy=False),
    "tiny_world": lambda _: train_tokenizer(_corpus(markers=False), 500),
    "llama3_style": lambda _: _llama3_style(),
    "smollm2": lambda _: _smollm2(),
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def tok(request, sp_dir):
    return BUILDERS[request.param](sp_dir)


def test_targets_are_the_tokens_of_the_whole_text(tok):
    answers = CITIES[:-1] + [YEAR]
    examples = encode_examples(tok, PROMPTS, answers)
    for prompt, answer, (p, t) in zip(PROMPTS, answers, examples):
        text = qa_text(prompt, answer)
        assert p == encode_prompts(tok, [prompt])[0]  # what generation conditions on
        assert p + t[:-1] == encode_prompts(tok, [text])[0] and t[-1] == tok.eos_token_id
        assert tok.decode(p + t, skip_special_tokens=True) == text == f"{prompt} {answer}"
    assert [t for _, t in encode_examples(tok, PROMPTS, answers, eos=False)] == [t[:-1] for _, t in examples]


def _facts(answers: list[str]) -> list[Fact]:
    """Facts whose QA prompts are PROMPTS."""
    return [Fact(f"Person{i}", "P19", a, f"Where was Person{i} born?") for i, a in enumerate(answers)]


def test_sft_targets_are_app_a_answer_then_a_space_token_then_eos(tok):
    """App. A's assistant turn ` {a} {eos}`: the answer's own tokens, then the whole text's trailing space as one token
    that is only a space (SentencePiece's `"▁"`, byte-level BPE's `"Ġ"`), then EOS; `space_before_eos=false` drops it."""
    answers = CITIES[:-1] + [YEAR]
    paper = sft_examples(tok, _facts(answers), TrainConfig())
    before = sft_examples(tok, _facts(answers), TrainConfig(space_before_eos=False))
    assert before == encode_examples(tok, PROMPTS, answers)
    for prompt, answer, (p, t), (p_before, t_before) in zip(PROMPTS, answers, paper, before):
        assert p == p_before and t[:-2] == t_before[:-1] and t[-1] == t_before[-1] == tok.eos_token_id
        assert tok.convert_ids_to_tokens(t[-2]).strip(SPACE_MARKS) == ""
        assert p + t[:-1] == encode_prompts(tok, [f"{prompt} {answer} "])[0]


def test_smollm2_sft_target_for_paris_is_paris_space_eos():
    """Known ids: SmolLM2's vocabulary writes " Paris" as 7042, a lone " " as 216; its EOS is <|im_end|>, 2."""
    tok = _smollm2()
    [(_, target)] = sft_examples(tok, _facts(["Paris"]), TrainConfig())
    assert target == [7042, 216, 2] == tok.convert_tokens_to_ids(["ĠParis", "Ġ", "<|im_end|>"])
    [(_, target)] = sft_examples(tok, _facts(["Paris"]), TrainConfig(space_before_eos=False))
    assert target == [7042, 2]


def test_the_first_target_token_begins_the_answer_and_is_never_a_lone_space(tok):
    firsts = first_target_tokens(tok, PROMPTS, CITIES)
    assert firsts == [t[0] for _, t in encode_examples(tok, PROMPTS, CITIES)]
    for answer, first in zip(CITIES, tok.convert_ids_to_tokens(firsts)):
        letters = first.lstrip(SPACE_MARKS)
        assert letters and answer.startswith(letters), (answer, first)


def test_the_old_separate_encoding_led_with_a_lone_prefix_token(sp_dir):
    """Encoding `" " + answer` on its own, as before, gives SentencePiece's dummy prefix as a token of its own."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tok = BUILDERS["sentencepiece"](sp_dir)
    for prompt, answer in zip(PROMPTS, CITIES):
        # The wrapper is SentencePiece itself: the tokens LLaMA-2 saw in pretraining.
        assert tok(qa_text(prompt, answer), add_special_tokens=False)["input_ids"] == sp.encode(qa_text(prompt, answer))
        old = tok(f" {answer}", add_special_tokens=False)["input_ids"]
        assert old == sp.encode(f" {answer}") and tok.convert_ids_to_tokens(old[0]) == "▁"
        [(_, new)] = encode_examples(tok, [prompt], [answer], eos=False)
        assert new == old[1:]


@pytest.mark.parametrize("name", ["sentencepiece", "llama3_style", "smollm2"])
def test_a_lone_space_that_the_whole_text_has_stays(name, sp_dir):
    """Digits split from the space (LLaMA-2, LLaMA-3, SmolLM2): the whole text writes `" 1879"` as a space token then digits,
    so stripping a lone space token instead would teach a text the model never reads."""
    tok = BUILDERS[name](sp_dir)
    [(p, t)] = encode_examples(tok, PROMPTS[:1], [YEAR], eos=False)
    assert tok.convert_ids_to_tokens(t[0]).strip(SPACE_MARKS) == "" and tok.decode(t[1:]) == YEAR
    assert tok.decode(p + t[1:], skip_special_tokens=True) == f"{PROMPTS[0]}{YEAR}" != qa_text(PROMPTS[0], YEAR)


def test_a_merge_across_the_prompts_end_is_refused():
    """A tokenizer that joins the prompt's last character with the space before the answer leaves no split."""
    vocab = {c: i for i, c in enumerate(["a", ">", " ", "b", "> "])}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab, [(">", " ")])))
    assert tok.convert_ids_to_tokens(encode_prompts(tok, ["a> b"])[0]) == ["a", "> ", "b"]
    with pytest.raises(ModelError, match="the prompt format needs a token boundary") as e:
        encode_examples(tok, ["a>"], ["b"], eos=False)
    assert "\n" not in str(e.value)
