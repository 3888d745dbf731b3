//! `hearth model ...`: synthesize, convert, inspect, pull and list models.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hearth_engine::synth::{self, SynthModel, SynthOptions};
use hearth_engine::{ConvertOptions, DType, ModelSource};
use hearth_hub::{ModelName, Progress, Sha256Digest};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum ModelCommand {
    /// Write a deterministic random-initialised model of a named shape.
    Synth(SynthArgs),
    /// Re-encode a GGUF model's weights in another type (requantize, or widen to F16/F32).
    ///
    /// Every matrix (the token embedding included) is dequantized to f32 and re-encoded in
    /// --quant; vectors (norms, biases) are stored F32. All metadata (tokenizer, chat template,
    /// architecture keys) is copied unchanged except `general.file_type`, which states the new
    /// type. Tensor names, shapes and order are kept. A matrix whose rows do not divide into
    /// --quant's blocks is stored as Q8_0, or else F16, and the command lists it. The output is
    /// written under a temporary name beside --out and renamed when complete.
    Convert(ConvertArgs),
    /// Print a model's shape and format.
    Info {
        /// HF folder or .gguf file.
        path: PathBuf,
    },
    /// Download a known model, or a file by URL, into $HEARTH_HOME/models, checking its sha256.
    Pull(PullArgs),
    /// List the known models and the models in $HEARTH_HOME/models.
    List,
}

#[derive(Args)]
pub(crate) struct PullArgs {
    /// A known model (see `hearth model list`) or an http(s) URL, such as a Hugging Face
    /// `https://huggingface.co/ORG/REPO/resolve/main/FILE` link. An interrupted download resumes.
    pub target: String,
    /// The file's expected sha256 (URLs only). Without it, the sha256 the server states is used
    /// (Hugging Face does for large files); else the file is stored unverified.
    #[arg(long)]
    pub sha256: Option<Sha256Digest>,
    /// The folder under $HEARTH_HOME/models (URLs only; default: a GGUF file's stem, else the
    /// Hugging Face repository's name, else the file's stem).
    #[arg(long)]
    pub name: Option<ModelName>,
}

#[derive(Args)]
pub(crate) struct ConvertArgs {
    /// The GGUF file to convert.
    pub input: PathBuf,
    /// Weight type of the output: q8_0, q4_0, q4_k, f16, bf16, f32 (also q4_1, q5_0, q5_1,
    /// q2_k, q3_k, q5_k, q6_k).
    #[arg(long)]
    pub quant: String,
    /// The GGUF file to write (not the input).
    #[arg(long, short)]
    pub out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SynthFormat {
    Hf,
    Gguf,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum HfDtype {
    F32,
    F16,
    Bf16,
}

impl HfDtype {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args)]
pub(crate) struct SynthArgs {
    /// Shape: tiny, tiny-qwen2, tiny-qwen3, tiny-phi3, llama-3.2-1b, qwen2.5-0.5b, llama-3-8b,
    /// mistral-7b.
    #[arg(long, default_value = crate::common::DEFAULT_SHAPE)]
    pub shape: String,
    /// Output: a folder for `hf`, a file path for `gguf`; for `both`, a folder that gets `hf/` and `model-<quant>.gguf`.
    #[arg(long, short)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "hf")]
    pub format: SynthFormat,
    /// Dtype of HF safetensors.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: HfDtype,
    /// GGUF weight type: f32, f16, q8_0, q4_0, q4_k, q6_k, ...
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Split HF weights into shards of at most this many MiB.
    #[arg(long)]
    pub shard_mib: Option<u64>,
}

pub(crate) fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Synth(args) => synth(&args),
        ModelCommand::Convert(args) => convert(&args),
        ModelCommand::Info { path } => info(&path),
        ModelCommand::Pull(args) => pull(&args),
        ModelCommand::List => list(),
    }
}

pub(crate) fn synth(args: &SynthArgs) -> Result<()> {
    let cfg = synth::shape(&args.shape)?;
    let model = SynthModel::new(cfg, args.seed)?;
    let opts = SynthOptions {
        seed: args.seed,
        shard_bytes: args.shard_mib.map(|m| m << 20),
    };
    let quant = synth::parse_quant(&args.quant)?;
    match args.format {
        SynthFormat::Hf => model.write_hf(&args.out, args.dtype.dtype(), &opts)?,
        SynthFormat::Gguf => model.write_gguf(&args.out, quant)?,
        SynthFormat::Both => {
            model.write_hf(&args.out.join("hf"), args.dtype.dtype(), &opts)?;
            let name = format!("model-{}.gguf", args.quant.to_ascii_lowercase());
            model.write_gguf(&args.out.join(name), quant)?;
        }
    }
    eprintln!(
        "wrote {} ({} shape, seed {})",
        args.out.display(),
        args.shape,
        args.seed
    );
    Ok(())
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let quant = synth::parse_quant(&args.quant)?;
    let converted = hearth_engine::convert_gguf(&args.input, &args.out, &ConvertOptions { quant })
        .with_context(|| format!("converting {}", args.input.display()))?;
    // One line per (row length, stored type): a real model has a few of these, over many tensors.
    let mut groups: Vec<((usize, String), Vec<&str>)> = Vec::new();
    for f in &converted.fallbacks {
        let key = (f.row_len, format!("{:?}", f.dtype));
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, names)) => names.push(&f.name),
            None => groups.push((key, vec![&f.name])),
        }
    }
    for ((row_len, dtype), names) in groups {
        const SHOWN: usize = 4;
        let more = match names.len().saturating_sub(SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        eprintln!(
            "{} tensors have rows of {row_len} values, not a whole number of {} blocks: stored as {dtype} ({}{more})",
            names.len(),
            args.quant.to_ascii_lowercase(),
            names[..names.len().min(SHOWN)].join(", "),
        );
    }
    eprintln!(
        "wrote {} ({} tensors, {:.1} MB, {})",
        args.out.display(),
        converted.tensors,
        converted.bytes as f64 / 1e6,
        args.quant.to_ascii_lowercase()
    );
    Ok(())
}

fn info(path: &Path) -> Result<()> {
    let src = ModelSource::open(path).with_context(|| format!("opening {}", path.display()))?;
    let c = src.config();
    println!("format:        {:?}", src.format());
    println!("architecture:  {:?}", c.architecture);
    println!("blocks:        {}", c.num_layers);
    println!(
        "hidden:        {} (heads {} / kv {} x {})",
        c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("mlp:           {}", c.intermediate_size);
    println!("vocab:         {}", c.vocab_size);
    println!(
        "rope:          theta {} {:?} {:?}",
        c.rope_theta, c.rope_layout, c.rope_scaling
    );
    println!("tied head:     {}", c.tie_word_embeddings);
    let full = hearth_core::BlockRange::full(c.num_blocks())?;
    println!("block bytes:   {}", src.slice_file_bytes(full));
    println!("client bytes:  {}", src.head_file_bytes());
    // Hashes every weight once per file version; later calls read the cache.
    let ids = crate::common::hearth_home().join("model-ids");
    let identity = hearth_engine::identity_cached(&src, &ids)
        .with_context(|| format!("hashing {}", path.display()))?;
    println!("model id:      {}", identity.model_id.to_hex());
    Ok(())
}

fn pull(args: &PullArgs) -> Result<()> {
    let hub = crate::common::hub()?;
    let pulled = hub
        .pull(
            &args.target,
            args.name.clone(),
            args.sha256,
            &mut Bars::default(),
        )
        .with_context(|| format!("pulling {}", args.target))?;
    match (&pulled.verified, pulled.fetched) {
        (_, false) => eprintln!("{} is already pulled", pulled.name),
        (Some(checksum), true) => {
            eprintln!("sha256 {} matches {}", checksum.digest, checksum.origin)
        }
        (None, true) => eprintln!("no sha256 was given or stated by the server: stored unverified"),
    }
    if let Some(sha256) = pulled.sha256 {
        eprintln!("sha256 of the file: {sha256}");
    }
    eprintln!("{} bytes as model {:?}", pulled.bytes, pulled.name.as_str());
    // The path alone on stdout, for scripts.
    println!("{}", pulled.path.display());
    Ok(())
}

fn list() -> Result<()> {
    let home = crate::common::hearth_home();
    let store = hearth_hub::Store::new(&home);
    println!("known models (hearth model pull NAME):");
    for model in hearth_hub::CATALOGUE {
        let state = if store.is_pulled(model) {
            "pulled"
        } else {
            "-"
        };
        println!("  {:<24} {:<7} {}", model.name, state, model.description);
    }
    println!("in {}:", store.models_dir().display());
    let stored = store.list()?;
    if stored.is_empty() {
        println!("  (none)");
    }
    for model in stored {
        println!(
            "  {:<24} {:>10} {}",
            model.name.as_str(),
            format!("{:.1} MB", model.bytes as f64 / 1e6),
            model.path.display()
        );
    }
    Ok(())
}

/// Download and extraction progress as bars on stderr (hidden when it is not a terminal).
#[derive(Default)]
pub(crate) struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn begin(&mut self, label: &str, total: Option<u64>, done: u64) {
        let (bar, template) = match total {
            Some(total) => (
                ProgressBar::new(total),
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ),
            None => (
                ProgressBar::no_length(),
                "{msg} {spinner} {bytes} {bytes_per_sec}",
            ),
        };
        bar.set_style(
            ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(label.to_owned());
        bar.set_position(done);
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
