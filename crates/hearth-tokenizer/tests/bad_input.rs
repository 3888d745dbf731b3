//! Broken metadata and files give a `TokenizerError` that names the culprit, never a panic.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use hearth_tokenizer::{SyntheticVocab, Tokenizer, TokenizerError};

fn metadata() -> HashMap<String, Value> {
    SyntheticVocab::new(300)
        .unwrap()
        .gguf_metadata()
        .into_iter()
        .collect()
}

fn build(metadata: HashMap<String, Value>) -> Result<Tokenizer, TokenizerError> {
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    Tokenizer::from_gguf(&content)
}

/// Applies `edit` to valid metadata and checks that the error mentions `needle`.
fn expect_error(edit: impl FnOnce(&mut HashMap<String, Value>), needle: &str) -> TokenizerError {
    let mut md = metadata();
    edit(&mut md);
    let err = build(md).expect_err("broken metadata must be rejected");
    assert!(
        err.to_string().contains(needle),
        "error `{err}` does not mention `{needle}`"
    );
    err
}

fn set(md: &mut HashMap<String, Value>, key: &str, value: Value) {
    md.insert(key.to_owned(), value);
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

#[test]
fn valid_metadata_builds() {
    assert!(build(metadata()).is_ok());
}

#[test]
fn missing_keys() {
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
    ] {
        let err = expect_error(
            |md| {
                md.remove(key);
            },
            key,
        );
        assert!(matches!(err, TokenizerError::MissingKey { .. }), "{err:?}");
    }
    // A SentencePiece vocabulary needs scores.
    expect_error(
        |md| set(md, "tokenizer.ggml.model", Value::String("llama".into())),
        "tokenizer.ggml.scores",
    );
}

#[test]
fn wrong_types() {
    expect_error(
        |md| set(md, "tokenizer.ggml.model", Value::U32(2)),
        "tokenizer.ggml.model",
    );
    expect_error(
        |md| set(md, "tokenizer.ggml.tokens", Value::String("a".into())),
        "tokenizer.ggml.tokens",
    );
    expect_error(
        |md| {
            if let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") {
                tokens[5] = Value::U8(5);
            }
        },
        "tokenizer.ggml.tokens[5]",
    );
    expect_error(
        |md| set(md, "tokenizer.ggml.token_type", strings(&["x"])),
        "tokenizer.ggml.token_type[0]",
    );
    expect_error(
        |md| {
            set(
                md,
                "tokenizer.ggml.token_type",
                Value::Array(vec![Value::I32(1)]),
            )
        },
        "tokenizer.ggml.token_type",
    );
    expect_error(
        |md| {
            set(
                md,
                "tokenizer.ggml.add_bos_token",
                Value::String("yes".into()),
            )
        },
        "tokenizer.ggml.add_bos_token",
    );
    expect_error(
        |md| set(md, "tokenizer.ggml.bos_token_id", Value::F32(1.0)),
        "tokenizer.ggml.bos_token_id",
    );
    expect_error(
        |md| {
            set(md, "tokenizer.ggml.model", Value::String("llama".into()));
            set(md, "tokenizer.ggml.scores", strings(&["0.0"]));
        },
        "tokenizer.ggml.scores",
    );
    expect_error(
        |md| {
            set(md, "tokenizer.ggml.model", Value::String("llama".into()));
            set(
                md,
                "tokenizer.ggml.scores",
                Value::Array(vec![Value::F32(0.0)]),
            );
        },
        "tokenizer.ggml.scores",
    );
}

#[test]
fn ids_out_of_range() {
    for key in [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
    ] {
        expect_error(|md| set(md, key, Value::U32(300)), key);
        expect_error(|md| set(md, key, Value::I32(-1)), key);
        expect_error(|md| set(md, key, Value::U64(u64::MAX)), key);
    }
}

/// Metadata that contradicts itself: the file is refused at load, naming the key.
#[test]
fn inconsistent_vocabularies() {
    // Two tokens spelled alike: text could not tell them apart (llama.cpp refuses this too).
    let err = expect_error(
        |md| {
            if let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") {
                tokens[40] = tokens[39].clone();
            }
        },
        "tokenizer.ggml.tokens",
    );
    assert!(err.to_string().contains("39 and 40"), "{err}");
    // A token type llama.cpp does not define.
    expect_error(
        |md| {
            if let Some(Value::Array(types)) = md.get_mut("tokenizer.ggml.token_type") {
                types[7] = Value::I32(9);
            }
        },
        "tokenizer.ggml.token_type[7]",
    );
    // Prompts must start with BOS, but there is none.
    for add_bos in [Some(true), None] {
        expect_error(
            |md| {
                md.remove("tokenizer.ggml.bos_token_id");
                match add_bos {
                    Some(flag) => set(md, "tokenizer.ggml.add_bos_token", Value::Bool(flag)),
                    // Llama 3's pre-tokenizer adds BOS unless the metadata says not to.
                    None => {
                        md.remove("tokenizer.ggml.add_bos_token");
                    }
                }
            },
            "tokenizer.ggml.bos_token_id",
        );
    }
    // Without BOS and without asking for it, the vocabulary is fine.
    let mut md = metadata();
    md.remove("tokenizer.ggml.bos_token_id");
    set(&mut md, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    let t = build(md).expect("no BOS needed");
    assert!(!t.add_bos_token());
}

#[test]
fn bad_merges() {
    expect_error(
        |md| set(md, "tokenizer.ggml.merges", strings(&["Ġ t", "foo bar"])),
        "tokenizer.ggml.merges",
    );
    let err = expect_error(
        |md| set(md, "tokenizer.ggml.merges", strings(&["Ġt"])),
        "tokenizer.ggml.merges",
    );
    assert!(matches!(err, TokenizerError::BadValue { .. }), "{err:?}");
    // Both parts known, but their concatenation is not a token.
    expect_error(
        |md| set(md, "tokenizer.ggml.merges", strings(&["x q"])),
        "`xq`",
    );
}

#[test]
fn unsupported_flavours() {
    let err = expect_error(
        |md| set(md, "tokenizer.ggml.model", Value::String("bert".into())),
        "tokenizer.ggml.model",
    );
    assert!(matches!(err, TokenizerError::Unsupported { .. }), "{err:?}");
    let err = expect_error(
        |md| set(md, "tokenizer.ggml.pre", Value::String("made-up".into())),
        "made-up",
    );
    assert!(err.to_string().contains("tokenizer.ggml.pre"), "{err}");
    assert!(matches!(err, TokenizerError::Unsupported { .. }), "{err:?}");
    // A name llama.cpp does not know either, though the model type is spelled `gpt2`.
    expect_error(
        |md| set(md, "tokenizer.ggml.pre", Value::String("gpt2".into())),
        "`tokenizer.ggml.pre` = `gpt2`",
    );
    expect_error(
        |md| set(md, "tokenizer.ggml.tokens", Value::Array(Vec::new())),
        "tokenizer.ggml.tokens",
    );
}

#[test]
fn broken_chat_template() {
    expect_error(
        |md| {
            set(
                md,
                "tokenizer.chat_template",
                Value::String("{% for %}".into()),
            )
        },
        "tokenizer.chat_template",
    );
}

#[test]
fn out_of_range_ids_when_decoding() {
    let t = build(metadata()).unwrap();
    let err = t.decode(&[1, 300]).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnknownTokenId { id: 300, .. }),
        "{err:?}"
    );
    assert!(t.token_to_piece(u32::MAX).is_err());
    assert!(t.stream().push(300).is_err());
}

fn write_dir(dir: &Path, tokenizer_json: Option<&str>, config: Option<&str>) {
    let vocab = SyntheticVocab::new(300).unwrap();
    let json = tokenizer_json.map_or_else(|| vocab.tokenizer_json(), str::to_owned);
    std::fs::write(dir.join("tokenizer.json"), json).unwrap();
    if let Some(config) = config {
        std::fs::write(dir.join("tokenizer_config.json"), config).unwrap();
    }
}

fn hf_error(tokenizer_json: Option<&str>, config: Option<&str>, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), tokenizer_json, config);
    let err = Tokenizer::from_hf_dir(dir.path()).expect_err("must be rejected");
    assert!(
        err.to_string().contains(needle),
        "error `{err}` does not mention `{needle}`"
    );
}

#[test]
fn bad_hf_folders() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    hf_error(Some("{\"model\": 3}"), None, "tokenizer.json");
    hf_error(None, Some("[1, 2]"), "tokenizer_config.json");
    hf_error(None, Some("{not json"), "tokenizer_config.json");
    hf_error(None, Some(r#"{"bos_token": 5}"#), "bos_token");
    hf_error(None, Some(r#"{"eos_token": "<|nope|>"}"#), "<|nope|>");
    hf_error(None, Some(r#"{"add_bos_token": "yes"}"#), "add_bos_token");
    hf_error(None, Some(r#"{"chat_template": 1}"#), "chat_template");
    hf_error(
        None,
        Some(r#"{"chat_template": [{"name": "x"}]}"#),
        "chat_template",
    );
    hf_error(None, Some(r#"{"chat_template": "{% if %}"}"#), "compile");
}

#[test]
fn hf_config_variants() {
    // Only tokenizer.json: BOS comes from nowhere, so none is added; no template.
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), None, None);
    let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.bos_token_id(), None);
    assert!(t.chat_template().is_none());
    // <|eot_id|> and <|end_of_text|> are still recognised as end-of-generation tokens.
    assert_eq!(t.eos_token_ids(), &[257, 260]);

    // Token objects, templates as a named list ("default" wins), BOS from the post-processor,
    // and extra EOS ids from generation_config.json.
    let dir = tempfile::tempdir().unwrap();
    let config = r#"{
        "bos_token": {"content": "<|begin_of_text|>", "special": true},
        "eos_token": {"content": "<|end_of_text|>"},
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}
        ]
    }"#;
    write_dir(dir.path(), None, Some(config));
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [257, 260, 259]}"#,
    )
    .unwrap();
    let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
    assert_eq!(t.bos_token_id(), Some(256));
    assert!(
        t.add_bos_token(),
        "tokenizer.json's TemplateProcessing adds BOS"
    );
    assert_eq!(t.eos_token_ids(), &[257, 260, 259]);
    let msgs = [hearth_tokenizer::ChatMessage::new("user", "x")];
    assert_eq!(
        t.chat_template().unwrap().render(&msgs, false).unwrap(),
        "<|begin_of_text|>x<|end_of_text|>"
    );

    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 100000}"#,
    )
    .unwrap();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(err.to_string().contains("generation_config.json"), "{err}");
}
