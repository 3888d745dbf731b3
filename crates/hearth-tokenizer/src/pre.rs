//! llama.cpp's pre-tokenizers for BPE vocabularies: how a `tokenizer.ggml.pre` name splits text
//! into words before merges, and the loader flags that come with the name.
//!
//! llama.cpp (`src/llama-vocab.cpp`) maps each name to a `LLAMA_VOCAB_PRE_TYPE_*` and each type
//! to a list of regexes; here the types whose regex lists are identical form one [`Family`], and
//! each name maps to one family plus its flags ([`PreTokenizer::from_name`]).
//!
//! Invariants:
//! - A family's regexes run in order, each one splitting every piece the previous ones left, and
//!   the text between matches stays a piece of its own (llama.cpp's `unicode_regex_split`, and
//!   Hugging Face's `Split` with `Isolated` behaviour). Concatenating the pieces gives the text.
//! - The regexes are llama.cpp's, spelled as llama.cpp spells them for its own regex engine, so
//!   that Oniguruma matches what llama.cpp matches. Where llama.cpp does not run its regex as
//!   written (a hand-written splitter, or `\p{Lu}`-style classes that its engine widens to all
//!   letters), the regex here states what llama.cpp actually does; each such place says so.
//! - `tests/data/llama-pre-splits.json`, produced by llama.cpp's own splitter, holds the expected
//!   pieces of every family on a set of inputs, and the names, flags and regexes of every type;
//!   the tests below check all of them.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::TokenizerError;

/// English contractions, case-insensitive, as llama.cpp spells them (its regex engine has no
/// `(?i:...)`).
macro_rules! contractions {
    () => {
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    };
}

/// GPT-2's word regex (without the final `|\s+`: whitespace it leaves is a piece anyway).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's word regex: letters with one leading non-letter, digits in threes, punctuation with
/// trailing newlines, newlines, whitespace.
pub(crate) const REGEX_LLAMA3: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// Qwen2's: Llama 3's with single digits.
const QWEN2: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

/// Digit runs split into groups of three counted from the right (`1234567` → `1`, `234`, `567`).
/// llama.cpp does this with a hand-written splitter for AFMoE's `\p{AFMoE_digits}` and for Tiny
/// Aya's `\d{1,3}(?=(?:\d{3})*\b)` alike.
const DIGITS_FROM_RIGHT: &str = r"\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N}))";

/// DeepSeek V3's and AFMoE's word regex (ASCII punctuation may lead a Latin word, digits are
/// never part of a word).
const DEEPSEEK3_WORDS: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

// Non-ASCII characters in regexes are written as escapes: the same text after Unicode
// normalization (which editors may apply) would be another regex, e.g. U+2126 OHM SIGN is
// canonically U+03A9. Each stands as it is in llama.cpp's source.

/// CJK ideographs (U+4E00..U+9FA5), U+0800..U+4E00 and Hangul, as DeepSeek's regexes write them,
/// less whitespace: llama.cpp's engine sees every non-ASCII space as U+000B, which is in none of
/// these ranges (U+0800..U+4E00 holds U+2000..U+200A, U+3000 and others).
const CJK_HANGUL: &str = "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}&&\\S]+";

/// CJK ideographs, Hiragana and Katakana.
const CJK_KANA: &str = "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+";

/// BLOOM's words: anything but whitespace and a few (Latin, CJK, Devanagari, Arabic)
/// punctuation marks, with one leading space. The parentheses and `|` are in the class too.
const BLOOM_WORDS: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{ff0c}\u{3001}\u{964}\u{6d4}\u{60c})]+";

/// Han characters as llama.cpp's Kimi-K2 splitter counts them (`unicode_cpt_is_han`): the CJK
/// unified ideographs, their extensions A to F and the compatibility ideographs.
macro_rules! han {
    () => {
        r"\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{20000}-\x{2A6DF}\x{2A700}-\x{2EBEF}\x{2F800}-\x{2FA1F}"
    };
}

/// A BPE pre-tokenizer family: llama.cpp pre-tokenizer types that split text identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// llama.cpp's fallback (`default`, and a GGUF without `tokenizer.ggml.pre`).
    Default,
    /// GPT-2 (also MPT, OLMo, Jais, Trillion, Granite Docling, Phi-2, EXAONE 4, ...).
    Gpt2,
    /// GPT-2 with every digit alone (StarCoder, Refact, Command-R, SmolLM, CodeShell, EXAONE,
    /// Minerva, Mellum 2).
    Gpt2Digits,
    /// Llama 3 (also DBRX, Smaug, ChatGLM/GLM-4, Falcon 3, Pixtral, LFM2, ...).
    Llama3,
    /// Jais 2: Llama 3 with whitespace runs cut at powers of two.
    Jais2,
    /// Qwen2 and Qwen3 (also StableLM 2, Hunyuan, Solar Open, Grok 2, Megrez, DeepSeek-R1-Qwen, ...).
    Qwen2,
    /// Qwen3.5: Qwen2 with combining marks kept in words.
    Qwen35,
    /// DeepSeek LLM.
    DeepseekLlm,
    /// DeepSeek Coder.
    DeepseekCoder,
    /// DeepSeek V3 (also Hunyuan dense, HY v4, JoyAI).
    Deepseek3,
    /// Spark 2.5.
    Spark25,
    /// Youtu.
    Youtu,
    /// Falcon.
    Falcon,
    /// BLOOM (also Poro, GPT-3 Finnish).
    Bloom,
    /// Viking.
    Viking,
    /// Mistral's Tekken.
    Tekken,
    /// Chameleon.
    Chameleon,
    /// GPT-4o (also Llama 4, MiniMax M2, Kanana 2, Talkie).
    Gpt4o,
    /// Granite embedding (multilingual 97M).
    GraniteEmbMulti,
    /// Tiny Aya (also Cohere 2 MoE).
    TinyAya,
    /// Kimi K2.
    KimiK2,
    /// SuperBPE.
    SuperBpe,
    /// Bailing MoE (also LLaDA MoE).
    BailingMoe,
    /// Seed-Coder.
    SeedCoder,
    /// Ufakzeka: Qwen2 without the contractions.
    Ufakzeka,
    /// AFMoE.
    Afmoe,
    /// Laguna.
    Laguna,
    /// EXAONE MoE.
    ExaoneMoe,
    /// MiniCPM 5.
    MiniCpm5,
    /// SentencePiece-style BPE on raw UTF-8: spaces become `▁`, text splits only at newlines
    /// (Gemma 4, Granite embedding 311M, Sarvam MoE).
    Gemma4,
    /// Raw UTF-8 split at whitespace (Jina embeddings, Chinese).
    Whitespace,
}

impl Family {
    /// The split regexes, applied in order.
    pub(crate) fn regexes(self) -> &'static [&'static str] {
        match self {
            Self::Default => &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2,
                r"\p{N}+",
                r"[0-9][0-9][0-9]",
            ],
            Self::Gpt2 => &[GPT2],
            Self::Gpt2Digits => &[r"\p{N}", GPT2],
            Self::Llama3 => &[REGEX_LLAMA3],
            Self::Jais2 => &[concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+",
                r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)",
                r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
            )],
            Self::Qwen2 => &[QWEN2],
            Self::Qwen35 => &[concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*",
                r"|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            Self::DeepseekLlm => &[
                r"[\r\n]",
                "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
                // Less U+3000 (ideographic space), as for CJK_HANGUL.
                "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}&&\\S]+",
                r"\s+$",
                CJK_HANGUL,
                r"\p{N}+",
            ],
            Self::DeepseekCoder => &[
                r"[\r\n]",
                r"\s?\p{L}+",
                r"\s?\p{P}+",
                CJK_HANGUL,
                r"\p{N}",
            ],
            Self::Deepseek3 => &[r"\p{N}{1,3}", CJK_KANA, DEEPSEEK3_WORDS],
            Self::Spark25 => &[
                r"\p{N}{1,3}",
                CJK_KANA,
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"##,
                r"\p{N}",
            ],
            Self::Youtu => &[
                "[\u{ac00}-\u{d7a3}\u{3131}-\u{318e}]+|[\u{ff01}\u{2026}\u{201c}\u{201d}\u{2018}\u{2019}\u{2014}\u{ff1a}\u{ff1b}\u{ff0c}\u{3001}-\u{303f}\u{fe30}-\u{fe4f}]+|[\u{3105}-\u{312f}]+|[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
                // llama.cpp's regex engine reads `\p{Lu}`, `\p{Ll}`, ... as any letter, so the
                // upper-then-lower word pattern of the tokenizer.json is one run of letters/marks.
                concat!(
                    r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+",
                    contractions!(),
                    r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ),
            ],
            Self::Falcon => &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
            Self::Bloom => &[BLOOM_WORDS],
            Self::Viking => &[BLOOM_WORDS, r"\p{N}"],
            Self::Tekken => &[
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Self::Chameleon => &[
                r"<sentinel:[0-9]+>",
                r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
                r"([\t\n]|    |  )",
                r"\p{N}",
                r"[\p{P}!-/:-@\[-`{-~]",
                GPT2,
            ],
            Self::Gpt4o => &[concat!(
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
                contractions!(),
                r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
                contractions!(),
                r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            Self::GraniteEmbMulti => &[concat!(
                r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+",
                contractions!(),
                r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*",
                contractions!(),
                r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            Self::TinyAya => &[
                DIGITS_FROM_RIGHT,
                // As for Youtu, llama.cpp reads the case classes as any letter.
                concat!(
                    r"[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+",
                    contractions!(),
                    r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ),
            ],
            // llama.cpp replaces Kimi's regex with a hand-written splitter: Han runs, runs of
            // other letters (marks not included, no case split) with one leading non-letter and
            // a contraction, digits in threes, punctuation, newlines, whitespace.
            Self::KimiK2 => &[concat!(
                "[",
                han!(),
                r"]+|[^\r\n\p{L}\p{N}]?(?:(?![",
                han!(),
                r"])\p{L})+",
                contractions!(),
                r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            // The second regex matches only empty strings: it cuts digit runs into groups of
            // three from the right. llama.cpp's engine reads `\d` as ASCII digits only.
            Self::SuperBpe => &[r"\p{N}+", r"(?=([0-9]{3})+(?![0-9]))"],
            Self::BailingMoe => &[
                r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
            ],
            Self::SeedCoder => &[concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
            )],
            Self::Ufakzeka => &[
                r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Self::Afmoe => &[
                DIGITS_FROM_RIGHT,
                // llama.cpp's source starts the third range at U+8C48 (the canonical form of
                // U+F900, presumably meant), so the class also takes U+A000..U+F8FF.
                "[\u{4e00}-\u{9fff}\u{3400}-\u{4dbf}\u{8c48}-\u{faff}\u{3040}-\u{309f}\u{30a0}-\u{30ff}\u{ff65}-\u{ff9f}\u{2f00}-\u{2fdf}\u{e40}-\u{e7f}\u{e80}-\u{eff}\u{1780}-\u{17ff}\u{1000}-\u{109f}\u{aa60}-\u{aa7f}\u{a9e0}-\u{a9ff}\u{ac00}-\u{d7af}\u{1100}-\u{11ff}]+",
                DEEPSEEK3_WORDS,
            ],
            Self::Laguna => &[r"[^\n]+|[\n]+", QWEN2],
            Self::ExaoneMoe => &[concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?",
                r"|\s*[\r\n]|\s+(?!\S)|\s+"
            )],
            Self::MiniCpm5 => &[
                r"\p{N}{1,3}",
                concat!(
                    contractions!(),
                    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
                ),
            ],
            Self::Gemma4 => &[r"[^\n]+|[\n]+"],
            Self::Whitespace => &[r"\S+"],
        }
    }

    /// Whether words are mapped to GPT-2's byte alphabet before merging (otherwise merges run on
    /// raw UTF-8 and unknown bytes become `<0xNN>` tokens).
    pub(crate) fn byte_level(self) -> bool {
        !matches!(self, Self::Gemma4 | Self::Whitespace)
    }

    /// Whether spaces become `▁` before splitting (llama.cpp's `escape_whitespaces`).
    pub(crate) fn escapes_spaces(self) -> bool {
        self == Self::Gemma4
    }

    /// The family's regexes as isolating splits.
    fn splits(self) -> Result<Vec<PreTokenizerWrapper>, TokenizerError> {
        self.regexes()
            .iter()
            .map(|regex| {
                Split::new(
                    SplitPattern::Regex((*regex).into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map(PreTokenizerWrapper::from)
                .map_err(|e| TokenizerError::Tokenizer(format!("pre-tokenizer regex: {e}")))
            })
            .collect()
    }

    /// Splits, then (for byte-level families) the GPT-2 byte alphabet.
    pub(crate) fn pre_tokenizer(self) -> Result<PreTokenizerWrapper, TokenizerError> {
        let mut steps = self.splits()?;
        if self.byte_level() {
            steps.push(ByteLevel::new(false, true, false).into());
        }
        Ok(PreSequence::new(steps).into())
    }

    /// Text normalization before splitting, if any.
    pub(crate) fn normalizer(self) -> Result<Option<NormalizerWrapper>, TokenizerError> {
        if !self.escapes_spaces() {
            return Ok(None);
        }
        Ok(Some(replace(" ", "▁")?.into()))
    }

    /// Ids back to text.
    pub(crate) fn decoder(self) -> Result<DecoderWrapper, TokenizerError> {
        if self.byte_level() {
            return Ok(ByteLevel::default().into());
        }
        let mut steps: Vec<DecoderWrapper> = Vec::new();
        if self.escapes_spaces() {
            steps.push(replace("▁", " ")?.into());
        }
        steps.push(ByteFallback::new().into());
        steps.push(Fuse::new().into());
        Ok(DecoderSequence::new(steps).into())
    }
}

/// A literal text replacement (normalizer or decoder step).
pub(crate) fn replace(pattern: &str, content: &str) -> Result<Replace, TokenizerError> {
    Replace::new(pattern, content).map_err(|e| TokenizerError::Tokenizer(e.to_string()))
}

/// Whether a prompt starts with BOS, when the metadata (`tokenizer.ggml.add_bos_token`) may say
/// otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddBos {
    /// Not unless the metadata asks (llama.cpp's default for BPE vocabularies).
    IfAsked,
    /// Yes unless the metadata says no.
    UnlessRefused,
    /// Yes, whatever the metadata says (llama.cpp overrides Gemma 4's metadata).
    Always,
}

impl AddBos {
    /// The decision, given `tokenizer.ggml.add_bos_token` if present.
    pub(crate) fn resolve(self, metadata: Option<bool>) -> bool {
        match self {
            Self::Always => true,
            Self::IfAsked => metadata.unwrap_or(false),
            Self::UnlessRefused => metadata.unwrap_or(true),
        }
    }
}

/// What llama.cpp does for one `tokenizer.ggml.pre` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    /// How text splits into words.
    pub(crate) family: Family,
    /// A word that is itself a token becomes that token without merges (llama.cpp's
    /// `ignore_merges`).
    pub(crate) ignore_merges: bool,
    /// Whether prompts start with BOS.
    pub(crate) add_bos: AddBos,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp loads for `name`, or `None` for a name it does not know (or
    /// `mmbert`, whose word splitting after the newline split is llama.cpp code that no
    /// Hugging Face pre-tokenizer reproduces; it is an encoder that hearth does not run).
    ///
    /// llama.cpp's `clean_spaces` (drop spaces before punctuation when detokenizing) is not a
    /// property here: hearth's decoding gives back the exact text, as llama.cpp's
    /// `token_to_piece` does for generated tokens. `add_sep` (an encoder's trailing separator)
    /// is ignored likewise.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        use AddBos::{Always, IfAsked, UnlessRefused};
        use Family::*;
        let (family, ignore_merges, add_bos) = match name {
            "default" => (Default, false, IfAsked),
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
            | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "exaone4" | "trillion"
            | "granite-docling" => (Gpt2, false, IfAsked),
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => (Gpt2Digits, false, IfAsked),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => (Llama3, true, UnlessRefused),
            "dbrx" | "smaug-bpe" | "chatglm-bpe" => (Llama3, false, IfAsked),
            "glm4" | "glm5" => (Llama3, true, IfAsked),
            "jais-2" => (Jais2, false, IfAsked),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" | "solar-open" | "grok-2" => (Qwen2, false, IfAsked),
            "qwen35" => (Qwen35, false, IfAsked),
            "deepseek-llm" => (DeepseekLlm, false, IfAsked),
            "deepseek-coder" => (DeepseekCoder, false, IfAsked),
            "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => (Deepseek3, false, IfAsked),
            "spark2_5" => (Spark25, false, IfAsked),
            "youtu" => (Youtu, true, IfAsked),
            "falcon" => (Falcon, false, IfAsked),
            "bloom" | "poro-chat" | "gpt3-finnish" => (Bloom, false, IfAsked),
            "viking" => (Viking, false, IfAsked),
            "tekken" => (Tekken, true, UnlessRefused),
            "chameleon" => (Chameleon, false, UnlessRefused),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => (Gpt4o, false, IfAsked),
            "granite-embed-multi-97m" => (GraniteEmbMulti, true, IfAsked),
            "tiny_aya" | "cohere2moe" => (TinyAya, false, IfAsked),
            "kimi-k2" => (KimiK2, false, IfAsked),
            "superbpe" => (SuperBpe, false, IfAsked),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => (BailingMoe, false, IfAsked),
            "seed-coder" => (SeedCoder, false, IfAsked),
            "ufakzeka" => (Ufakzeka, false, IfAsked),
            "afmoe" => (Afmoe, false, IfAsked),
            "laguna" => (Laguna, false, IfAsked),
            "exaone-moe" => (ExaoneMoe, false, IfAsked),
            "minicpm5" => (MiniCpm5, true, IfAsked),
            // llama.cpp takes a run of newlines that is a token whole. Ignoring merges does that,
            // and takes whole any other line that is a token too, which gives llama.cpp's result
            // whenever merges rebuild that token (as in all of llama.cpp's Gemma 4 vectors).
            "gemma4" | "granite-embed-multi-311m" => (Gemma4, true, Always),
            "sarvam-moe" => (Gemma4, false, IfAsked),
            "whitespace" => (Whitespace, false, IfAsked),
            _ => return None,
        };
        Some(Self {
            family,
            ignore_merges,
            add_bos,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};

    use super::*;

    /// `tests/data/llama-pre-splits.json`: see `tests/data/README.md`.
    #[derive(Deserialize)]
    struct Reference {
        names: HashMap<String, NameFlags>,
        types: HashMap<String, TypeRegexes>,
        inputs: Vec<String>,
        /// Per group of types with identical regexes, the pieces of each input.
        splits: HashMap<String, Vec<Vec<String>>>,
    }

    #[derive(Deserialize)]
    struct NameFlags {
        r#type: String,
        ignore_merges: bool,
        add_bos: bool,
        escape_whitespaces: bool,
    }

    #[derive(Deserialize)]
    struct TypeRegexes {
        regexes: Vec<String>,
        byte_encode: bool,
        /// The key of this type's pieces in `splits` (types with identical regexes share one).
        splits: String,
    }

    fn reference() -> Reference {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/llama-pre-splits.json"
        );
        let text = std::fs::read_to_string(path).expect("read llama-pre-splits.json");
        serde_json::from_str(&text).expect("parse llama-pre-splits.json")
    }

    /// The pieces llama.cpp's `unicode_regex_split` would give, before any byte mapping.
    fn pieces(family: Family, text: &str) -> Vec<String> {
        let mut pre = PreTokenizedString::from(text);
        PreSequence::new(family.splits().unwrap())
            .pre_tokenize(&mut pre)
            .unwrap();
        pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    }

    /// Names whose splitting hearth does not implement (see [`PreTokenizer::from_name`]).
    const UNSUPPORTED: [&str; 1] = ["mmbert"];

    /// Families whose regexes state llama.cpp's behaviour rather than its regex text.
    const ADAPTED: [&str; 7] = [
        "DEEPSEEK_LLM",
        "DEEPSEEK_CODER",
        "YOUTU",
        "TINY_AYA",
        "KIMI_K2",
        "SUPERBPE",
        "AFMOE",
    ];

    #[test]
    fn every_llama_cpp_name_is_known_with_its_flags() {
        let reference = reference();
        assert!(reference.names.len() >= 90, "{}", reference.names.len());
        for (name, flags) in &reference.names {
            let pre = PreTokenizer::from_name(name);
            if UNSUPPORTED.contains(&name.as_str()) {
                assert_eq!(pre, None, "{name}");
                continue;
            }
            let pre = pre.unwrap_or_else(|| panic!("`{name}` is not known"));
            let ty = &reference.types[&flags.r#type];
            // Gemma 4's whole-token newline runs are done by ignoring merges (see from_name).
            let ignore_merges = flags.ignore_merges || flags.r#type == "GEMMA4";
            assert_eq!(pre.ignore_merges, ignore_merges, "{name}: ignore_merges");
            let expected_bos = match (flags.r#type.as_str(), flags.add_bos) {
                ("GEMMA4", _) => AddBos::Always,
                (_, true) => AddBos::UnlessRefused,
                (_, false) => AddBos::IfAsked,
            };
            assert_eq!(pre.add_bos, expected_bos, "{name}: add_bos");
            assert_eq!(pre.family.byte_level(), ty.byte_encode, "{name}");
            assert_eq!(
                pre.family.escapes_spaces(),
                flags.escape_whitespaces,
                "{name}"
            );
            if !ADAPTED.contains(&flags.r#type.as_str()) {
                // llama.cpp's C strings hold some newlines as raw characters.
                let expected: Vec<String> = ty
                    .regexes
                    .iter()
                    .map(|r| r.replace('\r', r"\r").replace('\n', r"\n"))
                    .collect();
                assert_eq!(pre.family.regexes(), expected, "{name}: regexes");
            }
        }
    }

    #[test]
    fn every_family_splits_like_llama_cpp() {
        let reference = reference();
        let mut failures = Vec::new();
        let mut checked = 0;
        for (name, flags) in &reference.names {
            let Some(pre) = PreTokenizer::from_name(name) else {
                continue;
            };
            let expected = &reference.splits[&reference.types[&flags.r#type].splits];
            for (input, expected) in reference.inputs.iter().zip(expected) {
                checked += 1;
                let actual = pieces(pre.family, input);
                if &actual != expected {
                    failures.push(format!(
                        "{name} ({}) on {input:?}:\n  llama.cpp {expected:?}\n  hearth    {actual:?}",
                        flags.r#type
                    ));
                }
            }
        }
        assert!(checked > 5000, "{checked}");
        assert!(
            failures.is_empty(),
            "{} of {checked} splits differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        for name in ["", "gpt2", "llama", "made-up", "SMOLLM", "mmbert"] {
            assert_eq!(PreTokenizer::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn add_bos_defaults() {
        assert!(!AddBos::IfAsked.resolve(None));
        assert!(AddBos::IfAsked.resolve(Some(true)));
        assert!(AddBos::UnlessRefused.resolve(None));
        assert!(!AddBos::UnlessRefused.resolve(Some(false)));
        assert!(AddBos::Always.resolve(Some(false)));
    }
}
