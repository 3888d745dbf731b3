//! GPT-2's reversible mapping between bytes and printable unicode characters, used by byte-level
//! BPE vocabularies (every token is a string of these 256 characters).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The character GPT-2 uses to represent `byte`.
///
/// Printable Latin-1 bytes map to themselves; the other 68 bytes map, in order, to U+0100 onwards,
/// which is why a space shows up as `Ġ` (U+0120) and a newline as `Ċ` (U+010A).
pub(crate) fn byte_to_char(byte: u8) -> char {
    table().0[byte as usize]
}

/// Inverse of [`byte_to_char`]; `None` for characters outside the 256-character alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    table().1.get(&c).copied()
}

/// Bytes spelled by a byte-level token, or `None` when it contains a character outside the
/// alphabet (added tokens such as `<|eot_id|>` are stored as plain text and are handled by the
/// caller).
pub(crate) fn token_to_bytes(token: &str) -> Option<Vec<u8>> {
    token.chars().map(char_to_byte).collect()
}

fn table() -> &'static ([char; 256], HashMap<char, u8>) {
    static TABLE: OnceLock<([char; 256], HashMap<char, u8>)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut chars = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            chars[b as usize] = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                c
            };
        }
        let inverse = (0..=255u8).map(|b| (chars[b as usize], b)).collect();
        (chars, inverse)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), 'Ń');
    }

    #[test]
    fn bijective() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
        assert_eq!(token_to_bytes("Ġhi"), Some(b" hi".to_vec()));
        assert_eq!(token_to_bytes("<|x€|>"), None);
    }
}
