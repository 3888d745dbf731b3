//! Incremental detokenization for streaming generated text.

use tokenizers::DecoderWrapper;

use crate::error::TokenizerError;
use crate::Tokenizer;

/// How a (non-added) token's string maps to the bytes it contributes to the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceKind {
    /// GPT-2 byte-to-unicode alphabet (GPT-2, Llama 3, Qwen2, ...).
    ByteLevel,
    /// SentencePiece: `▁` is a space and `<0xNN>` is a raw byte.
    SentencePiece,
    /// Anything else: ask the tokenizer's own decoder, one token at a time.
    Other,
}

impl PieceKind {
    /// Guesses the piece encoding from a `tokenizer.json` decoder.
    pub(crate) fn detect(decoder: Option<&DecoderWrapper>) -> Self {
        let mut types = Vec::new();
        if let Ok(json) = serde_json::to_value(decoder) {
            collect_types(&json, &mut types);
        }
        if types.iter().any(|t| t == "ByteLevel") {
            Self::ByteLevel
        } else if types
            .iter()
            .any(|t| t == "ByteFallback" || t == "Metaspace")
        {
            Self::SentencePiece
        } else {
            Self::Other
        }
    }
}

fn collect_types(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(t)) = map.get("type") {
                out.push(t.clone());
            }
            map.values().for_each(|v| collect_types(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_types(v, out)),
        _ => {}
    }
}

/// Parses a SentencePiece byte token such as `<0x0A>`.
pub(crate) fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Incremental detokenizer: push generated token ids one at a time and receive the text they
/// complete.
///
/// Token bytes are accumulated and only whole UTF-8 characters are released, so a character split
/// across several byte tokens (SentencePiece `<0xNN>` fallback or byte-level BPE) comes out once
/// complete. Invalid byte sequences become U+FFFD, as in lossy decoding. Special (control) tokens
/// are skipped, like [`Tokenizer::decode`] does. Unlike `decode`, a SentencePiece leading space is
/// kept: the stream continues a prompt, so " world" after "Hello" must keep its space.
#[derive(Debug)]
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    /// Starts an empty stream over `tokenizer`'s vocabulary.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text it completes, or `None` while a character is still
    /// incomplete (or the token is special).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        if self.tokenizer.is_special(id) {
            return Ok(None);
        }
        self.pending
            .extend_from_slice(&self.tokenizer.token_to_piece(id)?);
        let text = take_complete(&mut self.pending);
        Ok((!text.is_empty()).then_some(text))
    }

    /// Ends the stream, returning whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.pending).into_owned())
    }
}

/// Removes and returns the longest prefix of `buf` that can be decoded now; a trailing incomplete
/// character stays in `buf` for the next token.
fn take_complete(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    while start < buf.len() {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                out.push_str(&String::from_utf8_lossy(&buf[start..valid]));
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid + bad;
                    }
                    None => {
                        start = valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }

    #[test]
    fn keeps_incomplete_tail() {
        let emoji = "🦙".as_bytes();
        let mut buf = b"a".to_vec();
        buf.extend_from_slice(&emoji[..2]);
        assert_eq!(take_complete(&mut buf), "a");
        assert_eq!(buf, &emoji[..2]);
        buf.extend_from_slice(&emoji[2..]);
        assert_eq!(take_complete(&mut buf), "🦙");
        assert!(buf.is_empty());
    }

    #[test]
    fn replaces_invalid_bytes() {
        let mut buf = vec![b'x', 0xFF, b'y', 0xE2, 0x82];
        assert_eq!(take_complete(&mut buf), "x\u{FFFD}y");
        assert_eq!(buf, [0xE2, 0x82]);
        // A complete-looking but invalid continuation resolves immediately.
        buf.push(b'z');
        assert_eq!(take_complete(&mut buf), "\u{FFFD}z");
        assert!(buf.is_empty());
    }
}
