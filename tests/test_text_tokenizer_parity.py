"""Our SentencePiece path (``TextTokenizer``, ``SequenceBuilder``) against transformers' slow
``LlamaTokenizer`` on the same local ``tokenizer.model``, configured as LAPA's tokenizer is
(``latent_pretraining/llama.py``: SentencePiece pieces, ``add_bos_token=False``; LAPA's text
processors append BOS and EOS themselves)."""

from __future__ import annotations

import pytest
from transformers import LlamaTokenizer

from latent_pretraining.model import Modality
from latent_pretraining.prompts import LAPA_QUESTION, lapa_instruction
from latent_pretraining.sequences import SequenceBuilder, SequenceConfig, TextTokenizer

MARKERS = ["<vision>", "</vision>", "<delta>", "</delta>", "<action>", "</action>"]
PROMPTS = [
    LAPA_QUESTION.format(task="push the green triangle"),
    LAPA_QUESTION.format(task="pick up the red cube and put it on the blue ball"),
    "You are a helpful assistant. USER: What action should the robot take to ASSISTANT:",
    " pick up the cube",  # leading spaces
    "   push  the   table  ",
    "move 3 cm left, then 12.5 cm up; repeat 007 times",
    "café naïve — 日本語のロボット 🤖 Ünïcödé",
    "\tpush\nthe cube",
    *MARKERS,
]


@pytest.fixture(scope="module")
def tokenizers(sp_model) -> tuple[TextTokenizer, LlamaTokenizer]:
    # built from the file path, as LAPA builds its own: nothing is looked up on the Hub
    hf = LlamaTokenizer(vocab_file=str(sp_model), legacy=True, add_bos_token=False, add_eos_token=False)
    return TextTokenizer(sp_model), hf


def test_special_ids_and_vocabulary_agree(tokenizers):
    ours, hf = tokenizers
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (hf.bos_token_id, hf.eos_token_id, hf.vocab_size)
    assert (ours.bos_id, ours.eos_id, hf.unk_token_id) == (1, 2, 0)


@pytest.mark.parametrize("text", PROMPTS)
def test_text_ids_match_llama_tokenizer(tokenizers, text):
    ours, hf = tokenizers
    assert ours.encode(text) == hf.encode(text)


def test_row_matches_lapa_processor_on_llama_tokenizer(tokenizers):
    """One BOS (the processor's), each field and marker its own ``encode`` call, EOS last."""
    ours, hf = tokenizers
    instruction = LAPA_QUESTION.format(task="push the green triangle")
    row = {"instruction": instruction, "delta": ["3", "0", "7", "1"], "fields": "[instruction],delta"}
    config = SequenceConfig(vocab_sizes=(ours.vocab_size, 8448, 8, 256))
    example = SequenceBuilder(ours, config)(row)
    expected = [
        hf.bos_token_id,
        *hf.encode(instruction),
        *hf.encode("<delta>"),
        3,
        0,
        7,
        1,
        *hf.encode("</delta>"),
        hf.eos_token_id,
    ]
    assert example.ids.tolist() == expected
    assert example.modality.tolist().count(int(Modality.LATENT)) == 4


def test_lapa_system_prompt_literal_bos_is_text_as_in_lapa(tokenizers):
    """LAPA's prompt starts with a literal ``<s>``. LAPA builds its tokenizer directly
    (``LLaMATokenizer(vocab_file=...)``) under transformers 4.29.2, which, as we read its source,
    split special tokens out only for tokenizers made by ``from_pretrained``: the ``<s>`` reached
    SentencePiece as text. Today's LlamaTokenizer splits it out as BOS unless told not to."""
    ours, hf = tokenizers
    text = lapa_instruction("push the cube")
    assert ours.encode(text) == hf.encode(text, split_special_tokens=True)
    assert ours.encode(text)[0] != ours.bos_id
    assert hf.encode(text)[0] == hf.bos_token_id  # the newer behaviour this project does not follow
