//! llama.cpp's tokenizer test vectors (`tests/data/ggml-vocab-*.gguf.{inp,out}`): a tokenizer
//! built from each GGUF file must reproduce every expected id sequence.
//!
//! The vocabularies too large to commit (Command-R, Gemma 4) are read from
//! `$HEARTH_LLAMA_VOCAB_DIR`, default `<workspace>/target/llama-vocab`, where
//! `tests/data/scripts/fetch_large_vocabs.sh` puts them; without them those tests say SKIPPED.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use hearth_tokenizer::Tokenizer;

/// llama.cpp's test-tokenizer-0 splits the `.inp` file on this separator; a file that ends with
/// one has no empty last input.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Where the fetched (uncommitted) vocabularies are.
fn large_vocab_dir() -> PathBuf {
    match std::env::var_os("HEARTH_LLAMA_VOCAB_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/llama-vocab"),
    }
}

fn gguf_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("ggml-vocab-{name}.gguf"))
}

fn read_content(path: &Path) -> Content {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Content::read(&mut file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn build(content: &Content, what: &str) -> Tokenizer {
    Tokenizer::from_gguf(content).unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn load(name: &str) -> Tokenizer {
    build(&read_content(&gguf_path(&data_dir(), name)), name)
}

/// A committed vocabulary read with another `tokenizer.ggml.pre` name.
fn load_as(name: &str, pre: &str) -> Tokenizer {
    let mut content = read_content(&gguf_path(&data_dir(), name));
    content
        .metadata
        .insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    build(&content, &format!("{name} as {pre}"))
}

/// Inputs and expected ids (without BOS) from `<dir>/ggml-vocab-<name>.gguf.{inp,out}`.
fn vectors_in(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let base = gguf_path(dir, name);
    let inp = fs::read_to_string(base.with_extension("gguf.inp")).expect("read .inp");
    let out = fs::read_to_string(base.with_extension("gguf.out")).expect("read .out");
    let mut inputs: Vec<&str> = inp.split(SEPARATOR).collect();
    if inputs.last() == Some(&"") {
        inputs.pop();
    }
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

fn vectors(name: &str) -> Vec<(String, Vec<u32>)> {
    vectors_in(&data_dir(), name)
}

fn check_with(tokenizer: &Tokenizer, label: &str, vectors: &[(String, Vec<u32>)]) {
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
        "{label}: {}/{} vectors pass",
        vectors.len() - failures.len(),
        vectors.len()
    );
    assert!(
        failures.is_empty(),
        "{label}: {} of {} vectors fail:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

fn check(name: &str) {
    check_with(&load(name), name, &vectors(name));
}

/// A vocabulary that `fetch_large_vocabs.sh` provides; skipped (with a message) when absent.
fn check_large(name: &str) {
    let dir = large_vocab_dir();
    let path = gguf_path(&dir, name);
    if !path.exists() {
        eprintln!(
            "SKIPPED {name}: {} is absent; run crates/hearth-tokenizer/tests/data/scripts/fetch_large_vocabs.sh",
            path.display()
        );
        return;
    }
    check_with(
        &build(&read_content(&path), name),
        name,
        &vectors_in(&dir, name),
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

#[test]
fn phi_3() {
    check("phi-3");
}

#[test]
fn deepseek_llm() {
    check("deepseek-llm");
}

#[test]
fn deepseek_coder() {
    check("deepseek-coder");
}

#[test]
fn falcon() {
    check("falcon");
}

#[test]
fn mpt() {
    check("mpt");
}

#[test]
fn starcoder() {
    check("starcoder");
}

#[test]
fn refact() {
    check("refact");
}

/// llama.cpp's Qwen3.5 vocabulary file is Qwen2's with `tokenizer.ggml.pre = qwen35` (every
/// other key is equal), so the Qwen2 file stands in for it.
#[test]
fn qwen35() {
    check_with(&load_as("qwen2", "qwen35"), "qwen35", &vectors("qwen35"));
}

/// SmolLM's pre-tokenizer is StarCoder's in llama.cpp: read with the name `smollm`, the StarCoder
/// vocabulary gives llama.cpp's StarCoder vectors.
#[test]
fn smollm_name_splits_like_starcoder() {
    check_with(
        &load_as("starcoder", "smollm"),
        "starcoder as smollm",
        &vectors("starcoder"),
    );
}

/// SmolLM2-135M-Instruct's own vocabulary (`tokenizer.ggml.pre = smollm`). Its expected ids come
/// from Hugging Face `tokenizers` set up as SmolLM2's tokenizer.json (see tests/data/README.md).
#[test]
fn smollm2() {
    check("smollm");
    let smol = load("smollm");
    assert_eq!(
        smol.encode("The capital of France is", true).unwrap(),
        [504, 3575, 282, 4649, 314],
        "no BOS: the metadata says add_bos_token = false"
    );
    assert_eq!(smol.bos_token_id(), Some(1));
    // <|im_end|> from the metadata, then the other end-of-generation controls it has.
    assert_eq!(smol.eos_token_ids(), &[2, 0]);
    let im_start = smol.token_to_id("<|im_start|>").unwrap();
    assert!(smol.is_special(im_start));
    assert_eq!(
        smol.decode(&[504, 3575, 282, 4649, 314]).unwrap(),
        "The capital of France is"
    );
}

#[test]
fn command_r() {
    check_large("command-r");
}

#[test]
fn gemma_4() {
    check_large("gemma-4");
}

/// Decoding the ids gives back the input (SentencePiece drops its prefix space again), and
/// the metadata's special tokens come through.
#[test]
fn round_trip_and_specials() {
    for name in [
        "llama-spm",
        "llama-bpe",
        "qwen2",
        "gpt-2",
        "phi-3",
        "deepseek-llm",
        "deepseek-coder",
        "falcon",
        "mpt",
        "starcoder",
        "refact",
        "smollm",
    ] {
        let tokenizer = load(name);
        for (input, expected) in vectors(name) {
            // Decoding drops control tokens, so texts that spell them do not come back whole.
            if expected.iter().any(|&id| tokenizer.is_special(id)) {
                continue;
            }
            let decoded = tokenizer.decode(&expected).expect("decode");
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
