//! `hearth demo`: start a local swarm of node processes on loopback, generate through it, and
//! optionally keep serving the OpenAI-compatible API over it. Depends only on `common`,
//! `local_swarm`, `swarm_generate`, `serve` and `model` (its progress bars).
//!
//! The model is `--model` (a path, or a name pulled on first use), `--synth` (a synthesized
//! shape), else [`DEFAULT_DEMO_MODEL`], pulled on first use; when that pull fails the demo says
//! why in one line and runs the synthesized [`DEFAULT_SHAPE`] model, so it works offline.
//! Decoding is greedy, so the demo prints the same text every time.

use crate::common::{hearth_home, hub, model_path, runtime, DEFAULT_SHAPE};
use crate::local_swarm::{loopback_client, spawn_nodes};
use crate::model::Bars;
use crate::serve::{default_model_name, serve_blocking, swarm_backend, API_KEYS_ENV};
use crate::swarm_generate::{generate_through_swarm, SwarmOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use hearth_core::{ApiKeys, BlockRange};
use hearth_engine::ModelSource;
use hearth_gateway::GatewayConfig;
use hearth_hub::{resolve_model, Resolved};
use hearth_sampling::SamplingParams;
use hearth_swarm::SwarmClient;
use hearth_tokenizer::ChatMessage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Node processes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// The model: a .gguf file or HF folder, or a model's name (`hearth model list`; a known
    /// model is pulled on first use). Default: smollm2-135m-instruct, or the synthesized `tiny`
    /// model when it cannot be pulled.
    #[arg(long, conflicts_with = "synth")]
    pub model: Option<String>,
    /// Run a synthesized model of this shape instead (random weights, no download), e.g. `tiny`.
    #[arg(long)]
    pub synth: Option<String>,
    /// Text the model continues.
    #[arg(long, short, default_value = DEFAULT_PROMPT, conflicts_with = "chat")]
    pub prompt: String,
    /// Ask this question through the model's chat template instead (without a value: a default
    /// question).
    #[arg(long, num_args = 0..=1, default_missing_value = DEFAULT_QUESTION)]
    pub chat: Option<String>,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    /// Seconds to wait for the swarm to cover every block.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// After the demo generation, keep the swarm running and serve the OpenAI-compatible API on
    /// this address (e.g. 127.0.0.1:8080) until Ctrl-C.
    #[arg(long)]
    pub gateway: Option<std::net::SocketAddr>,
    /// With --gateway: write the API's base URL to this file once it listens.
    #[arg(long, requires = "gateway")]
    pub gateway_ready_file: Option<PathBuf>,
}

/// The model the demo runs when given neither `--model` nor `--synth`.
pub(crate) const DEFAULT_DEMO_MODEL: &str = "smollm2-135m-instruct";
/// The demo's prompt: one a small real model completes sensibly (SmolLM2: " Paris.").
const DEFAULT_PROMPT: &str = "The capital of France is";
/// The question of a bare `--chat` (SmolLM2 answers "The capital of France is Paris.").
const DEFAULT_QUESTION: &str = "What is the capital of France? Answer in one sentence.";

pub(crate) fn run(args: DemoArgs, threads: Option<usize>) -> Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let (model, model_name) = demo_model(&args)?;
    let src =
        ModelSource::open(&model).with_context(|| format!("opening model {}", model.display()))?;
    let n_blocks = src.config().num_layers as u32;
    let spans = BlockRange::split_even(n_blocks, args.nodes.min(n_blocks))?;
    let work = tempfile::tempdir()?;
    let node_threads = threads.unwrap_or(1);
    let (children, bootstrap) = spawn_nodes(
        &model,
        &spans,
        node_threads,
        work.path(),
        Duration::from_secs(args.timeout),
        true,
    )?;
    let tokenizer = src.tokenizer()?;
    let head = Arc::new(src.load_head(&Default::default(), None)?);
    let (prompt, shown) = match &args.chat {
        Some(question) => {
            let template = tokenizer
                .chat_template()
                .context("--chat: this model has no chat template")?;
            let text = template.render(&[ChatMessage::new("user", question.clone())], true)?;
            // A chat template writes its own BOS token.
            (tokenizer.encode(&text, false)?, format!("{question}\n"))
        }
        None => (tokenizer.encode(&args.prompt, true)?, args.prompt.clone()),
    };
    // Greedy, so the demo's text is the same every time.
    let params = SamplingParams {
        max_tokens: args.max_tokens,
        ..SamplingParams::default()
    };
    let client = loopback_client(&bootstrap)?;
    let started = Instant::now();
    generate_through_swarm(
        &src,
        head,
        &tokenizer,
        &prompt,
        &params,
        client.clone(),
        &SwarmOptions {
            print_receipts: Some(spans.len()),
            ..SwarmOptions::default()
        },
        &shown,
    )?;
    eprintln!("demo finished in {:.1} s", started.elapsed().as_secs_f64(),);
    if let Some(addr) = args.gateway {
        let cfg = GatewayConfig {
            model_name,
            api_keys: ApiKeys::keys_from_flags_and_env(&[], API_KEYS_ENV),
            ..GatewayConfig::default()
        };
        let rt = runtime()?;
        let client = rt.block_on(SwarmClient::start(client))?;
        let backend = swarm_backend(&rt, client, &src, true, 0)?;
        serve_blocking(&rt, backend, cfg, addr, args.gateway_ready_file.as_deref())?;
    }
    eprintln!("stopping {} nodes", children.0.len());
    Ok(())
}

/// The model to run and the name the gateway serves it under; see the module docs.
fn demo_model(args: &DemoArgs) -> Result<(PathBuf, String)> {
    if let Some(shape) = &args.synth {
        return synthesized(shape);
    }
    if let Some(model) = &args.model {
        return named_or_path(model);
    }
    named_or_path(DEFAULT_DEMO_MODEL).or_else(|e| {
        eprintln!(
            "could not get {DEFAULT_DEMO_MODEL} ({}); running the synthesized {DEFAULT_SHAPE} model instead",
            one_line(&e)
        );
        synthesized(DEFAULT_SHAPE)
    })
}

pub(crate) fn synthesized(shape: &str) -> Result<(PathBuf, String)> {
    let path = model_path(None, Some(shape))?;
    let name = default_model_name(&path);
    Ok((path, name))
}

/// A path, or a stored or known model's name; a known model that is not stored yet is pulled
/// (with progress bars). A name is served under that name, a path under its file name.
pub(crate) fn named_or_path(model: &str) -> Result<(PathBuf, String)> {
    let path = match resolve_model(model, &hearth_home())? {
        Resolved::Path(path) => path,
        Resolved::NotPulled(known) => {
            eprintln!("pulling {} ({})", known.name, known.description);
            hub()?.pull_known(known, &mut Bars::default())?.path
        }
    };
    let name = if Path::new(model).exists() {
        default_model_name(&path)
    } else {
        model.to_owned()
    };
    Ok((path, name))
}

/// `error` and its causes on one line, leaving out causes its message already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if !line.contains(&cause) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}
