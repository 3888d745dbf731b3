//! Real chat templates (Llama 3.1, Qwen2.5, Qwen3, Phi-3, Mistral Nemo) render exactly as
//! transformers' `apply_chat_template` does. Expected strings were derived by reading the templates (and agree
//! with Python Jinja2 configured like transformers).

use std::fs;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use hearth_tokenizer::{ChatMessage, ChatTemplate, Tokenizer, TokenizerError};

fn template(file: &str, bos: Option<&str>, eos: Option<&str>) -> ChatTemplate {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/templates")
        .join(file);
    let source = fs::read_to_string(&path).expect("read template");
    ChatTemplate::new(source, bos.map(String::from), eos.map(String::from))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn llama31() -> ChatTemplate {
    template(
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        Some("<|begin_of_text|>"),
        Some("<|eot_id|>"),
    )
}

fn qwen25() -> ChatTemplate {
    template("Qwen-Qwen2.5-7B-Instruct.jinja", None, Some("<|im_end|>"))
}

fn mistral_nemo() -> ChatTemplate {
    template(
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        Some("<s>"),
        Some("</s>"),
    )
}

fn qwen3() -> ChatTemplate {
    // Qwen3's tokenizer_config has no bos_token (null).
    template("Qwen-Qwen3-0.6B.jinja", None, Some("<|im_end|>"))
}

fn phi3() -> ChatTemplate {
    template(
        "microsoft-Phi-3-mini-4k-instruct.jinja",
        Some("<s>"),
        Some("<|endoftext|>"),
    )
}

/// system + user.
fn two_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Hello!"),
    ]
}

/// system + user + assistant + user.
fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Hello!"),
        ChatMessage::new("assistant", "Hi there! How can I help?"),
        ChatMessage::new("user", "What is 2+2?"),
    ]
}

#[test]
fn llama31_renders() {
    let out = llama31().render(&conversation(), true).unwrap();
    let expected = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
        Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n\
        You are a helpful assistant.<|eot_id|>\
        <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
        <|start_header_id|>assistant<|end_header_id|>\n\nHi there! How can I help?<|eot_id|>\
        <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
        <|start_header_id|>assistant<|end_header_id|>\n\n";
    assert_eq!(out, expected);
}

#[test]
fn llama31_without_system_and_with_padding() {
    // No system message: the system header still carries the dates; contents are trimmed.
    let msgs = [ChatMessage::new("user", "  Hello!\n")];
    let out = llama31().render(&msgs, false).unwrap();
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
    );
}

#[test]
fn qwen25_renders() {
    let out = qwen25().render(&conversation(), true).unwrap();
    let expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
        <|im_start|>user\nHello!<|im_end|>\n\
        <|im_start|>assistant\nHi there! How can I help?<|im_end|>\n\
        <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
        <|im_start|>assistant\n";
    assert_eq!(out, expected);
}

#[test]
fn qwen25_default_system_prompt() {
    let out = qwen25()
        .render(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
         assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen3_renders() {
    let out = qwen3().render(&two_messages(), true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// The thinking of an answer before the last user turn is dropped; the final answer after the
/// last user turn keeps it, stripped of the newlines around it.
#[test]
fn qwen3_keeps_only_the_last_turns_thinking() {
    let earlier = [
        ChatMessage::new("user", "What is 2+2?"),
        ChatMessage::new("assistant", "<think>\nSimple arithmetic.\n</think>\n\n4"),
        ChatMessage::new("user", "And 3+3?"),
    ];
    assert_eq!(
        qwen3().render(&earlier, true).unwrap(),
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
    let last = [
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("assistant", "<think>\n\nGreet back.\n</think>\n\nHello!"),
    ];
    assert_eq!(
        qwen3().render(&last, false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello!<|im_end|>\n"
    );
}

#[test]
fn phi3_renders() {
    let template = phi3();
    assert_eq!(
        template.render(&two_messages(), true).unwrap(),
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\n"
    );
    // Without the generation prompt the conversation is closed with the EOS token.
    assert_eq!(
        template.render(&two_messages(), false).unwrap(),
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n<|endoftext|>"
    );
}

#[test]
fn mistral_nemo_renders() {
    // The system message goes into the last user turn; there is no generation prompt to add.
    let expected = "<s>[INST]Hello![/INST]Hi there! How can I help?</s>\
                    [INST]You are a helpful assistant.\n\nWhat is 2+2?[/INST]";
    let template = mistral_nemo();
    assert_eq!(template.render(&conversation(), true).unwrap(), expected);
    assert_eq!(template.render(&conversation(), false).unwrap(), expected);
}

#[test]
fn mistral_nemo_rejects_non_alternating_roles() {
    let msgs = [
        ChatMessage::new("user", "Hello!"),
        ChatMessage::new("user", "Anyone there?"),
    ];
    let err = mistral_nemo().render(&msgs, true).unwrap_err();
    assert!(matches!(err, TokenizerError::TemplateRender(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("conversation roles must alternate user/assistant"),
        "{err}"
    );

    let msgs = [
        ChatMessage::new("user", "Tell me a story."),
        ChatMessage::new("narrator", "Once upon a time"),
    ];
    let err = mistral_nemo().render(&msgs, true).unwrap_err();
    assert!(
        err.to_string().contains("Only user and assistant roles"),
        "{err}"
    );
}

#[test]
fn empty_conversation_is_an_error_not_a_panic() {
    for template in [llama31(), qwen25(), qwen3(), phi3(), mistral_nemo()] {
        // Jinja2 fails on `messages[0]['role']` too; all that matters is that we return.
        let _ = template.render(&[], true);
    }
}

/// The GGUF's own template (Qwen2 vocabulary file) renders, and the Llama 3.1 prompt tokenizes
/// with its special tokens intact.
#[test]
fn templates_with_real_vocabularies() {
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/data/ggml-vocab-{name}.gguf"));
        let mut file = fs::File::open(path).unwrap();
        Tokenizer::from_gguf(&Content::read(&mut file).unwrap()).unwrap()
    };

    let qwen = load("qwen2");
    let prompt = qwen
        .chat_template()
        .expect("qwen2 GGUF ships a template")
        .render(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert!(prompt.starts_with("<|im_start|>system\n"), "{prompt:?}");
    assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
    let ids = qwen.encode(&prompt, true).unwrap();
    assert_eq!(ids.first(), Some(&151644));
    assert_eq!(ids.iter().filter(|&&id| id == 151645).count(), 2);

    let llama = load("llama-bpe");
    let prompt = llama31().render(&conversation(), true).unwrap();
    let ids = llama.encode(&prompt, true).unwrap();
    // BOS (from the template, not doubled), <|start_header_id|>, "system", <|end_header_id|>, "\n\n".
    assert_eq!(&ids[..5], &[128000, 128006, 9125, 128007, 271]);
    assert_eq!(ids.iter().filter(|&&id| id == 128009).count(), 4);
    assert_eq!(llama.decode(&ids).unwrap().matches("<|").count(), 0);
}
