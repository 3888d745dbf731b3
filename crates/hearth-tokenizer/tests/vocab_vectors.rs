//! llama.cpp's tokenizer test vectors (`tests/data/ggml-vocab-*.gguf.{inp,out}`): a tokenizer
//! built from each GGUF file must reproduce every expected id sequence.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use hearth_tokenizer::Tokenizer;

/// llama.cpp's test-tokenizer-0 splits the `.inp` file on this separator; the file ends with one,
/// so the last (empty) piece is not an input.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn load(name: &str) -> Tokenizer {
    let path = data_dir().join(format!("ggml-vocab-{name}.gguf"));
    let mut file = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let content = Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Inputs and expected ids (without BOS) of one vocabulary.
fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = data_dir().join(format!("ggml-vocab-{name}.gguf"));
    let inp = fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let mut inputs: Vec<&str> = inp.split(SEPARATOR).collect();
    assert_eq!(
        inputs.pop(),
        Some(""),
        "{name}.inp must end with the separator"
    );
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| id.parse().expect("numeric id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{name}: .inp and .out disagree"
    );
    inputs.into_iter().map(String::from).zip(expected).collect()
}

fn check(name: &str) {
    let tokenizer = load(name);
    let vectors = vectors(name);
    let mut failures = Vec::new();
    for (i, (input, expected)) in vectors.iter().enumerate() {
        let actual = tokenizer.encode(input, false).expect("encode");
        if &actual != expected {
            failures.push(format!(
                "  #{i} input {input:?}\n    expected {expected:?}\n    actual   {actual:?}"
            ));
        }
    }
    eprintln!(
        "{name}: {}/{} vectors pass",
        vectors.len() - failures.len(),
        vectors.len()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} of {} vectors fail:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

/// Decoding the ids gives back the input (SentencePiece drops its prefix space again), and
/// the metadata's special tokens come through.
#[test]
fn round_trip_and_specials() {
    for name in ["llama-spm", "llama-bpe", "qwen2", "gpt-2"] {
        let tokenizer = load(name);
        for (input, expected) in vectors(name) {
            let decoded = tokenizer.decode(&expected).expect("decode");
            // Qwen2 normalizes to NFC, which these inputs already are.
            assert_eq!(decoded, input, "{name}: decode of {expected:?}");
        }
    }

    let spm = load("llama-spm");
    assert_eq!(spm.bos_token_id(), Some(1));
    assert_eq!(spm.eos_token_ids(), &[2]);
    assert_eq!(spm.vocab_size(), 32000);
    assert_eq!(spm.encode("Hello", true).unwrap(), vec![1, 15043]);

    let llama3 = load("llama-bpe");
    assert_eq!(llama3.bos_token_id(), Some(128000));
    // <|end_of_text|> from the metadata, then <|eot_id|> as llama.cpp does.
    assert_eq!(llama3.eos_token_ids(), &[128001, 128009]);
    assert!(llama3.add_bos_token());
    assert_eq!(llama3.encode("Hello", true).unwrap(), vec![128000, 9906]);
    // Special-token text in a prompt becomes the special id, and BOS is not doubled.
    assert_eq!(
        llama3
            .encode("<|begin_of_text|><|start_header_id|>user", true)
            .unwrap(),
        vec![128000, 128006, 882]
    );

    let qwen2 = load("qwen2");
    assert!(!qwen2.add_bos_token());
    assert_eq!(qwen2.encode("Hello", true).unwrap(), vec![9707]);
    assert_eq!(qwen2.eos_token_ids(), &[151643, 151645]);
    assert!(qwen2.chat_template().is_some());

    let gpt2 = load("gpt-2");
    assert_eq!(gpt2.eos_token_ids(), &[50256]);
    assert!(gpt2.is_special(50256));
}
