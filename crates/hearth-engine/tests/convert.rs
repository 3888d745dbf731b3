//! `convert_gguf` keeps a model's metadata, tensor names, shapes and order, re-encodes its
//! matrices faithfully (exactly for F16, within Q8_0's rounding bound for Q8_0), writes files the
//! engine runs, and never leaves a partial output behind.

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use hearth_core::BlockRange;
use hearth_engine::convert::{convert_gguf, ConvertOptions, Converted, Fallback};
use hearth_engine::synth::{parse_quant, shape, SynthModel};
use hearth_engine::{max_abs_diff, EngineError, LoadOptions, ModelConfig, ModelSource, Pipeline};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

fn synth(path: &Path, config: ModelConfig, quant: GgmlDType) {
    SynthModel::new(config, 7)
        .unwrap()
        .write_gguf(path, quant)
        .unwrap();
}

fn convert(input: &Path, output: &Path, quant: GgmlDType) -> Converted {
    convert_gguf(input, output, &ConvertOptions { quant }).unwrap()
}

fn header(path: &Path) -> Content {
    Content::read(&mut File::open(path).unwrap()).unwrap()
}

/// Every metadata value, printed (candle's `Value` has no `PartialEq`; `Debug` prints floats
/// exactly), without `general.file_type`.
fn metadata_except_file_type(c: &Content) -> BTreeMap<String, String> {
    c.metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect()
}

fn file_type(c: &Content) -> u32 {
    match c.metadata.get("general.file_type") {
        Some(Value::U32(t)) => *t,
        other => panic!("general.file_type is {other:?}"),
    }
}

/// (name, row-major shape) of every tensor in the order of their data.
fn tensor_table(c: &Content) -> Vec<(String, Vec<usize>)> {
    let mut infos: Vec<_> = c.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, i)| i.offset);
    infos
        .into_iter()
        .map(|(n, i)| (n.clone(), i.shape.dims().to_vec()))
        .collect()
}

/// One tensor's values, dequantized by candle.
fn values(path: &Path, c: &Content, name: &str) -> Vec<f32> {
    c.tensor(
        &mut File::open(path).unwrap(),
        name,
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .dequantize(&candle_core::Device::Cpu)
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1()
    .unwrap()
}

const PROMPT: [u32; 11] = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114];

/// The whole model's logits for [`PROMPT`], on hearth's kernels.
fn logits(path: &Path) -> candle_core::Tensor {
    let src = ModelSource::open(path).unwrap();
    let ranges = BlockRange::split_at(src.config().num_blocks(), &[]).unwrap();
    Pipeline::load_local(&src, &ranges, &LoadOptions::default(), 256)
        .unwrap()
        .logits_all(0, &PROMPT)
        .unwrap()
}

#[test]
fn f16_conversion_keeps_everything_and_rounds_each_value_once() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("q4_0.gguf"), dir.path().join("f16.gguf"));
    synth(&src, shape("tiny").unwrap(), GgmlDType::Q4_0);
    let report = convert(&src, &out, GgmlDType::F16);

    let (a, b) = (header(&src), header(&out));
    assert_eq!(metadata_except_file_type(&a), metadata_except_file_type(&b));
    assert_eq!(
        (file_type(&a), file_type(&b)),
        (2, 1),
        "MOSTLY_Q4_0 -> MOSTLY_F16"
    );
    assert_eq!(tensor_table(&a), tensor_table(&b));
    assert_eq!(report.tensors, a.tensor_infos.len());
    assert!(report.fallbacks.is_empty());
    assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());

    for (name, dims) in tensor_table(&a) {
        let stored = b.tensor_infos[&name].ggml_dtype;
        let source = values(&src, &a, &name);
        let converted = values(&out, &b, &name);
        if dims.len() == 1 {
            assert_eq!(stored, GgmlDType::F32, "{name}");
            assert_eq!(converted, source, "{name}: vectors are kept exactly");
        } else {
            assert_eq!(stored, GgmlDType::F16, "{name}");
            let rounded: Vec<f32> = source
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect();
            assert_eq!(
                converted, rounded,
                "{name}: the source's values rounded to f16"
            );
        }
    }
}

#[test]
fn q8_0_conversion_stays_within_the_q8_0_rounding_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("q4_0.gguf"), dir.path().join("q8_0.gguf"));
    synth(&src, shape("tiny").unwrap(), GgmlDType::Q4_0);
    convert(&src, &out, GgmlDType::Q8_0);

    let (a, b) = (header(&src), header(&out));
    assert_eq!(metadata_except_file_type(&a), metadata_except_file_type(&b));
    assert_eq!(file_type(&b), 7, "MOSTLY_Q8_0");
    assert_eq!(tensor_table(&a), tensor_table(&b));
    for (name, dims) in tensor_table(&a) {
        let source = values(&src, &a, &name);
        let converted = values(&out, &b, &name);
        if dims.len() == 1 {
            assert_eq!(converted, source, "{name}");
            continue;
        }
        assert_eq!(b.tensor_infos[&name].ggml_dtype, GgmlDType::Q8_0, "{name}");
        // Q8_0 stores q = round(x / d) with d = amax / 127 rounded to f16 (relative error at most
        // 2^-11), and reads back q * d: an error of at most d/2 + 127 * d * 2^-11 per value.
        for (block, (xs, ys)) in source.chunks(32).zip(converted.chunks(32)).enumerate() {
            let d = xs.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            let bound = d * (0.5 + 127.0 / 2048.0) * 1.0001;
            for (x, y) in xs.iter().zip(ys) {
                assert!((x - y).abs() <= bound, "{name} block {block}: {x} -> {y}");
            }
        }
    }
}

#[test]
fn converted_files_run_like_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    // F32 -> F16 encodes the same values as writing F16 directly: the same logits, bit for bit.
    synth(&p("f32.gguf"), shape("tiny").unwrap(), GgmlDType::F32);
    synth(&p("f16.gguf"), shape("tiny").unwrap(), GgmlDType::F16);
    convert(&p("f32.gguf"), &p("f32-to-f16.gguf"), GgmlDType::F16);
    let d = max_abs_diff(&logits(&p("f16.gguf")), &logits(&p("f32-to-f16.gguf"))).unwrap();
    assert_eq!(d, 0.0);

    // Q4_0 -> F32 is lossless: only the Q4_0 kernel's int8 activations set the two apart
    // (measured 0.096 of a largest logit of 3.8 on `tiny`).
    synth(&p("q4_0.gguf"), shape("tiny").unwrap(), GgmlDType::Q4_0);
    convert(&p("q4_0.gguf"), &p("q4_0-to-f32.gguf"), GgmlDType::F32);
    let source = logits(&p("q4_0.gguf"));
    let widened = logits(&p("q4_0-to-f32.gguf"));
    let d = max_abs_diff(&source, &widened).unwrap();
    let scale = max_abs_diff(&source, &source.zeros_like().unwrap()).unwrap();
    eprintln!("Q4_0 vs its F32 conversion: max |Δlogit| {d} (max |logit| {scale})");
    assert!(d < 0.05 * scale, "max |Δlogit| {d}");
}

/// Rows that do not divide into the requested blocks fall back to Q8_0, are reported, and the
/// file still runs.
#[test]
fn rows_too_short_for_the_blocks_fall_back_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("f32.gguf"), dir.path().join("q4_k.gguf"));
    // A hidden size of 160 is 5 Q8_0 blocks but no whole Q4_K block (256); the MLP's 512 is 2.
    let mut config = shape("tiny").unwrap();
    config.hidden_size = 160;
    config.head_dim = 40;
    synth(&src, config, GgmlDType::F32);
    let report = convert(&src, &out, GgmlDType::Q4K);

    let b = header(&out);
    let expected: Vec<Fallback> = tensor_table(&b)
        .into_iter()
        .filter(|(_, dims)| dims.len() == 2 && dims[1] == 160)
        .map(|(name, _)| Fallback {
            name,
            row_len: 160,
            dtype: GgmlDType::Q8_0,
        })
        .collect();
    assert!(expected.iter().any(|f| f.name == "token_embd.weight"));
    assert_eq!(report.fallbacks, expected);
    for (name, dims) in tensor_table(&b) {
        let want = match dims[..] {
            [_] => GgmlDType::F32,
            [_, 160] => GgmlDType::Q8_0,
            _ => GgmlDType::Q4K,
        };
        assert_eq!(b.tensor_infos[&name].ggml_dtype, want, "{name} {dims:?}");
    }
    assert_eq!(file_type(&b), 15, "MOSTLY_Q4_K_M");
    let d = max_abs_diff(&logits(&src), &logits(&out)).unwrap();
    assert!(d.is_finite() && d < 1.0, "max |Δlogit| {d}");
}

/// Every entry of `dir`, to check that nothing (not even a temporary file) was left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_truncated_input_is_named_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("cut.gguf"), dir.path().join("out.gguf"));
    synth(&src, shape("tiny").unwrap(), GgmlDType::Q4_0);
    let len = std::fs::metadata(&src).unwrap().len();
    File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    let err = convert_gguf(
        &src,
        &out,
        &ConvertOptions {
            quant: GgmlDType::F16,
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EngineError::Format { .. }), "{msg}");
    assert!(
        msg.contains("cut.gguf") && msg.contains("truncated"),
        "{msg}"
    );
    assert_eq!(entries(dir.path()), ["cut.gguf"]);

    // An existing output is left as it was.
    std::fs::write(&out, "old").unwrap();
    convert_gguf(
        &src,
        &out,
        &ConvertOptions {
            quant: GgmlDType::F16,
        },
    )
    .unwrap_err();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old");
    assert_eq!(entries(dir.path()), ["cut.gguf", "out.gguf"]);
}

#[test]
fn bad_inputs_and_outputs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let f16 = ConvertOptions {
        quant: GgmlDType::F16,
    };

    let missing = convert_gguf(&p("nope.gguf"), &p("out.gguf"), &f16).unwrap_err();
    assert!(matches!(missing, EngineError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("nope.gguf"), "{missing}");

    std::fs::write(p("notes.txt"), "not a model at all, just some text").unwrap();
    let not_gguf = convert_gguf(&p("notes.txt"), &p("out.gguf"), &f16).unwrap_err();
    assert!(
        not_gguf.to_string().contains("not a valid GGUF file"),
        "{not_gguf}"
    );

    synth(&p("m.gguf"), shape("tiny").unwrap(), GgmlDType::Q8_0);
    let before = std::fs::read(p("m.gguf")).unwrap();
    let same = convert_gguf(&p("m.gguf"), &p("m.gguf"), &f16).unwrap_err();
    assert!(same.to_string().contains("is the input file"), "{same}");
    // The same file under another spelling of its path.
    let same = convert_gguf(&p("m.gguf"), &dir.path().join(".").join("m.gguf"), &f16);
    assert!(same.is_err());
    assert_eq!(std::fs::read(p("m.gguf")).unwrap(), before);

    let unknown = parse_quant("q9_9").unwrap_err().to_string();
    assert!(
        unknown.contains("q9_9") && unknown.contains("q8_0"),
        "{unknown}"
    );
    let activation = ConvertOptions {
        quant: GgmlDType::Q8K,
    };
    assert!(convert_gguf(&p("m.gguf"), &p("out.gguf"), &activation).is_err());

    assert_eq!(entries(dir.path()), ["m.gguf", "notes.txt"]);
}
