//! The synthetic vocabulary, exported as a Hugging Face folder and as GGUF metadata, gives the
//! same tokenizer both ways, and byte-level encoding round-trips any UTF-8 text.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use hearth_tokenizer::{ChatMessage, SyntheticVocab, Tokenizer};

/// Texts that exercise the pre-tokenizer and byte-level fallback.
const SAMPLES: &[&str] = &[
    "",
    " ",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces\tand\ttabs\n\nand newlines\r\n",
    "It's 2024-07-26; they'll pay $1,234.56 (maybe).",
    "emoji 🦙🚀😶‍🌫️ and flags 🇫🇷",
    "中文字符和日本語のテキスト, 한국어",
    "Ünïcödé çômbíning: e\u{301} a\u{308}",
    "control \u{0}\u{1}\u{7f} bytes",
    "fn main() {\n    println!(\"{}\", 42);\n}\n",
    "3333333 33 3.3 3...3",
];

fn hf_tokenizer(vocab: &SyntheticVocab, dir: &Path) -> Tokenizer {
    std::fs::write(dir.join("tokenizer.json"), vocab.tokenizer_json()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        vocab.tokenizer_config_json(),
    )
    .unwrap();
    Tokenizer::from_hf_dir(dir).unwrap()
}

/// Writes the metadata (and one tiny tensor) as a GGUF file in memory and reads it back.
fn gguf_tokenizer(vocab: &SyntheticVocab) -> Tokenizer {
    let metadata = vocab.gguf_metadata();
    let refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor =
        candle_core::Tensor::zeros(4, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let qtensor =
        candle_core::quantized::QTensor::quantize(&tensor, candle_core::quantized::GgmlDType::F32)
            .unwrap();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[("dummy", &qtensor)]).unwrap();
    buf.set_position(0);
    let content = Content::read(&mut buf).unwrap();
    assert_eq!(content.tensor_infos.len(), 1);
    Tokenizer::from_gguf(&content).unwrap()
}

/// Deterministic pseudo-random UTF-8 strings covering all planes.
fn random_strings(count: usize) -> Vec<String> {
    let mut state = hearth_core::SplitMix64::new(0x9E37_79B9_7F4A_7C15);
    let mut next = move || state.next_u64();
    (0..count)
        .map(|_| {
            let len = (next() % 40) as usize;
            (0..len)
                .filter_map(|_| {
                    let r = next();
                    let max = match r % 4 {
                        0 => 0x80,
                        1 => 0x800,
                        2 => 0x1_0000,
                        _ => 0x11_0000,
                    };
                    char::from_u32(((r >> 8) % max) as u32)
                })
                .collect()
        })
        .collect()
}

#[test]
fn hf_and_gguf_agree() {
    for size in [261, 1000, 32_000] {
        let vocab = SyntheticVocab::new(size).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let hf = hf_tokenizer(&vocab, dir.path());
        let gguf = gguf_tokenizer(&vocab);

        for t in [&hf, &gguf] {
            assert_eq!(t.vocab_size(), size);
            assert_eq!(t.bos_token_id(), Some(vocab.bos_id()));
            // <|eot_id|> is the EOS; <|end_of_text|> (id 257) also ends generation.
            assert_eq!(t.eos_token_ids(), &[vocab.eos_id(), 257]);
            assert!(t.add_bos_token());
        }
        let strings: Vec<String> = SAMPLES
            .iter()
            .map(|s| s.to_string())
            .chain(random_strings(200))
            .collect();
        for s in &strings {
            let a = hf.encode(s, true).unwrap();
            let b = gguf.encode(s, true).unwrap();
            assert_eq!(a, b, "size {size}: {s:?}");
            assert_eq!(a.first(), Some(&vocab.bos_id()));
        }

        let conversation = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi!"),
        ];
        let render = |t: &Tokenizer| t.chat_template().unwrap().render(&conversation, true);
        let prompt = render(&hf).unwrap();
        assert_eq!(prompt, render(&gguf).unwrap());
        assert_eq!(
            prompt,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let ids = hf.encode(&prompt, true).unwrap();
        assert_eq!(ids, gguf.encode(&prompt, true).unwrap());
        assert_eq!(&ids[..2], &[vocab.bos_id(), 258]);
        assert_eq!(ids.iter().filter(|&&id| id == vocab.eos_id()).count(), 2);
    }
}

#[test]
fn merges_make_common_words_single_tokens() {
    let vocab = SyntheticVocab::new(2000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = hf_tokenizer(&vocab, dir.path());
    let ids = t.encode(" the", false).unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    // A tiny vocabulary has no merges: one token per byte.
    let tiny = gguf_tokenizer(&SyntheticVocab::new(261).unwrap());
    assert_eq!(
        tiny.encode("héllo", false).unwrap(),
        [104, 195, 169, 108, 108, 111]
    );
}

#[test]
fn round_trips_arbitrary_utf8() {
    for size in [261, 4096] {
        let vocab = SyntheticVocab::new(size).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let t = hf_tokenizer(&vocab, dir.path());
        for s in SAMPLES
            .iter()
            .map(|s| s.to_string())
            .chain(random_strings(500))
        {
            let ids = t.encode(&s, true).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), s);

            // Streaming gives the same text, and every chunk is whole characters.
            let mut stream = t.stream();
            let mut streamed = String::new();
            for &id in &ids {
                if let Some(chunk) = stream.push(id).unwrap() {
                    streamed.push_str(&chunk);
                }
            }
            streamed.push_str(&stream.finish().unwrap());
            assert_eq!(streamed, s);
        }
    }
}

#[test]
fn stream_holds_back_split_characters() {
    // With 261 tokens every byte is its own token (id = byte value).
    let vocab = SyntheticVocab::new(261).unwrap();
    let t = gguf_tokenizer(&vocab);
    let llama = "🦙".as_bytes();
    let mut stream = t.stream();
    assert_eq!(stream.push(u32::from(b'a')).unwrap().as_deref(), Some("a"));
    for &b in &llama[..3] {
        assert_eq!(stream.push(u32::from(b)).unwrap(), None);
    }
    assert_eq!(
        stream.push(u32::from(llama[3])).unwrap().as_deref(),
        Some("🦙")
    );
    // Special tokens produce no text.
    assert_eq!(stream.push(vocab.eos_id()).unwrap(), None);
    // An invalid byte becomes U+FFFD without stalling what follows.
    assert_eq!(stream.push(0xFF).unwrap().as_deref(), Some("\u{FFFD}"));
    assert_eq!(stream.push(u32::from(b'b')).unwrap().as_deref(), Some("b"));
    // An unfinished character is flushed lossily at the end.
    assert_eq!(stream.push(u32::from(llama[0])).unwrap(), None);
    assert_eq!(stream.finish().unwrap(), "\u{FFFD}");

    let mut stream = t.stream();
    assert!(stream.push(261).is_err());
    assert!(t.decode(&[261]).is_err());
    assert_eq!(t.token_to_piece(u32::from(b' ')).unwrap(), b" ");
    assert_eq!(
        t.token_to_piece(vocab.bos_id()).unwrap(),
        b"<|begin_of_text|>"
    );
}
