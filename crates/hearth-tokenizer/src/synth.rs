//! A deterministic Llama-3-style byte-level BPE vocabulary for generated test models (there is no
//! model hub to download a real one from).

use std::collections::{BTreeMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::byte_level::byte_to_char;
use crate::error::TokenizerError;
use crate::gguf::token_type;
use crate::pre;

/// Special tokens, at ids 256.. right after the byte tokens so their ids do not depend on the
/// vocabulary size.
const SPECIALS: [&str; 5] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];
const BOS_ID: u32 = 256;
/// Like Llama 3 Instruct, the end-of-sequence token is the end-of-turn token.
const EOS_ID: u32 = 260;
/// Keeps generated GGUF files and tokenizer.json texts to a sane size.
const MAX_VOCAB_SIZE: usize = 1 << 24;

/// Text the merges are learnt from; the merges are whatever byte-pair encoding training on it
/// yields, so they are deterministic and look like a real vocabulary's.
const CORPUS: &str = include_str!("synth_corpus.txt");

/// Llama 3's chat format, reduced to plain messages.
const CHAT_TEMPLATE: &str = "{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}";

/// A synthetic byte-level BPE vocabulary of an exact size, exportable as `tokenizer.json` +
/// `tokenizer_config.json` or as GGUF metadata.
///
/// Layout: ids 0..256 are the bytes (in GPT-2's byte-to-unicode spelling), 256..261 the special
/// tokens `<|begin_of_text|>`, `<|end_of_text|>`, `<|start_header_id|>`, `<|end_header_id|>`,
/// `<|eot_id|>`, then merged tokens learnt from a built-in text (about 600 at most), then
/// `<|reserved_N|>` filler
/// tokens (never produced by encoding) up to the requested size. Any UTF-8 text round-trips.
#[derive(Debug, Clone)]
pub struct SyntheticVocab {
    tokens: Vec<String>,
    types: Vec<i64>,
    merges: Merges,
}

impl SyntheticVocab {
    /// Builds a vocabulary of exactly `vocab_size` tokens (at least 261).
    pub fn new(vocab_size: usize) -> Result<Self, TokenizerError> {
        let min = 256 + SPECIALS.len();
        if !(min..=MAX_VOCAB_SIZE).contains(&vocab_size) {
            return Err(TokenizerError::Synthetic(format!(
                "vocab_size {vocab_size} is outside {min}..={MAX_VOCAB_SIZE}"
            )));
        }
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        let mut types = vec![token_type::NORMAL; tokens.len()];
        tokens.extend(SPECIALS.map(String::from));
        types.resize(tokens.len(), token_type::CONTROL);

        let (merges, merged) = train(vocab_size - min)?;
        tokens.extend(merged);
        types.resize(tokens.len(), token_type::NORMAL);

        let mut known: HashSet<String> = tokens.iter().cloned().collect();
        let mut n = 0;
        while tokens.len() < vocab_size {
            let filler = format!("<|reserved_{n}|>");
            n += 1;
            if known.insert(filler.clone()) {
                tokens.push(filler);
                types.push(token_type::UNUSED);
            }
        }
        Ok(Self {
            tokens,
            types,
            merges,
        })
    }

    /// Id of `<|begin_of_text|>`.
    pub fn bos_id(&self) -> u32 {
        BOS_ID
    }

    /// Id of `<|eot_id|>`, the end-of-sequence token (`<|end_of_text|>` also ends generation).
    pub fn eos_id(&self) -> u32 {
        EOS_ID
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The chat template shipped in both the config and the GGUF metadata.
    pub fn chat_template(&self) -> &'static str {
        CHAT_TEMPLATE
    }

    /// A complete Hugging Face `tokenizer.json`, laid out like Llama 3's.
    pub fn tokenizer_json(&self) -> String {
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), json!(id)))
            .collect();
        let merges: Vec<String> = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        let added_tokens: Vec<serde_json::Value> = self
            .special_ids()
            .map(|id| {
                json!({
                    "id": id,
                    "content": self.tokens[id as usize],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": true,
                })
            })
            .collect();
        let bos = &self.tokens[BOS_ID as usize];
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens,
            "normalizer": null,
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": pre::REGEX_LLAMA3},
                        "behavior": "Isolated",
                        "invert": false,
                    },
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": false,
                        "trim_offsets": true,
                        "use_regex": false,
                    },
                ],
            },
            "post_processor": {
                "type": "Sequence",
                "processors": [
                    {
                        "type": "ByteLevel",
                        "add_prefix_space": true,
                        "trim_offsets": false,
                        "use_regex": true,
                    },
                    {
                        "type": "TemplateProcessing",
                        "single": [
                            {"SpecialToken": {"id": bos, "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}},
                        ],
                        "pair": [
                            {"SpecialToken": {"id": bos, "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": bos, "type_id": 1}},
                            {"Sequence": {"id": "B", "type_id": 1}},
                        ],
                        "special_tokens": {
                            bos.as_str(): {"id": bos, "ids": [BOS_ID], "tokens": [bos]},
                        },
                    },
                ],
            },
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": true,
                "vocab": vocab,
                "merges": merges,
            },
        });
        doc.to_string()
    }

    /// `tokenizer_config.json` with the chat template, BOS/EOS tokens and `add_bos_token`.
    pub fn tokenizer_config_json(&self) -> String {
        json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "bos_token": self.tokens[BOS_ID as usize],
            "eos_token": self.tokens[EOS_ID as usize],
            "chat_template": CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": false,
            "model_input_names": ["input_ids", "attention_mask"],
            "tokenizer_class": "PreTrainedTokenizerFast",
        })
        .to_string()
    }

    /// GGUF metadata entries (`tokenizer.ggml.*` and `tokenizer.chat_template`) describing the
    /// same tokenizer, for a GGUF writer to include.
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let strings =
            |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
        let types = self
            .types
            .iter()
            .map(|&t| Value::I32(i32::try_from(t).unwrap_or(token_type::NORMAL as i32)))
            .collect();
        let merges = self
            .merges
            .iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect();
        vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            (
                "tokenizer.ggml.pre".into(),
                Value::String("llama-bpe".into()),
            ),
            ("tokenizer.ggml.tokens".into(), strings(self.tokens.clone())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.merges".into(), strings(merges)),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS_ID)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS_ID)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
            (
                "tokenizer.chat_template".into(),
                Value::String(CHAT_TEMPLATE.into()),
            ),
        ]
    }

    fn special_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (BOS_ID..).take(SPECIALS.len())
    }
}

/// Merge rules, as (left, right) token pairs in priority order.
type Merges = Vec<(String, String)>;

/// Byte-pair-encoding training on [`CORPUS`], pre-tokenized like Llama 3. Returns the merges and
/// the new tokens (at most `budget`), in creation order. Ties between equally frequent pairs go
/// to the smallest pair, so the result is deterministic.
fn train(budget: usize) -> Result<(Merges, Vec<String>), TokenizerError> {
    let pre = pre::Family::Llama3.pre_tokenizer()?;
    let mut text = PreTokenizedString::from(CORPUS);
    pre.pre_tokenize(&mut text)
        .map_err(|e| TokenizerError::Synthetic(e.to_string()))?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (word, _, _) in text.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        *counts.entry(word.to_owned()).or_default() += 1;
    }
    let mut words: Vec<(Vec<String>, usize)> = counts
        .into_iter()
        .map(|(w, n)| (w.chars().map(String::from).collect(), n))
        .collect();

    let mut known: HashSet<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
    let mut merges = Vec::new();
    let mut new_tokens = Vec::new();
    while new_tokens.len() < budget {
        let best = {
            let mut pairs: BTreeMap<(&str, &str), usize> = BTreeMap::new();
            for (symbols, n) in &words {
                for pair in symbols.windows(2) {
                    *pairs.entry((&pair[0], &pair[1])).or_default() += n;
                }
            }
            // First maximum in key order = smallest pair among the most frequent.
            let mut best: Option<((&str, &str), usize)> = None;
            for (pair, n) in pairs {
                if best.is_none_or(|(_, b)| n > b) {
                    best = Some((pair, n));
                }
            }
            best.map(|((a, b), _)| (a.to_owned(), b.to_owned()))
        };
        // Keep going until every corpus word is one token: rare words make merges too, which
        // gives a few hundred more tokens than stopping at pairs seen twice.
        let Some((a, b)) = best else { break };
        let merged = format!("{a}{b}");
        for (symbols, _) in &mut words {
            merge_in_place(symbols, &a, &b, &merged);
        }
        if known.insert(merged.clone()) {
            new_tokens.push(merged);
        }
        merges.push((a, b));
    }
    Ok((merges, new_tokens))
}

fn merge_in_place(symbols: &mut Vec<String>, a: &str, b: &str, merged: &str) {
    let mut out = Vec::with_capacity(symbols.len());
    let mut i = 0;
    while i < symbols.len() {
        if i + 1 < symbols.len() && symbols[i] == a && symbols[i + 1] == b {
            out.push(merged.to_owned());
            i += 2;
        } else {
            out.push(std::mem::take(&mut symbols[i]));
            i += 1;
        }
    }
    *symbols = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_and_layout() {
        for size in [261, 300, 512, 5000] {
            let v = SyntheticVocab::new(size).unwrap();
            assert_eq!(v.vocab_size(), size);
            assert_eq!(v.tokens[v.bos_id() as usize], "<|begin_of_text|>");
            assert_eq!(v.tokens[v.eos_id() as usize], "<|eot_id|>");
            let unique: HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(unique.len(), size);
        }
        assert!(SyntheticVocab::new(260).is_err());
    }

    #[test]
    fn deterministic_with_real_merges() {
        let a = SyntheticVocab::new(1000).unwrap();
        let b = SyntheticVocab::new(1000).unwrap();
        assert_eq!(a.tokens, b.tokens);
        assert!(a.merges.len() > 100, "only {} merges", a.merges.len());
        // Common English words are single tokens.
        assert!(a.tokens.iter().any(|t| t == "Ġthe"));
    }
}
