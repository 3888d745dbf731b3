//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), following llama.cpp's reading of
//! those keys, assembled from Hugging Face `tokenizers` parts.
//!
//! Invariants of a built tokenizer: every token spelling is unique, every merge joins two tokens
//! into a third, every special id named by the metadata is in the vocabulary, and if prompts
//! start with BOS there is a BOS token. BPE vocabularies split text with the llama.cpp
//! pre-tokenizer that `tokenizer.ggml.pre` names ([`crate::pre`]).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Sequence as NormalizerSequence};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper};

use crate::error::TokenizerError;
use crate::pre::{replace, AddBos, Family, PreTokenizer};
use crate::stream::PieceKind;
use crate::template::ChatTemplate;
use crate::{Parts, Tokenizer};

/// llama.cpp's `llama_token_type` values found in `tokenizer.ggml.token_type`.
pub(crate) mod token_type {
    pub(crate) const NORMAL: i64 = 1;
    pub(crate) const UNKNOWN: i64 = 2;
    pub(crate) const CONTROL: i64 = 3;
    pub(crate) const USER_DEFINED: i64 = 4;
    pub(crate) const UNUSED: i64 = 5;
    pub(crate) const BYTE: i64 = 6;
    /// Every value llama.cpp defines (0 is "undefined").
    pub(crate) const KNOWN: [i64; 7] = [0, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE];
}

/// Keys read by this module.
const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_TYPES: &str = "tokenizer.ggml.token_type";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_TEMPLATE: &str = "tokenizer.chat_template";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
/// Extra end-of-generation ids (end of turn, end of message) that llama.cpp also stops on.
const KEYS_EXTRA_EOS: [&str; 2] = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"];
/// llama.cpp spells this one two ways.
const KEYS_UNK: [&str; 2] = [
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.unk_token_id",
];

pub(crate) fn from_gguf(ct: &Content) -> Result<Tokenizer, TokenizerError> {
    let model = string(required(ct, KEY_MODEL)?, KEY_MODEL)?;
    let tokens = string_array(required(ct, KEY_TOKENS)?, KEY_TOKENS)?;
    if tokens.is_empty() {
        return Err(TokenizerError::bad(KEY_TOKENS, "the vocabulary is empty"));
    }
    check_unique(&tokens)?;
    let types = match ct.metadata.get(KEY_TYPES) {
        Some(v) => {
            let types = int_array(v, KEY_TYPES)?;
            if types.len() != tokens.len() {
                return Err(TokenizerError::bad(
                    KEY_TYPES,
                    format!("{} entries for {} tokens", types.len(), tokens.len()),
                ));
            }
            if let Some(i) = types.iter().position(|t| !token_type::KNOWN.contains(t)) {
                return Err(TokenizerError::bad(
                    format!("{KEY_TYPES}[{i}]"),
                    format!("unknown token type {}", types[i]),
                ));
            }
            types
        }
        None => vec![token_type::NORMAL; tokens.len()],
    };

    let (mut inner, add_bos, pieces) = match model.as_str() {
        "llama" => {
            let scores = float_array(required(ct, KEY_SCORES)?, KEY_SCORES)?;
            if scores.len() != tokens.len() {
                return Err(TokenizerError::bad(
                    KEY_SCORES,
                    format!("{} entries for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let add_space_prefix = match ct.metadata.get(KEY_ADD_SPACE_PREFIX) {
                Some(v) => boolean(v, KEY_ADD_SPACE_PREFIX)?,
                None => true,
            };
            let unk = first_token_id(ct, &KEYS_UNK, tokens.len())?;
            let spm = build_spm(&tokens, &types, &scores, unk, add_space_prefix)?;
            (spm, AddBos::UnlessRefused, PieceKind::SentencePiece)
        }
        // llama.cpp reads a `gemma4` vocabulary as BPE with the `gemma4` pre-tokenizer,
        // whatever `tokenizer.ggml.pre` says.
        "gpt2" | "gemma4" => {
            let pre_name = match (model.as_str(), ct.metadata.get(KEY_PRE)) {
                ("gemma4", _) => "gemma4".to_owned(),
                (_, Some(v)) => string(v, KEY_PRE)?,
                // As llama.cpp, which warns that quality will suffer.
                (_, None) => "default".to_owned(),
            };
            let pre =
                PreTokenizer::from_name(&pre_name).ok_or_else(|| TokenizerError::Unsupported {
                    key: KEY_PRE.into(),
                    value: pre_name.clone(),
                })?;
            let merges = match ct.metadata.get(KEY_MERGES) {
                Some(v) => merges(v, &tokens)?,
                // Kimi K2's converter may leave the merges out; llama.cpp accepts that.
                None if pre.family == Family::KimiK2 => Vec::new(),
                None => return Err(TokenizerError::missing(KEY_MERGES)),
            };
            let bpe = build_bpe(&tokens, merges, pre)?;
            let pieces = if pre.family.byte_level() {
                PieceKind::ByteLevel
            } else {
                PieceKind::SentencePiece
            };
            (bpe, pre.add_bos, pieces)
        }
        other => {
            return Err(TokenizerError::Unsupported {
                key: KEY_MODEL.into(),
                value: other.into(),
            })
        }
    };
    add_special_tokens(&mut inner, &tokens, &types)?;

    let bos = token_id(ct, KEY_BOS, tokens.len())?;
    let add_bos = add_bos.resolve(match ct.metadata.get(KEY_ADD_BOS) {
        Some(v) => Some(boolean(v, KEY_ADD_BOS)?),
        None => None,
    });
    if add_bos && bos.is_none() {
        return Err(TokenizerError::bad(
            KEY_BOS,
            format!("missing, but prompts of this vocabulary start with BOS ({KEY_ADD_BOS})"),
        ));
    }
    let mut eos = Vec::new();
    for key in std::iter::once(KEY_EOS).chain(KEYS_EXTRA_EOS) {
        if let Some(id) = token_id(ct, key, tokens.len())? {
            eos.push(id);
        }
    }
    let template = match ct.metadata.get(KEY_TEMPLATE) {
        Some(v) => {
            let text = |id: Option<u32>| id.and_then(|id| tokens.get(id as usize).cloned());
            let source = string(v, KEY_TEMPLATE)?;
            let template = ChatTemplate::new(source, text(bos), text(eos.first().copied()))
                .map_err(|e| TokenizerError::bad(KEY_TEMPLATE, e.to_string()))?;
            Some(template)
        }
        None => None,
    };
    Tokenizer::assemble(Parts {
        inner,
        vocab_size: tokens.len(),
        bos,
        eos,
        add_bos,
        pieces,
        template,
    })
}

/// llama.cpp refuses a vocabulary that spells two tokens the same (an empty spelling excepted:
/// it renames those), since text could not tell them apart.
fn check_unique(tokens: &[String]) -> Result<(), TokenizerError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(token, i) {
            return Err(TokenizerError::bad(
                KEY_TOKENS,
                format!("entries {first} and {i} are both `{token}`"),
            ));
        }
    }
    Ok(())
}

/// SentencePiece-style BPE: merges are ranked by the score of the token they produce, which is
/// what llama.cpp's SPM tokenizer does, and characters missing from the vocabulary fall back to
/// `<0xNN>` byte tokens. Mirrors Hugging Face's `LlamaTokenizerFast` pipeline.
fn build_spm(
    tokens: &[String],
    types: &[i64],
    scores: &[f32],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let vocab = vocab_map(tokens);
    // Only ordinary text pieces take part in merges: control, byte and unused tokens must never be
    // produced by merging text that happens to spell them.
    let mergeable = |id: u32| {
        !matches!(
            types.get(id as usize).copied(),
            Some(token_type::UNKNOWN | token_type::CONTROL | token_type::UNUSED | token_type::BYTE)
        )
    };
    let mut merges: Vec<(u32, u32, u32)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let id = id as u32;
        if !mergeable(id) || vocab.get(piece.as_str()) != Some(&id) {
            continue;
        }
        let start = merges.len();
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (vocab.get(l), vocab.get(r)) {
                if mergeable(l) && mergeable(r) {
                    merges.push((l, r, id));
                }
            }
        }
        merges[start..].sort_by_key(|&(l, r, _)| (l, r));
    }
    // Stable sort: ties keep vocabulary order, like transformers' SentencePieceExtractor.
    merges.sort_by(|a, b| scores[b.2 as usize].total_cmp(&scores[a.2 as usize]));
    let merges = merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_for_bpe(tokens), merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| TokenizerError::bad(KEY_TOKENS, e.to_string()))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace("▁", " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".into()).into());
        // The decoder undoes the prefix space (as HF and llama.cpp's detokenizer do).
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    normalizers.push(replace(" ", "▁")?.into());
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| TokenizerError::Tokenizer(e.to_string()))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// BPE over a llama.cpp pre-tokenizer: byte-level (GPT-2's alphabet) or, for the families that
/// merge raw UTF-8, with `<0xNN>` tokens for bytes that no token spells.
fn build_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    pre: PreTokenizer,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_for_bpe(tokens), merges)
        .ignore_merges(pre.ignore_merges)
        .byte_fallback(!pre.family.byte_level())
        .build()
        .map_err(|e| TokenizerError::bad(KEY_MERGES, e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    if let Some(normalizer) = pre.family.normalizer()? {
        tokenizer
            .with_normalizer(Some(normalizer))
            .map_err(|e| TokenizerError::Tokenizer(e.to_string()))?;
    }
    tokenizer.with_pre_tokenizer(Some(pre.family.pre_tokenizer()?));
    tokenizer.with_decoder(Some(pre.family.decoder()?));
    Ok(tokenizer)
}

/// Control and unknown tokens become special added tokens (matched in text, skipped when
/// decoding); user-defined tokens are matched in text but decoded like any other token.
fn add_special_tokens(
    tokenizer: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i64],
) -> Result<(), TokenizerError> {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, &ty) in tokens.iter().zip(types) {
        match ty {
            token_type::CONTROL | token_type::UNKNOWN => special.push(token),
            token_type::USER_DEFINED => user.push(token),
            _ => {}
        }
    }
    let added = |list: Vec<&String>, special: bool| -> Vec<AddedToken> {
        list.into_iter()
            .filter(|t| !t.is_empty())
            .map(|t| AddedToken::from(t.clone(), special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(special, true))
        .map_err(|e| TokenizerError::bad(KEY_TYPES, e.to_string()))?;
    tokenizer
        .add_tokens(added(user, false))
        .map_err(|e| TokenizerError::bad(KEY_TYPES, e.to_string()))?;
    Ok(())
}

/// Token to id; a token that appears twice keeps its first id.
fn vocab_map(tokens: &[String]) -> HashMap<&str, u32> {
    let mut map = HashMap::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        map.entry(token.as_str()).or_insert(id as u32);
    }
    map
}

fn vocab_for_bpe(tokens: &[String]) -> Vocab {
    vocab_map(tokens)
        .into_iter()
        .map(|(t, id)| (t.to_owned(), id))
        .collect()
}

/// Parses `tokenizer.ggml.merges` ("left right" strings) and checks that every merge refers to
/// known tokens, so that a bad file gets an error naming the merge rather than a generic one.
fn merges(value: &Value, tokens: &[String]) -> Result<Vec<(String, String)>, TokenizerError> {
    let vocab = vocab_map(tokens);
    let list = string_array(value, KEY_MERGES)?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, merge) in list.into_iter().enumerate() {
        // Like llama.cpp, search from the second byte so that a left part " " still parses.
        // A space byte is always a char boundary, so slicing at it is safe.
        let split = merge
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| {
                TokenizerError::bad(KEY_MERGES, format!("entry {i} `{merge}` has no space"))
            })?;
        let (left, right) = (&merge[..split], &merge[split + 1..]);
        for part in [left, right, &format!("{left}{right}")] {
            if !vocab.contains_key(part) {
                return Err(TokenizerError::bad(
                    KEY_MERGES,
                    format!("entry {i} `{merge}` refers to unknown token `{part}`"),
                ));
            }
        }
        merges.push((left.to_owned(), right.to_owned()));
    }
    Ok(merges)
}

fn required<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, TokenizerError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| TokenizerError::missing(key))
}

fn type_error(key: &str, expected: &str, got: &Value) -> TokenizerError {
    TokenizerError::bad(
        key,
        format!("expected {expected}, found {:?}", got.value_type()),
    )
}

fn string(v: &Value, key: &str) -> Result<String, TokenizerError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(type_error(key, "a string", other)),
    }
}

fn boolean(v: &Value, key: &str) -> Result<bool, TokenizerError> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(type_error(key, "a bool", other)),
    }
}

fn integer(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::U8(x) => x.into(),
        Value::I8(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I16(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U64(x) => i64::try_from(x).ok()?,
        Value::I64(x) => x,
        _ => return None,
    })
}

fn array<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], TokenizerError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(type_error(key, "an array", other)),
    }
}

fn string_array(v: &Value, key: &str) -> Result<Vec<String>, TokenizerError> {
    array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(type_error(&format!("{key}[{i}]"), "a string", other)),
        })
        .collect()
}

fn int_array(v: &Value, key: &str) -> Result<Vec<i64>, TokenizerError> {
    array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            integer(item).ok_or_else(|| type_error(&format!("{key}[{i}]"), "an integer", item))
        })
        .collect()
}

fn float_array(v: &Value, key: &str) -> Result<Vec<f32>, TokenizerError> {
    array(v, key)?
        .iter()
        .enumerate()
        .map(|(i, item)| match *item {
            Value::F32(x) => Ok(x),
            Value::F64(x) => Ok(x as f32),
            ref other => Err(type_error(&format!("{key}[{i}]"), "a float", other)),
        })
        .collect()
}

/// An optional token id key, checked against the vocabulary size.
fn token_id(ct: &Content, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
    let Some(v) = ct.metadata.get(key) else {
        return Ok(None);
    };
    let id = integer(v).ok_or_else(|| type_error(key, "an integer", v))?;
    match u32::try_from(id) {
        Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
        _ => Err(TokenizerError::bad(
            key,
            format!("token id {id} is out of range for {n_tokens} tokens"),
        )),
    }
}

fn first_token_id(
    ct: &Content,
    keys: &[&str],
    n_tokens: usize,
) -> Result<Option<u32>, TokenizerError> {
    for key in keys {
        if let Some(id) = token_id(ct, key, n_tokens)? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::VersionedMagic;

    fn content(entries: Vec<(&str, Value)>) -> Content {
        Content {
            magic: VersionedMagic::GgufV3,
            metadata: entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
    }

    /// A toy SentencePiece vocabulary: merges follow the scores of the merged tokens, unknown
    /// characters fall back to byte tokens.
    #[test]
    fn sentencepiece_scores_drive_merges() {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁", "a", "b", "ab", "▁ab", "ba", "<0x0A>", "<0xC3>", "<0xA9>",
        ];
        let scores = [
            0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.1, -0.7, 0.0, 0.0, 0.0,
        ];
        let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6, 6];
        let ct = content(vec![
            (KEY_MODEL, Value::String("llama".into())),
            (KEY_TOKENS, strings(&tokens)),
            (KEY_SCORES, Value::Array(scores.map(Value::F32).to_vec())),
            (KEY_TYPES, Value::Array(types.map(Value::I32).to_vec())),
            (KEY_BOS, Value::U32(1)),
            (KEY_EOS, Value::U32(2)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ]);
        let t = from_gguf(&ct).unwrap();
        assert_eq!(t.encode("ab", true).unwrap(), [1, 7]);
        // "▁aba": "ab" (-0.5) merges before "ba" (-0.7), then "▁" + "ab" makes "▁ab".
        assert_eq!(t.encode("aba", false).unwrap(), [7, 4]);
        // "▁bab": "ab" wins again, leaving "▁" and "b" unmerged.
        assert_eq!(t.encode("bab", false).unwrap(), [3, 5, 6]);
        assert_eq!(t.encode("a\né", false).unwrap(), [3, 4, 9, 10, 11]);
        assert_eq!(t.decode(&[1, 7, 4, 9, 10, 11]).unwrap(), "aba\né");
        assert_eq!(t.token_to_piece(7).unwrap(), b" ab");
        assert_eq!(t.token_to_piece(10).unwrap(), [0xC3]);
        assert!(t.is_special(0) && t.is_special(1) && !t.is_special(7));
    }

    /// Gemma 4's BPE: spaces become `▁`, only newlines split words, a newline run that is a
    /// token is taken whole, bytes without a token fall back to `<0xNN>`, and BOS is always added
    /// (llama.cpp overrides the metadata).
    #[test]
    fn gemma4_raw_utf8_bpe() {
        let tokens = [
            "<pad>", "<eos>", "<bos>", "<unk>", "▁", "a", "b", "▁a", "ab", "\n", "\n\n", "<0xC3>",
            "<0xA9>", "▁ab",
        ];
        let types = [3, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 6, 6, 1];
        let ct = content(vec![
            (KEY_MODEL, Value::String("gemma4".into())),
            (KEY_TOKENS, strings(&tokens)),
            (KEY_TYPES, Value::Array(types.map(Value::I32).to_vec())),
            (KEY_MERGES, strings(&["▁ a", "a b", "▁a b"])),
            (KEY_BOS, Value::U32(2)),
            (KEY_EOS, Value::U32(1)),
            (KEY_ADD_BOS, Value::Bool(false)),
        ]);
        let t = from_gguf(&ct).unwrap();
        assert!(t.add_bos_token());
        // "a▁ab" | "\n\n" | "é": `▁ a` then `▁a b` merge; "\n\n" has no merge but is a token.
        let ids = t.encode("a ab\n\né", true).unwrap();
        assert_eq!(ids, [2, 5, 13, 10, 11, 12]);
        // Three newlines are no token: one each.
        assert_eq!(t.encode("\n\n\n", false).unwrap(), [9, 9, 9]);
        assert_eq!(t.decode(&ids).unwrap(), "a ab\n\né");
        assert_eq!(t.token_to_piece(13).unwrap(), b" ab");
        assert_eq!(t.token_to_piece(11).unwrap(), [0xC3]);
    }

    /// Byte-level vocabulary over the printable ASCII characters, which GPT-2's alphabet keeps
    /// as they are; `Ġ` is the space.
    fn ascii_bpe(pre: &str, merges: Option<&[&str]>) -> Result<Tokenizer, TokenizerError> {
        let mut tokens: Vec<String> = (b'!'..=b'~').map(|b| char::from(b).to_string()).collect();
        tokens.extend(["Ġ", "ab", "abc", "Ġab"].map(String::from));
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut entries = vec![
            (KEY_MODEL, Value::String("gpt2".into())),
            (KEY_PRE, Value::String(pre.into())),
            (KEY_TOKENS, strings(&tokens)),
            // No BOS token in this vocabulary.
            (KEY_ADD_BOS, Value::Bool(false)),
        ];
        if let Some(merges) = merges {
            entries.push((KEY_MERGES, strings(merges)));
        }
        from_gguf(&content(entries))
    }

    fn id(t: &Tokenizer, token: &str) -> u32 {
        t.token_to_id(token).unwrap()
    }

    /// `ignore_merges` follows the name: Llama 3 takes a word that is a token whole, DBRX (same
    /// regex) merges it.
    #[test]
    fn ignore_merges_follows_the_name() {
        // "abc" is a token, but no merge builds it from "ab" + "c".
        let merges: &[&str] = &["a b"];
        let llama3 = ascii_bpe("llama-bpe", Some(merges)).unwrap();
        assert_eq!(llama3.encode("abc", false).unwrap(), [id(&llama3, "abc")]);
        let dbrx = ascii_bpe("dbrx", Some(merges)).unwrap();
        assert_eq!(
            dbrx.encode("abc", false).unwrap(),
            [id(&dbrx, "ab"), id(&dbrx, "c")]
        );
    }

    /// Kimi K2's converter may leave out the merges, which llama.cpp accepts; no other family may.
    #[test]
    fn only_kimi_k2_may_lack_merges() {
        let kimi = ascii_bpe("kimi-k2", None).unwrap();
        assert_eq!(
            kimi.encode("ab c", false).unwrap(),
            [
                id(&kimi, "a"),
                id(&kimi, "b"),
                id(&kimi, "Ġ"),
                id(&kimi, "c")
            ]
        );
        let err = ascii_bpe("qwen2", None).unwrap_err();
        assert!(matches!(err, TokenizerError::MissingKey { ref key } if key == KEY_MERGES));
    }

    #[test]
    fn merge_lines_split_after_first_byte() {
        let tokens: Vec<String> = ["a", "b", "ab", " ", "  "].map(String::from).to_vec();
        let parsed = merges(&strings(&["a b", "   "]), &tokens).unwrap();
        assert_eq!(parsed, [("a".into(), "b".into()), (" ".into(), " ".into())]);
    }
}
