//! `hearth model ...`: synthesize and inspect models.

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hearth_engine::synth::{self, SynthModel, SynthOptions};
use hearth_engine::{DType, ModelSource};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a deterministic random-initialised model of a named shape.
    Synth(SynthArgs),
    /// Print a model's shape and format.
    Info {
        /// HF folder or .gguf file.
        path: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SynthFormat {
    Hf,
    Gguf,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum HfDtype {
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
pub struct SynthArgs {
    /// Shape: tiny, tiny-qwen2, llama-3.2-1b, qwen2.5-0.5b, llama-3-8b, mistral-7b.
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

pub fn run(cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Synth(args) => synth(&args),
        ModelCommand::Info { path } => info(&path),
    }
}

pub fn synth(args: &SynthArgs) -> Result<()> {
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
    println!("model id:      {}", identity.model_id.short());
    Ok(())
}
