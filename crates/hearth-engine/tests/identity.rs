//! Content-addressed model ids: the same bytes give the same ids, one changed byte changes exactly
//! the hashes that cover it, shard layout does not matter, and the cache notices changed files.

use candle_core::quantized::{gguf_file, GgmlDType};
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{identity_cached, DType, ModelConfig, ModelIdentity, ModelSource};
use std::path::{Path, PathBuf};

fn write_hf(dir: &Path, cfg: ModelConfig, dtype: DType, shard_bytes: Option<u64>) -> ModelSource {
    SynthModel::new(cfg, 7)
        .unwrap()
        .write_hf(
            dir,
            dtype,
            &SynthOptions {
                seed: 7,
                shard_bytes,
            },
        )
        .unwrap();
    ModelSource::open(dir).unwrap()
}

fn write_gguf(path: &Path, shape_name: &str, quant: GgmlDType) -> ModelSource {
    SynthModel::new(shape(shape_name).unwrap(), 7)
        .unwrap()
        .write_gguf(path, quant)
        .unwrap();
    ModelSource::open(path).unwrap()
}

fn tiny() -> ModelConfig {
    shape("tiny").unwrap()
}

/// Byte offset of the middle of an HF tensor in `model.safetensors`.
fn hf_offset(dir: &Path, name: &str) -> (PathBuf, usize) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize + view.data().len() / 2;
    (path, at)
}

/// Byte offset of the middle of a GGUF tensor.
fn gguf_offset(path: &Path, name: &str) -> usize {
    let mut f = std::fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let info = &content.tensor_infos[name];
    let next = content
        .tensor_infos
        .values()
        .map(|i| i.offset)
        .filter(|&o| o > info.offset)
        .min()
        .unwrap();
    (content.tensor_data_offset + info.offset + (next - info.offset) / 2) as usize
}

/// Flips one byte in place; the file keeps its size.
fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Asserts that exactly block `changed` (and so the model id) differs.
fn assert_only_block_changed(a: &ModelIdentity, b: &ModelIdentity, changed: usize) {
    assert_ne!(a.model_id, b.model_id);
    assert_eq!(a.config, b.config);
    assert_eq!(a.head, b.head);
    assert_eq!(a.blocks.len(), b.blocks.len());
    for (i, (x, y)) in a.blocks.iter().zip(&b.blocks).enumerate() {
        if i == changed {
            assert_ne!(x, y, "block {i} should differ");
        } else {
            assert_eq!(x, y, "block {i} should not differ");
        }
    }
}

#[test]
fn same_hf_model_written_twice_has_the_same_ids() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ia = write_hf(a.path(), tiny(), DType::F32, None)
        .identity()
        .unwrap();
    let ib = write_hf(b.path(), tiny(), DType::F32, None)
        .identity()
        .unwrap();
    assert_eq!(ia, ib);
    assert!(ia.is_consistent());
    assert_eq!(ia.blocks.len(), tiny().num_layers);
    // Distinct blocks of random weights have distinct hashes.
    let mut blocks = ia.blocks.clone();
    blocks.sort();
    blocks.dedup();
    assert_eq!(blocks.len(), ia.blocks.len());
}

#[test]
fn one_byte_in_block_2_changes_only_block_2_and_the_model_id() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ia = write_hf(a.path(), tiny(), DType::F32, None)
        .identity()
        .unwrap();
    write_hf(b.path(), tiny(), DType::F32, None);
    let (path, at) = hf_offset(b.path(), "model.layers.2.mlp.up_proj.weight");
    flip_byte(&path, at);
    let ib = ModelSource::open(b.path()).unwrap().identity().unwrap();
    assert_only_block_changed(&ia, &ib, 2);

    // A byte of the final norm changes the head hash only.
    let (path, at) = hf_offset(b.path(), "model.norm.weight");
    flip_byte(&path, at);
    let ic = ModelSource::open(b.path()).unwrap().identity().unwrap();
    assert_ne!(ic.head, ib.head);
    assert_ne!(ic.model_id, ib.model_id);
    assert_eq!((&ic.config, &ic.blocks), (&ib.config, &ib.blocks));
}

#[test]
fn one_byte_in_a_gguf_block_changes_only_that_block() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let ia = write_gguf(&path, "tiny", GgmlDType::Q8_0)
        .identity()
        .unwrap();
    flip_byte(&path, gguf_offset(&path, "blk.2.ffn_up.weight"));
    let ib = ModelSource::open(&path).unwrap().identity().unwrap();
    assert_only_block_changed(&ia, &ib, 2);
}

/// Qwen3's q/k norms and Phi-3's fused matrices are part of their block's hash.
#[test]
fn new_family_tensors_are_hashed_with_their_block() {
    let dir = tempfile::tempdir().unwrap();
    for (name, tensor) in [
        ("tiny-qwen3", "blk.2.attn_q_norm.weight"),
        ("tiny-phi3", "blk.2.attn_qkv.weight"),
        ("tiny-phi3", "blk.2.ffn_up.weight"),
    ] {
        let path = dir.path().join(format!("{name}.gguf"));
        let ia = write_gguf(&path, name, GgmlDType::Q8_0).identity().unwrap();
        flip_byte(&path, gguf_offset(&path, tensor));
        let ib = ModelSource::open(&path).unwrap().identity().unwrap();
        assert_only_block_changed(&ia, &ib, 2);
    }
    // Same tensor shapes and bytes, another family: another config hash.
    let qwen3 = write_gguf(&dir.path().join("a.gguf"), "tiny-qwen3", GgmlDType::Q8_0);
    let qwen2 = write_gguf(&dir.path().join("b.gguf"), "tiny-qwen2", GgmlDType::Q8_0);
    assert_ne!(
        qwen3.identity().unwrap().config,
        qwen2.identity().unwrap().config
    );
}

#[test]
fn config_change_changes_config_hash_and_model_id_only() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ia = write_hf(a.path(), tiny(), DType::F32, None)
        .identity()
        .unwrap();
    // Synthesized values depend on (seed, tensor name) only: same weights, different RoPE.
    let cfg = ModelConfig {
        rope_theta: 10_000.0,
        ..tiny()
    };
    let ib = write_hf(b.path(), cfg, DType::F32, None)
        .identity()
        .unwrap();
    assert_ne!(ia.config, ib.config);
    assert_ne!(ia.model_id, ib.model_id);
    assert_eq!(ia.blocks, ib.blocks);
    assert_eq!(ia.head, ib.head);

    // Fields that change no computation (BOS/EOS ids, context limit) do not enter the id.
    let c = tempfile::tempdir().unwrap();
    let src = write_hf(c.path(), tiny(), DType::F32, None);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path().join("config.json")).unwrap())
            .unwrap();
    json["max_position_embeddings"] = 1234.into();
    json["eos_token_id"] = 3.into();
    std::fs::write(c.path().join("config.json"), json.to_string()).unwrap();
    drop(src);
    let ic = ModelSource::open(c.path()).unwrap().identity().unwrap();
    assert_eq!(ic, ia);
    json["rms_norm_eps"] = 1e-6.into();
    std::fs::write(c.path().join("config.json"), json.to_string()).unwrap();
    let ic = ModelSource::open(c.path()).unwrap().identity().unwrap();
    assert_ne!(ic.config, ia.config);
}

#[test]
fn sharded_hf_copy_has_the_ids_of_the_single_file_copy() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = write_hf(a.path(), tiny(), DType::BF16, None)
        .identity()
        .unwrap();
    let sharded = write_hf(b.path(), tiny(), DType::BF16, Some(1 << 20));
    assert!(b.path().join("model.safetensors.index.json").exists());
    let shards = std::fs::read_dir(b.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "safetensors")
        })
        .count();
    assert!(shards > 2, "{shards} shards");
    assert_eq!(sharded.identity().unwrap(), single);
    // A different dtype is different bytes.
    let c = tempfile::tempdir().unwrap();
    let f16 = write_hf(c.path(), tiny(), DType::F16, None)
        .identity()
        .unwrap();
    assert_eq!(f16.config, single.config);
    assert_ne!(f16.model_id, single.model_id);
}

#[test]
fn gguf_ids_are_stable_and_differ_from_hf_by_design() {
    let dir = tempfile::tempdir().unwrap();
    for (name, quant) in [("tiny", GgmlDType::Q8_0), ("tiny-qwen2", GgmlDType::Q4_0)] {
        let a = write_gguf(&dir.path().join("a.gguf"), name, quant)
            .identity()
            .unwrap();
        let b = write_gguf(&dir.path().join("b.gguf"), name, quant)
            .identity()
            .unwrap();
        assert_eq!(a, b, "{name}");
        assert!(a.is_consistent());
    }
    // Another quantization of the same model is other bytes: same config, other blocks.
    let q4 = ModelSource::open(&dir.path().join("b.gguf"))
        .unwrap()
        .identity()
        .unwrap();
    let q8 = write_gguf(&dir.path().join("c.gguf"), "tiny-qwen2", GgmlDType::Q8_0)
        .identity()
        .unwrap();
    assert_eq!(q8.config, q4.config);
    assert_ne!(q8.model_id, q4.model_id);
    assert!(q8.blocks.iter().zip(&q4.blocks).all(|(a, b)| a != b));
    // The HF copy holds different bytes (and RoPE layout): a different model id.
    let hf = write_hf(&dir.path().join("hf"), tiny(), DType::F32, None)
        .identity()
        .unwrap();
    let gguf = write_gguf(&dir.path().join("f32.gguf"), "tiny", GgmlDType::F32)
        .identity()
        .unwrap();
    assert_ne!(hf.model_id, gguf.model_id);
    assert_ne!(hf.config, gguf.config);
}

/// The single cache file `identity_cached` wrote.
fn cache_entry(cache: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Rewrites the cached block 0 hash (and model id, to stay consistent) to a marker value, so a
/// later call shows whether it used the cache.
fn forge_cache(file: &Path) -> ModelIdentity {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let hex = |v: &serde_json::Value| {
        let s = v.as_str().unwrap();
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        hearth_core::ContentHash(h)
    };
    let mut blocks: Vec<_> = json["blocks"].as_array().unwrap().iter().map(hex).collect();
    blocks[0] = hearth_core::ContentHash::of(b"forged");
    let forged = ModelIdentity::from_parts(hex(&json["config"]), blocks, hex(&json["head"]));
    json["blocks"][0] = forged.blocks[0].to_hex().into();
    json["model_id"] = forged.model_id.to_hex().into();
    std::fs::write(file, json.to_string()).unwrap();
    forged
}

fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn cached_identity_is_reused_until_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let path = dir.path().join("m.gguf");
    let src = write_gguf(&path, "tiny", GgmlDType::Q8_0);
    let fresh = src.identity().unwrap();
    assert_eq!(identity_cached(&src, &cache).unwrap(), fresh);
    let file = cache_entry(&cache);

    // A hit returns what the cache holds, without hashing.
    let forged = forge_cache(&file);
    assert_eq!(identity_cached(&src, &cache).unwrap(), forged);

    // A new modification time invalidates the entry.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    set_mtime(&path, mtime + std::time::Duration::from_secs(5));
    assert_eq!(identity_cached(&src, &cache).unwrap(), fresh);
    assert_eq!(identity_cached(&src, &cache).unwrap(), fresh);

    // A changed byte with size and modification time restored is still noticed (status-change
    // time), and re-hashed.
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    flip_byte(&path, gguf_offset(&path, "blk.2.ffn_up.weight"));
    set_mtime(&path, mtime);
    let changed = identity_cached(&src, &cache).unwrap();
    assert_only_block_changed(&fresh, &changed, 2);
    assert_eq!(changed, src.identity().unwrap());

    // A different size (file rewritten with another model) too.
    let src = write_gguf(&path, "tiny", GgmlDType::Q4_0);
    assert_eq!(
        identity_cached(&src, &cache).unwrap(),
        src.identity().unwrap()
    );
    assert_ne!(identity_cached(&src, &cache).unwrap(), fresh);

    // A corrupt or inconsistent cache file is ignored.
    std::fs::write(&file, "{ not json").unwrap();
    assert_eq!(
        identity_cached(&src, &cache).unwrap(),
        src.identity().unwrap()
    );
    assert_eq!(cache_entry(&cache), file);
}

#[test]
fn cached_identity_of_a_sharded_folder_watches_every_shard_and_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let model = dir.path().join("hf");
    let src = write_hf(&model, tiny(), DType::F32, Some(3 << 20));
    let fresh = identity_cached(&src, &cache).unwrap();
    assert_eq!(fresh, src.identity().unwrap());
    let file = cache_entry(&cache);

    let last = std::fs::read_dir(&model)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .max()
        .unwrap();
    for touched in [last, model.join("config.json")] {
        forge_cache(&file);
        let mtime = std::fs::metadata(&touched).unwrap().modified().unwrap();
        set_mtime(&touched, mtime + std::time::Duration::from_secs(5));
        assert_eq!(
            identity_cached(&src, &cache).unwrap(),
            fresh,
            "{}",
            touched.display()
        );
    }
}
