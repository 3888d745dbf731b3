//! Broken files and wrong arguments give errors that name the culprit; nothing panics. And a
//! slice reads only its own blocks' bytes.

use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{max_abs_diff, DType, EngineError, LoadOptions, ModelSource};
use std::path::Path;

fn synth(dir: &Path) {
    SynthModel::new(shape("tiny").unwrap(), 5)
        .unwrap()
        .write_hf(dir, DType::F32, &SynthOptions::default())
        .unwrap();
}

fn open_err(path: &Path) -> String {
    ModelSource::open(path).unwrap_err().to_string()
}

/// Parses a safetensors header: (data start, [(name, start, end)]).
fn header(bytes: &[u8]) -> (usize, Vec<(String, usize, usize)>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = Vec::new();
    for (name, info) in json.as_object().unwrap() {
        if let Some(off) = info.get("data_offsets") {
            out.push((
                name.clone(),
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            ));
        }
    }
    (8 + n, out)
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    assert!(open_err(&dir.path().join("nope")).contains("nope"));
    std::fs::write(
        dir.path().join("config.json"),
        shape("tiny").unwrap().to_hf_json("float32").to_string(),
    )
    .unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn truncated_and_lying_safetensors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path());
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();

    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("safetensors"),
        "{err}"
    );

    // A header length that points past the end of the file.
    let mut lying = bytes.clone();
    lying[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    std::fs::write(&file, &lying).unwrap();
    assert!(open_err(dir.path()).contains("model.safetensors"));

    // A header whose shape disagrees with its byte range.
    let (start, _) = header(&bytes);
    let text = String::from_utf8(bytes[8..start].to_vec()).unwrap();
    let lied = text.replacen("[256]", "[257]", 1);
    assert_ne!(lied, text);
    let mut out = (lied.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(lied.as_bytes());
    out.extend_from_slice(&bytes[start..]);
    std::fs::write(&file, &out).unwrap();
    assert!(open_err(dir.path()).contains("model.safetensors"));
}

#[test]
fn config_that_disagrees_with_weights_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path());
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 512", "\"intermediate_size\": 1024");
    std::fs::write(&cfg_path, text).unwrap();
    let src = ModelSource::open(dir.path()).unwrap();
    let err = src
        .load_slice(
            BlockRange::new(0, 1).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap_err();
    match &err {
        EngineError::TensorShape {
            name,
            expected,
            got,
            file,
        } => {
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.clone(), got.clone()),
                (vec![1024, 256], vec![512, 256])
            );
            assert!(file.ends_with("model.safetensors"));
        }
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path());
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"llama\"", "\"gpt_neox\"")
        .replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&cfg_path, text).unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("gpt_neox") && err.contains("config.json"),
        "{err}"
    );
}

#[test]
fn block_range_out_of_bounds_and_bad_tokens() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path());
    let src = ModelSource::open(dir.path()).unwrap();
    let err = src
        .load_slice(
            BlockRange::new(4, 7).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("4..7") && err.to_string().contains("6 blocks"),
        "{err}"
    );
    let head = src.load_head(&LoadOptions::default(), None).unwrap();
    assert!(matches!(
        head.embed(&[1, 512]),
        Err(EngineError::TokenOutOfRange {
            id: 512,
            vocab: 512
        })
    ));
}

#[test]
fn truncated_and_unknown_gguf_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    SynthModel::new(shape("tiny").unwrap(), 5)
        .unwrap()
        .write_gguf(&path, candle_core::quantized::GgmlDType::Q4_0)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = open_err(&path);
    assert!(err.contains("truncated") && err.contains("m.gguf"), "{err}");

    std::fs::write(&path, &bytes[..100]).unwrap();
    assert!(open_err(&path).contains("GGUF"));

    std::fs::write(&path, b"not a gguf file at all").unwrap();
    assert!(open_err(&path).contains("GGUF"));

    // Change the type code of the first tensor (Q4_0 = 2) to an undefined one.
    let name = b"token_embd.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    let type_at = at + name.len() + 4 + 2 * 8;
    let mut bad = bytes.clone();
    assert_eq!(
        u32::from_le_bytes(bad[type_at..type_at + 4].try_into().unwrap()),
        2
    );
    bad[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    std::fs::write(&path, &bad).unwrap();
    let err = open_err(&path);
    assert!(err.contains("GGUF") && err.contains("77"), "{err}");
}

#[test]
fn a_slice_reads_only_its_own_blocks() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path());
    let opts = LoadOptions::default();
    let range = BlockRange::new(0, 2).unwrap();
    let src = ModelSource::open(dir.path()).unwrap();
    let x = src
        .load_head(&opts, None)
        .unwrap()
        .embed(&[1, 2, 3])
        .unwrap();
    let before = src
        .load_slice(range, &opts, None)
        .unwrap()
        .forward(
            &x,
            &mut src.load_slice(range, &opts, None).unwrap().new_cache(),
        )
        .unwrap();

    // Poison every byte of blocks 2..6 with NaN.
    let file = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let (data, tensors) = header(&bytes);
    let mut poisoned = 0;
    for (name, s, e) in tensors {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<u32>().ok());
        if layer.is_some_and(|l| l >= 2) {
            for chunk in bytes[data + s..data + e].chunks_mut(4) {
                chunk.copy_from_slice(&f32::NAN.to_le_bytes());
            }
            poisoned += 1;
        }
    }
    assert_eq!(poisoned, 4 * 9);
    std::fs::write(&file, &bytes).unwrap();

    let src = ModelSource::open(dir.path()).unwrap();
    let slice = src.load_slice(range, &opts, None).unwrap();
    let after = slice.forward(&x, &mut slice.new_cache()).unwrap();
    assert_eq!(max_abs_diff(&before, &after).unwrap(), 0.0);
    // The poison is real: the blocks that hold it produce NaN.
    let rest = src
        .load_slice(BlockRange::new(2, 6).unwrap(), &opts, None)
        .unwrap();
    let y = rest.forward(&after, &mut rest.new_cache()).unwrap();
    assert!(y
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .any(|v| v.is_nan()));
}

/// Replaces the first occurrence of `from` in the file with `to` (same length), so that a tensor
/// is renamed in the header and the file stays valid.
fn rename_in_file(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from} not in {}", path.display()));
    bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// A Qwen3 checkpoint without a block's q norm opens (headers only) but its slice, and its
/// content id, are refused naming the missing tensor; other blocks still load.
#[test]
fn qwen3_without_q_norm_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = SynthModel::new(shape("tiny-qwen3").unwrap(), 5).unwrap();
    let hf = dir.path().join("hf");
    model
        .write_hf(&hf, DType::F32, &SynthOptions::default())
        .unwrap();
    let gguf = dir.path().join("m.gguf");
    model
        .write_gguf(&gguf, candle_core::quantized::GgmlDType::Q8_0)
        .unwrap();
    rename_in_file(
        &hf.join("model.safetensors"),
        "model.layers.1.self_attn.q_norm.weight",
        "model.layers.1.self_attn.q_nrom.weight",
    );
    rename_in_file(
        &gguf,
        "blk.1.attn_q_norm.weight",
        "blk.1.attn_q_nrom.weight",
    );
    for (path, name) in [
        (hf.as_path(), "model.layers.1.self_attn.q_norm.weight"),
        (gguf.as_path(), "blk.1.attn_q_norm.weight"),
    ] {
        let src = ModelSource::open(path).unwrap();
        let opts = LoadOptions::default();
        let err = src
            .load_slice(BlockRange::new(0, 3).unwrap(), &opts, None)
            .unwrap_err();
        match &err {
            EngineError::MissingTensor { name: missing, .. } => assert_eq!(missing, name),
            other => panic!("unexpected error {other}"),
        }
        assert!(err.to_string().contains(name), "{err}");
        let err = src.identity().unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        src.load_slice(BlockRange::new(2, 5).unwrap(), &opts, None)
            .unwrap();
    }
}
