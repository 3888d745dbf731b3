//! hearth's model engine: load any contiguous slice of a Llama-family model (Llama, Mistral,
//! Qwen2, Qwen3, Phi-3; HF safetensors or GGUF), run it on hidden states with per-session KV caches, and keep the client's part
//! (embeddings, final norm, head) separate.
//!
//! Invariant: knows nothing of networks. Hidden states in, hidden states out.

pub mod bench;
pub mod config;
pub mod convert;
pub mod device;
pub mod error;
pub mod generate;
pub mod head_batch;
pub mod identity;
pub mod kernels;
mod layers;
pub mod model;
pub mod session;
pub mod synth;
pub mod weights;
mod writer;

pub use config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
pub use convert::{convert_gguf, ConvertOptions, Converted};
pub use device::{build_class, parse_device};
pub use error::{EngineError, Result};
pub use identity::{identity_cached, ModelIdentity};
pub use layers::max_abs_diff;
pub use model::{ClientHead, LoadOptions, ModelFormat, ModelSlice, ModelSource, SliceCache};
pub use weights::{BlockTensor, PackedWeight, TensorRole, Weight};

pub use candle_core::{DType, Device, Tensor};
pub use generate::{
    generate, generate_cancellable, FinishReason, Generation, HiddenStage, LocalStage, Pipeline,
    Rewind,
};
pub use head_batch::{HeadBatchStats, HeadBatcher, Registration};
pub use session::{CacheQuota, ServerStats, SessionId, SessionLimits, SliceServer};
pub use synth::{SynthModel, SynthOptions};
