//! Content-addressed model ids: two nodes that claim the same model provably hold the same
//! weights, and each transformer block has its own hash, so a node serving blocks `A..B` can be
//! matched against a model block by block.
//!
//! # Definition (a protocol fact: changing it changes every id)
//!
//! All hashes are [`ContentHasher`]s (BLAKE3, a domain string, then length-prefixed fields);
//! integers are little-endian `u64`, floats the little-endian bits of their `f64`, flags one byte.
//!
//! * **Tensor record**: field(role name), then field(`[0]`) if the files lack the tensor, or
//!   field(`[1]`) · field(storage type name) · field(shape: one `u64` per dimension, row-major)
//!   · field(the tensor's bytes exactly as stored in the file). Role names are hearth's, not the
//!   file format's (`q`, `down`, `embed`, ...), listed in [`BLOCK_TENSORS`] and [`HEAD_TENSORS`].
//!   Storage type names are safetensors' (`F32`, `F16`, `BF16`) or llama.cpp's ggml type names
//!   (`F16`, `Q8_0`, `Q4_K`, ...).
//! * **Block hash** (domain `block`): the tensor records of one block in [`BLOCK_TENSORS`] order
//!   (attn_norm, q, k, v, o, q_bias, k_bias, v_bias, ffn_norm, gate, up, down, q_norm, k_norm,
//!   qkv, gate_up), taking only the tensors its architecture may have
//!   ([`Architecture::block_tensors`]: Llama, Mistral and Qwen2 have the first twelve, Qwen3
//!   adds q_norm and k_norm, Phi-3 has qkv and gate_up instead of q, k, v, the biases, gate and
//!   up); absent biases are recorded as absent. The block's index is *not* hashed: the model id
//!   fixes positions.
//! * **Head hash** (domain `head`): the records of `embed`, `final_norm` and `output`; an absent
//!   `output` means the head is tied to the embedding.
//! * **Config hash** (domain `config`): the scheme version, then (name, value) pairs of every
//!   [`ModelConfig`] field that changes the computation, in a fixed order (see
//!   `config_hash`): architecture, hidden/intermediate sizes, layers, heads, KV heads, head
//!   dim, vocabulary, RMSNorm epsilon, RoPE theta, scaling and layout, tied head, attention
//!   bias, sliding window; then the record of the `rope_freqs` tensor (present in GGUF files
//!   with Llama 3.1 scaling: it is RoPE scaling stored as a tensor). Not hashed: the context
//!   limit (`max_position_embeddings`) and the BOS/EOS ids, which change no computation.
//! * **Model id** (domain `model`): field(config hash) · field(number of blocks) · field(each
//!   block hash, in order) · field(head hash).
//!
//! The id binds the exact stored bytes, by design: an HF folder and a GGUF file of the same
//! model (or two quantizations of it) hold different bytes and so have different ids, since
//! their outputs differ too. The split of an HF checkpoint into shards, tensor order and
//! alignment in the files, metadata the engine does not read (tokenizer, names, licences) and
//! tensors it does not use do not enter the id.
//!
//! Hashing reads every byte of the model once; [`identity_cached`] memoises the result by the
//! canonical path and the files' sizes and timestamps.

use crate::config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
use crate::error::{EngineError, Result};
use crate::model::{ModelFormat, ModelSource};
use crate::weights::{BlockTensor, MappedFiles, TensorRole, WeightIndex};
use hearth_core::{BlockRange, ContentHash, ContentHasher};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the identity scheme; the first field of every config hash.
pub const IDENTITY_SCHEME: u64 = 1;

/// The tensors of a block in hashing order, with their role names. Part of the protocol: do not
/// reorder (a unit test checks it covers [`BlockTensor::ALL`]).
pub const BLOCK_TENSORS: [(BlockTensor, &str); 16] = [
    (BlockTensor::AttnNorm, "attn_norm"),
    (BlockTensor::Q, "q"),
    (BlockTensor::K, "k"),
    (BlockTensor::V, "v"),
    (BlockTensor::O, "o"),
    (BlockTensor::QBias, "q_bias"),
    (BlockTensor::KBias, "k_bias"),
    (BlockTensor::VBias, "v_bias"),
    (BlockTensor::FfnNorm, "ffn_norm"),
    (BlockTensor::Gate, "gate"),
    (BlockTensor::Up, "up"),
    (BlockTensor::Down, "down"),
    (BlockTensor::QNorm, "q_norm"),
    (BlockTensor::KNorm, "k_norm"),
    (BlockTensor::Qkv, "qkv"),
    (BlockTensor::GateUp, "gate_up"),
];

/// The client head's tensors in hashing order, with their role names.
pub const HEAD_TENSORS: [(TensorRole, &str); 3] = [
    (TensorRole::Embed, "embed"),
    (TensorRole::FinalNorm, "final_norm"),
    (TensorRole::LmHead, "output"),
];

/// The content hashes of a model: see the [module documentation](self) for their definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Hash of everything below: two models with the same id compute the same function.
    pub model_id: ContentHash,
    /// Hash of the architecture fields (and stored RoPE factors).
    pub config: ContentHash,
    /// One hash per transformer block, in order.
    pub blocks: Vec<ContentHash>,
    /// Hash of the embedding, final norm and output projection.
    pub head: ContentHash,
}

impl ModelIdentity {
    /// Assembles an identity from its parts, computing the model id.
    pub fn from_parts(config: ContentHash, blocks: Vec<ContentHash>, head: ContentHash) -> Self {
        Self {
            model_id: model_id_of(&config, &blocks, &head),
            config,
            blocks,
            head,
        }
    }

    /// Whether `model_id` is the hash of the other fields (check an identity received from a
    /// peer before trusting its block hashes).
    pub fn is_consistent(&self) -> bool {
        self.model_id == model_id_of(&self.config, &self.blocks, &self.head)
    }

    /// The hashes of blocks `range`, or `None` if the model has fewer blocks.
    pub fn blocks_in(&self, range: BlockRange) -> Option<&[ContentHash]> {
        self.blocks.get(range.as_usize_range())
    }
}

fn model_id_of(config: &ContentHash, blocks: &[ContentHash], head: &ContentHash) -> ContentHash {
    let mut h = ContentHasher::new("model");
    h.field(&config.0)
        .field(&(blocks.len() as u64).to_le_bytes());
    for b in blocks {
        h.field(&b.0);
    }
    h.field(&head.0).finish()
}

/// Bytes hashed between releases of a tensor's pages: peak resident memory while hashing is
/// about this much per thread, whatever the size of the tensors.
const HASH_CHUNK: usize = 8 << 20;

/// Adds one tensor record (see the module documentation); the tensor's pages are released as
/// they are hashed, so that hashing does not leave the model resident.
fn tensor_record(
    h: &mut ContentHasher,
    index: &WeightIndex,
    maps: &MappedFiles,
    role: TensorRole,
    name: &str,
) -> Result<bool> {
    h.field(name.as_bytes());
    let Some(raw) = index.raw_bytes(maps, role)? else {
        h.field(&[0]);
        return Ok(false);
    };
    let shape: Vec<u8> = raw
        .shape
        .iter()
        .flat_map(|&d| (d as u64).to_le_bytes())
        .collect();
    h.field(&[1])
        .field(raw.dtype.as_bytes())
        .field(&shape)
        .field_chunked(raw.bytes, HASH_CHUNK, |piece| maps.release_bytes(piece));
    Ok(true)
}

fn missing(index: &WeightIndex, src: &ModelSource, role: TensorRole) -> EngineError {
    let name = match index {
        WeightIndex::Hf { .. } => role.hf_name(),
        WeightIndex::Gguf { .. } => role.gguf_name(),
    };
    EngineError::MissingTensor {
        file: src.path().to_path_buf(),
        name,
    }
}

fn block_hash(
    src: &ModelSource,
    index: &WeightIndex,
    maps: &MappedFiles,
    block: u32,
) -> Result<ContentHash> {
    let mut h = ContentHasher::new("block");
    let has = src.config().architecture.block_tensors();
    for (t, name) in BLOCK_TENSORS.into_iter().filter(|(t, _)| has.contains(t)) {
        let role = TensorRole::Block(block, t);
        if !tensor_record(&mut h, index, maps, role, name)? && !t.is_bias() {
            return Err(missing(index, src, role));
        }
    }
    Ok(h.finish())
}

fn head_hash(src: &ModelSource, index: &WeightIndex, maps: &MappedFiles) -> Result<ContentHash> {
    let mut h = ContentHasher::new("head");
    for (role, name) in HEAD_TENSORS {
        // An absent output projection is recorded as absent: the head is tied to `embed`.
        if !tensor_record(&mut h, index, maps, role, name)? && role != TensorRole::LmHead {
            return Err(missing(index, src, role));
        }
    }
    Ok(h.finish())
}

/// The config hash: the scheme version, every computation-relevant [`ModelConfig`] field as a
/// (name, value) pair, then the `rope_freqs` tensor record.
fn config_hash(cfg: &ModelConfig, index: &WeightIndex, maps: &MappedFiles) -> Result<ContentHash> {
    // Destructured without `..`: a new field does not compile until it is placed here, hashed
    // or explicitly left out.
    let ModelConfig {
        architecture,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        rope_layout,
        max_position_embeddings: _,
        tie_word_embeddings,
        attention_bias,
        sliding_window,
        bos_token_id: _,
        eos_token_ids: _,
    } = cfg;
    let mut h = ContentHasher::new("config");
    let u = |x: usize| (x as u64).to_le_bytes();
    let f = |x: f64| x.to_bits().to_le_bytes();
    let arch = match architecture {
        Architecture::Llama => "llama",
        Architecture::Mistral => "mistral",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
        Architecture::Phi3 => "phi3",
    };
    h.field(b"scheme").field(&IDENTITY_SCHEME.to_le_bytes());
    h.field(b"architecture").field(arch.as_bytes());
    for (name, value) in [
        ("hidden_size", *hidden_size),
        ("intermediate_size", *intermediate_size),
        ("num_layers", *num_layers),
        ("num_heads", *num_heads),
        ("num_kv_heads", *num_kv_heads),
        ("head_dim", *head_dim),
        ("vocab_size", *vocab_size),
    ] {
        h.field(name.as_bytes()).field(&u(value));
    }
    h.field(b"rms_norm_eps").field(&f(*rms_norm_eps));
    h.field(b"rope_theta").field(&f(*rope_theta));
    h.field(b"rope_scaling");
    match rope_scaling {
        None => h.field(b"none"),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => h
            .field(b"llama3")
            .field(&f(*factor))
            .field(&f(*low_freq_factor))
            .field(&f(*high_freq_factor))
            .field(&u(*original_max_position_embeddings)),
        Some(RopeScaling::Linear { factor }) => h.field(b"linear").field(&f(*factor)),
        Some(RopeScaling::Factors(factors)) => {
            let bits: Vec<u8> = factors.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.field(b"factors").field(&bits)
        }
    };
    h.field(b"rope_layout").field(match rope_layout {
        RopeLayout::Half => b"half".as_slice(),
        RopeLayout::Interleaved => b"interleaved".as_slice(),
    });
    h.field(b"tie_word_embeddings")
        .field(&[u8::from(*tie_word_embeddings)]);
    h.field(b"attention_bias")
        .field(&[u8::from(*attention_bias)]);
    h.field(b"sliding_window");
    match sliding_window {
        None => h.field(&[0]),
        Some(w) => h.field(&[1]).field(&u(*w)),
    };
    tensor_record(&mut h, index, maps, TensorRole::RopeFreqs, "rope_freqs")?;
    Ok(h.finish())
}

impl ModelSource {
    /// Hashes the model's weights and architecture (reads every byte of the weights once; see
    /// [`identity_cached`] to do it once per file version).
    ///
    /// Blocks are hashed in parallel; the files are mapped only for the duration of the call and
    /// each tensor's pages are released as they are hashed (resident memory stays at a few
    /// 8 MiB pieces per thread).
    pub fn identity(&self) -> Result<ModelIdentity> {
        let index = match self.format() {
            ModelFormat::HfFolder => WeightIndex::open_hf(self.path())?,
            ModelFormat::Gguf => WeightIndex::open_gguf(self.path())?,
        };
        let maps = index.map()?;
        maps.advise_sequential();
        let config = config_hash(self.config(), &index, &maps)?;
        let (head, blocks) = rayon::join(
            || head_hash(self, &index, &maps),
            || {
                (0..self.config().num_blocks())
                    .into_par_iter()
                    .map(|i| block_hash(self, &index, &maps, i))
                    .collect::<Result<Vec<_>>>()
            },
        );
        Ok(ModelIdentity::from_parts(config, blocks?, head?))
    }
}

/// A file's size and timestamps: if none changed, its bytes are taken not to have changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    path: String,
    len: u64,
    mtime_s: i64,
    mtime_ns: u32,
    /// Status-change time and inode (Unix): catch a file replaced or rewritten with its old
    /// size and modification time restored (`cp -p`, `rsync -t`).
    ctime_s: i64,
    ctime_ns: i64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        let mtime = meta.modified().map_err(|e| EngineError::io(path, e))?;
        let (mtime_s, mtime_ns) = match mtime.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => (
                -(e.duration().as_secs() as i64),
                e.duration().subsec_nanos(),
            ),
        };
        #[cfg(unix)]
        let (ctime_s, ctime_ns, inode) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ctime(), meta.ctime_nsec(), meta.ino())
        };
        #[cfg(not(unix))]
        let (ctime_s, ctime_ns, inode) = (0, 0, 0);
        Ok(Self {
            path: path.to_string_lossy().into_owned(),
            len: meta.len(),
            mtime_s,
            mtime_ns,
            ctime_s,
            ctime_ns,
            inode,
        })
    }
}

/// Every file whose bytes enter the identity.
fn model_files(src: &ModelSource, dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(match src.format() {
        ModelFormat::Gguf => vec![dir.to_path_buf()],
        ModelFormat::HfFolder => {
            let mut files = vec![dir.join("config.json")];
            let index = dir.join("model.safetensors.index.json");
            if index.exists() {
                files.push(index);
            }
            files.extend(WeightIndex::open_hf(dir)?.files());
            files
        }
    })
}

fn stamps(files: &[PathBuf]) -> Result<Vec<FileStamp>> {
    files.iter().map(|p| FileStamp::of(p)).collect()
}

/// The memo file: the key (scheme, canonical path, file stamps) and the identity in hex.
#[derive(Serialize, Deserialize)]
struct CacheEntry {
    scheme: u64,
    path: String,
    files: Vec<FileStamp>,
    model_id: String,
    config: String,
    blocks: Vec<String>,
    head: String,
}

fn parse_hex(s: &str) -> Option<ContentHash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(ContentHash(out))
}

impl CacheEntry {
    fn identity(&self) -> Option<ModelIdentity> {
        let id = ModelIdentity {
            model_id: parse_hex(&self.model_id)?,
            config: parse_hex(&self.config)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| parse_hex(b))
                .collect::<Option<_>>()?,
            head: parse_hex(&self.head)?,
        };
        id.is_consistent().then_some(id)
    }
}

/// The cache file for one model: named by a hash of its canonical path.
fn cache_file(cache_dir: &Path, canonical: &Path) -> PathBuf {
    let key = ContentHash::of(canonical.to_string_lossy().as_bytes());
    cache_dir.join(format!("identity-{}.json", key.short()))
}

/// [`ModelSource::identity`], memoised in `cache_dir` (one small JSON file per model) by the
/// model's canonical path and its files' sizes, modification times, status-change times and
/// inodes. Any change to those re-hashes; a missing, unreadable or corrupt cache file is
/// ignored. Failing to write the cache is logged, not returned.
///
/// If a file changes while it is being hashed, the result is an error and nothing is cached.
pub fn identity_cached(src: &ModelSource, cache_dir: &Path) -> Result<ModelIdentity> {
    let canonical =
        std::fs::canonicalize(src.path()).map_err(|e| EngineError::io(src.path(), e))?;
    let files = model_files(src, &canonical)?;
    let before = stamps(&files)?;
    let path_str = canonical.to_string_lossy().into_owned();
    let file = cache_file(cache_dir, &canonical);

    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(entry) = serde_json::from_str::<CacheEntry>(&text) {
            if entry.scheme == IDENTITY_SCHEME && entry.path == path_str && entry.files == before {
                if let Some(id) = entry.identity() {
                    return Ok(id);
                }
            }
        }
    }

    tracing::info!(model = %canonical.display(), "hashing model weights for its content id");
    let id = src.identity()?;
    let after = stamps(&files)?;
    if after != before {
        return Err(EngineError::io(
            &canonical,
            std::io::Error::other("the model's files changed while they were being hashed"),
        ));
    }
    let entry = CacheEntry {
        scheme: IDENTITY_SCHEME,
        path: path_str,
        files: before,
        model_id: id.model_id.to_hex(),
        config: id.config.to_hex(),
        blocks: id.blocks.iter().map(ContentHash::to_hex).collect(),
        head: id.head.to_hex(),
    };
    if let Err(e) = write_atomic(&file, &entry) {
        tracing::warn!(cache = %file.display(), error = %e, "could not cache the model id");
    }
    Ok(id)
}

/// Writes `entry` to a temporary file beside `file` and renames it into place, so that a
/// concurrent reader sees the old entry or the new one, never half of one.
fn write_atomic(file: &Path, entry: &CacheEntry) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(entry).map_err(std::io::Error::other)?;
    let tmp = file.with_extension(format!("json.tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_order_is_the_block_tensor_order() {
        // `Architecture::block_tensors` follows `BlockTensor::ALL`; hashing follows this list.
        let order: Vec<BlockTensor> = BLOCK_TENSORS.iter().map(|(t, _)| *t).collect();
        assert_eq!(order, BlockTensor::ALL);
    }

    #[test]
    fn block_order_covers_every_block_tensor_once() {
        for t in BlockTensor::ALL {
            assert_eq!(
                BLOCK_TENSORS.iter().filter(|(u, _)| *u == t).count(),
                1,
                "{t:?}"
            );
        }
        let mut names: Vec<_> = BLOCK_TENSORS.iter().map(|(_, n)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), BLOCK_TENSORS.len());
    }

    #[test]
    fn model_id_binds_every_part() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        let id = ModelIdentity::from_parts(a, vec![a, b], b);
        assert!(id.is_consistent());
        assert_ne!(
            id.model_id,
            ModelIdentity::from_parts(a, vec![b, a], b).model_id
        );
        assert_ne!(
            id.model_id,
            ModelIdentity::from_parts(b, vec![a, b], b).model_id
        );
        assert_ne!(
            id.model_id,
            ModelIdentity::from_parts(a, vec![a, b], a).model_id
        );
        assert_ne!(
            id.model_id,
            ModelIdentity::from_parts(a, vec![a], b).model_id
        );
        let mut forged = id.clone();
        forged.blocks[1] = a;
        assert!(!forged.is_consistent());
        let range = BlockRange::new(1, 2).unwrap();
        assert_eq!(id.blocks_in(range), Some(&[b][..]));
        assert_eq!(id.blocks_in(BlockRange::new(1, 3).unwrap()), None);
    }

    #[test]
    fn hex_round_trips() {
        let h = ContentHash::of(b"hearth");
        assert_eq!(parse_hex(&h.to_hex()), Some(h));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"é".repeat(32)), None);
    }
}
