//! Tokenizers for hearth: built from GGUF metadata (`tokenizer.ggml.*`) or a Hugging Face folder
//! (`tokenizer.json` + `tokenizer_config.json`), plus chat templates, streaming detokenization and
//! a synthetic byte-level vocabulary for generated test models.
//!
//! GGUF vocabularies are read as llama.cpp reads them: SentencePiece (`tokenizer.ggml.model` =
//! `llama`: Llama 2, Phi-3, Gemma 2/3) and BPE (`gpt2`, and `gemma4`) with every pre-tokenizer
//! llama.cpp knows (`tokenizer.ggml.pre`: Llama 3, Qwen2/3, SmolLM, DeepSeek, Falcon, StarCoder,
//! GPT-4o, Tekken, Kimi K2, ... — one regex family per group of names, see the `pre` module).
//! An unknown model or pre-tokenizer name, and metadata that contradicts itself (merges of unknown
//! tokens, duplicate tokens, unknown token types, special ids out of range, BOS wanted but absent),
//! is refused when the tokenizer is built, with an error naming the key.
//!
//! Encoding follows the reference tokenizers exactly: llama.cpp's tokenizer test vectors for
//! Llama 2, Phi-3, Llama 3, Qwen2, Qwen3.5, GPT-2, MPT, DeepSeek LLM and Coder, Falcon, StarCoder,
//! Refact (and, when fetched, Command-R and Gemma 4) plus SmolLM2's vocabulary are checked in
//! `tests/vocab_vectors.rs`, and every pre-tokenizer's splits against llama.cpp's own splitter
//! in `pre`'s tests.

#![warn(missing_docs)]

use std::collections::HashSet;
use std::path::Path;

use candle_core::quantized::gguf_file;

mod byte_level;
mod error;
mod gguf;
mod hf;
mod pre;
mod stream;
mod synth;
mod template;

pub use error::TokenizerError;
pub use stream::TextStream;
pub use synth::SyntheticVocab;
pub use template::{ChatMessage, ChatTemplate};

use stream::PieceKind;

/// Control tokens that end a turn in well-known chat formats. Like llama.cpp, generation stops on
/// them even when the metadata names a different end-of-sequence token (a base model's GGUF names
/// `<|end_of_text|>` while its instruct sibling ends turns with `<|eot_id|>`).
const END_OF_GENERATION: [&str; 9] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
    "<|return|>",
    "<EOT>",
];

/// What the GGUF and HF loaders hand to [`Tokenizer::assemble`].
pub(crate) struct Parts {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    /// End-of-sequence ids named by the metadata/config, primary first.
    eos: Vec<u32>,
    add_bos: bool,
    pieces: PieceKind,
    template: Option<ChatTemplate>,
}

/// A text tokenizer with the model's special-token conventions and optional chat template.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    pieces: PieceKind,
    /// Control tokens: skipped when decoding.
    special: HashSet<u32>,
    /// All added tokens (special or not): their text is literal, not byte-level encoded.
    added: HashSet<u32>,
    template: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Builds a tokenizer from GGUF metadata (`tokenizer.ggml.model` = `llama`, `gpt2` or
    /// `gemma4`, `tokenizer.ggml.pre`, tokens, token types, scores or merges, special token ids,
    /// `tokenizer.chat_template`), as llama.cpp does. Unknown flavours and inconsistent metadata
    /// are errors naming the key.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self, TokenizerError> {
        gguf::from_gguf(content)
    }

    /// Builds a tokenizer from a Hugging Face folder: `tokenizer.json`, plus (when present)
    /// `tokenizer_config.json` for `bos_token`, `eos_token`, `add_bos_token` and `chat_template`,
    /// `chat_template.jinja`, and `generation_config.json` for extra end-of-sequence ids.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizerError> {
        hf::from_hf_dir(dir)
    }

    pub(crate) fn assemble(parts: Parts) -> Result<Self, TokenizerError> {
        let Parts {
            inner,
            vocab_size,
            bos,
            eos: named_eos,
            add_bos,
            pieces,
            template,
        } = parts;
        let added_tokens = inner.get_added_tokens_decoder();
        let special: HashSet<u32> = added_tokens
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let mut extra: Vec<u32> = added_tokens
            .iter()
            .filter(|(_, t)| t.special && END_OF_GENERATION.contains(&t.content.as_str()))
            .map(|(&id, _)| id)
            .collect();
        extra.sort_unstable();
        let mut eos = Vec::new();
        for id in named_eos.into_iter().chain(extra) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        Ok(Self {
            vocab_size: vocab_size.max(inner.get_vocab_size(true)),
            added: added_tokens.keys().copied().collect(),
            inner,
            bos,
            eos,
            add_bos,
            pieces,
            special,
            template,
        })
    }

    /// Encodes `text`. Special-token texts in it (e.g. `<|eot_id|>` from a rendered chat
    /// template) become their ids. With `add_bos`, the BOS token is prepended if the model wants
    /// one ([`Tokenizer::add_bos_token`]) and `text` does not already start with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        match self.bos {
            Some(bos) if add_bos && self.add_bos && ids.first() != Some(&bos) => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Decodes ids to text, skipping special (control) tokens. Invalid UTF-8 becomes U+FFFD.
    /// A SentencePiece tokenizer drops the space it prefixed while encoding, so
    /// `decode(encode(s))` gives back `s`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Tokenizer(e.to_string()))
    }

    /// A streaming detokenizer over this vocabulary.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream::new(self)
    }

    /// Number of token ids the tokenizer knows, special tokens included (GGUF: the length of
    /// `tokenizer.ggml.tokens`). A model's embedding may have more rows than this.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the model expects a BOS token at the start of a prompt.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Ids that end generation: the end-of-sequence id first, then end-of-turn / end-of-message
    /// ids named by the metadata or config, then well-known end-of-turn control tokens.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// Replaces (or removes) the chat template, e.g. to override a model's template or to pin
    /// `strftime_now` with [`ChatTemplate::with_fixed_time`].
    pub fn set_chat_template(&mut self, template: Option<ChatTemplate>) {
        self.template = template;
    }

    /// The vocabulary string of `id` (byte-level or SentencePiece spelling, e.g. `Ġthe`, `▁the`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary string, if there is one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Whether `id` is a special (control) token, such as BOS/EOS or a chat header marker.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The raw bytes `id` contributes to the text (possibly part of a UTF-8 character). Special
    /// tokens give their literal text.
    pub fn token_to_piece(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        self.check_id(id)?;
        let token = self
            .inner
            .id_to_token(id)
            .ok_or(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            })?;
        Ok(match self.pieces {
            // Exactly what the ByteLevel decoder does, added tokens included: map the GPT-2
            // alphabet back to bytes, and take a token with any other character literally.
            PieceKind::ByteLevel => {
                byte_level::token_to_bytes(&token).unwrap_or_else(|| token.into_bytes())
            }
            _ if self.added.contains(&id) => token.into_bytes(),
            PieceKind::SentencePiece => match stream::parse_byte_token(&token) {
                Some(byte) => vec![byte],
                None => token.replace('▁', " ").into_bytes(),
            },
            PieceKind::Other => self
                .inner
                .decode(&[id], false)
                .map_err(|e| TokenizerError::Tokenizer(e.to_string()))?
                .into_bytes(),
        })
    }

    fn check_id(&self, id: u32) -> Result<(), TokenizerError> {
        if (id as usize) < self.vocab_size {
            Ok(())
        } else {
            Err(TokenizerError::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn encode_adds_bos_once() {
        let vocab = SyntheticVocab::new(300).unwrap();
        let content = gguf_file::Content {
            magic: gguf_file::VersionedMagic::GgufV3,
            metadata: vocab.gguf_metadata().into_iter().collect(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        let t = Tokenizer::from_gguf(&content).unwrap();
        let bos = vocab.bos_id();
        assert_eq!(t.encode("hi", true).unwrap()[0], bos);
        assert_ne!(t.encode("hi", false).unwrap()[0], bos);
        let ids = t.encode("<|begin_of_text|>hi", true).unwrap();
        assert_eq!(ids.iter().filter(|&&id| id == bos).count(), 1);
    }
}
