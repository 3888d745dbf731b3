//! `hearth generate`: run a prompt locally, optionally through an in-process chain of slices,
//! or through the swarm (`--swarm`). Depends only on `common`, `net_args` and `swarm_generate`.

use crate::common::ModelArgs;
use crate::net_args::NetArgs;
use crate::swarm_generate::{generate_through_swarm, SwarmOptions};
use anyhow::{Context, Result};
use clap::Args;
use hearth_core::BlockRange;
use hearth_engine::{
    generate, parse_device, DType, Generation, HiddenStage, LoadOptions, LocalStage, ModelSource,
    Pipeline,
};
use hearth_sampling::SamplingParams;
use hearth_tokenizer::ChatMessage;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::sync::Arc;

/// The library's sampling defaults, which the flags show.
fn defaults() -> SamplingParams {
    SamplingParams::default()
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, short, default_value = "Once upon a time")]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Run the blocks as this many in-process slices, in sequence.
    #[arg(long, default_value_t = 1)]
    pub split: u32,
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = defaults().temperature)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long, default_value_t = defaults().repetition_penalty)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = defaults().repeat_last_n)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = defaults().seed)]
    pub seed: u64,
    /// Stop sequence (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Activation dtype: f32, f16 or bf16 (default: f32 on CPU, the checkpoint's on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Generate through the swarm: this process keeps only the embeddings and the head; nodes
    /// found through `--bootstrap` or mDNS run the blocks.
    #[arg(long)]
    pub swarm: bool,
    #[command(flatten)]
    pub net: NetArgs,
    /// Print every verified hop receipt.
    #[arg(long)]
    pub receipts: bool,
    /// Print the generated token ids (to stderr, after the text): what determinism checks compare.
    #[arg(long)]
    pub token_ids: bool,
    /// With --swarm: write the verification trail (receipts, linkage, spot checks) here as JSON,
    /// for `hearth verify FILE`.
    #[arg(long)]
    pub trail: Option<std::path::PathBuf>,
    /// With --swarm: run the first and the last N blocks in this process, so that no node sees
    /// the hidden states right after the embeddings or right before the head.
    #[arg(long, default_value_t = 0, requires = "swarm")]
    pub private_edges: u32,
    /// With --swarm: where fraud proofs against caught nodes go (default:
    /// $HEARTH_HOME/fraud-proofs), for `hearth verify fraud-proof FILE --model M`.
    #[arg(long)]
    pub fraud_dir: Option<std::path::PathBuf>,
}

fn parse_dtype(s: &str) -> Result<DType> {
    Ok(match s {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => anyhow::bail!("unknown dtype {other:?}: use f32, f16 or bf16"),
    })
}

pub(crate) fn run(args: GenerateArgs) -> Result<()> {
    let path = args.model.path()?;
    let src =
        ModelSource::open(&path).with_context(|| format!("opening model {}", path.display()))?;
    let tokenizer = src.tokenizer()?;
    let opts = LoadOptions {
        device: parse_device(&args.device)?,
        dtype: args.dtype.as_deref().map(parse_dtype).transpose()?,
        candle_kernels: false,
    };
    let ranges = BlockRange::split_even(src.config().num_blocks(), args.split)?;

    let prompt_text = if args.chat {
        let template = tokenizer
            .chat_template()
            .context("--chat: this model has no chat template")?;
        template.render(&[ChatMessage::new("user", args.prompt.clone())], true)?
    } else {
        args.prompt.clone()
    };
    // A chat template writes its own BOS token.
    let prompt = tokenizer.encode(&prompt_text, !args.chat)?;
    let max_len = (prompt.len() + args.max_tokens).min(src.config().max_position_embeddings);

    if args.swarm {
        let head = Arc::new(src.load_head(&opts, None)?);
        let out = generate_through_swarm(
            &src,
            head,
            &tokenizer,
            &prompt,
            &params(&args),
            args.net.client_config(),
            &SwarmOptions {
                print_receipts: args.receipts.then_some(usize::MAX),
                trail: args.trail.clone(),
                fraud_dir: args.fraud_dir.clone(),
                private_edges: args.private_edges,
            },
            &args.prompt,
        )?;
        print_token_ids(&args, &out);
        return Ok(());
    }
    let total: u64 =
        src.head_file_bytes() + ranges.iter().map(|r| src.slice_file_bytes(*r)).sum::<u64>();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("loading {bar:30} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut loaded = 0u64;
    bar.set_message("client head");
    let head = Arc::new(src.load_head(&opts, Some(&mut |b| bar.set_position(loaded + b)))?);
    loaded += src.head_file_bytes();
    let mut stages: Vec<Box<dyn HiddenStage>> = Vec::new();
    for range in &ranges {
        bar.set_message(format!("blocks {range}"));
        let base = loaded;
        let progress = &mut |b| bar.set_position(base + b);
        stages.push(Box::new(LocalStage::load(
            &src,
            *range,
            &opts,
            max_len,
            Some(progress),
        )?));
        loaded += src.slice_file_bytes(*range);
    }
    bar.finish_and_clear();
    let route: Vec<String> = stages.iter().map(|s| s.describe()).collect();
    eprintln!("route: client -> {} -> client", route.join(" -> "));

    let params = params(&args);
    let mut pipeline = Pipeline {
        head,
        stages,
        head_batch: None,
    };
    let mut stdout = std::io::stdout();
    print!("{}", args.prompt);
    let out = generate(&mut pipeline, &tokenizer, &prompt, &params, &mut |text| {
        print!("{text}");
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!(
        "{} prompt tokens, {} generated ({:?}); prefill {:.1} tok/s, decode {:.1} tok/s",
        out.prompt_tokens,
        out.tokens.len(),
        out.finish,
        out.prefill_tokens_per_sec(),
        out.decode_tokens_per_sec()
    );
    print_token_ids(&args, &out);
    Ok(())
}

fn print_token_ids(args: &GenerateArgs, out: &Generation) {
    if args.token_ids {
        let ids: Vec<String> = out.tokens.iter().map(u32::to_string).collect();
        eprintln!("token ids: {}", ids.join(" "));
    }
}

fn params(args: &GenerateArgs) -> SamplingParams {
    SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        seed: args.seed,
        stop: args.stop.clone(),
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    }
}
