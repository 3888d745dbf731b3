//! Steps of several sessions batched into one pass over the weights give each session what it
//! would get alone; bad steps in a batch fail on their own; caches come out as after single steps.

use candle_core::quantized::GgmlDType;
use hearth_core::BlockRange;
use hearth_engine::synth::{shape, SynthModel, SynthOptions};
use hearth_engine::{
    max_abs_diff, DType, Device, EngineError, LoadOptions, ModelSource, SessionId, SessionLimits,
    SliceServer, Tensor,
};
use std::path::Path;
use std::sync::Arc;

/// A model file kept alive for the test, a server on blocks `1..4` of it and the source.
struct Fixture {
    _dir: tempfile::TempDir,
    src: ModelSource,
    srv: Arc<SliceServer>,
}

fn fixture(write: impl FnOnce(&Path) -> std::path::PathBuf) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path());
    let src = ModelSource::open(&path).unwrap();
    let slice = src
        .load_slice(
            BlockRange::new(1, 4).unwrap(),
            &LoadOptions::default(),
            None,
        )
        .unwrap();
    let srv = Arc::new(SliceServer::new(Arc::new(slice), SessionLimits::default()));
    Fixture {
        _dir: dir,
        src,
        srv,
    }
}

fn f32_hf() -> Fixture {
    fixture(|dir| {
        SynthModel::new(shape("tiny").unwrap(), 5)
            .unwrap()
            .write_hf(dir, DType::F32, &SynthOptions::default())
            .unwrap();
        dir.to_path_buf()
    })
}

fn gguf(quant: GgmlDType) -> Fixture {
    gguf_of("tiny", quant)
}

fn gguf_of(shape_name: &str, quant: GgmlDType) -> Fixture {
    fixture(|dir| {
        let path = dir.join("m.gguf");
        SynthModel::new(shape(shape_name).unwrap(), 5)
            .unwrap()
            .write_gguf(&path, quant)
            .unwrap();
        path
    })
}

impl Fixture {
    fn hidden(&self, ids: &[u32]) -> Tensor {
        self.src
            .load_head(&LoadOptions::default(), None)
            .unwrap()
            .embed(ids)
            .unwrap()
    }
}

/// Prompts of different lengths, then decode tokens, per session.
fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 72, 101, 108, 108, 111, 44],
        vec![7],
        vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9],
        vec![200, 100, 50],
        vec![511, 0],
    ]
}

const DECODE: [u32; 4] = [42, 17, 300, 5];

/// Every session's outputs for prefill and each decode step, each session stepped on its own.
fn alone(f: &Fixture) -> Vec<Vec<Tensor>> {
    prompts()
        .iter()
        .enumerate()
        .map(|(s, prompt)| {
            let id = f.srv.open(64).unwrap();
            let mut outs = vec![f.srv.step(id, 0, &f.hidden(prompt)).unwrap()];
            for (i, &tok) in DECODE.iter().enumerate() {
                let tok = (tok + s as u32 * 31) % 512;
                outs.push(f.srv.step(id, prompt.len() + i, &f.hidden(&[tok])).unwrap());
            }
            f.srv.close(id).unwrap();
            outs
        })
        .collect()
}

/// The same steps, every round of all sessions in one `step_batch`; the first round mixes
/// prompt lengths. Round 2 runs a different subset order to vary the batch's composition.
fn batched(f: &Fixture) -> (Vec<SessionId>, Vec<Vec<Tensor>>) {
    let prompts = prompts();
    let ids: Vec<SessionId> = prompts.iter().map(|_| f.srv.open(64).unwrap()).collect();
    let mut outs: Vec<Vec<Tensor>> = prompts.iter().map(|_| Vec::new()).collect();
    let prefill = ids
        .iter()
        .zip(&prompts)
        .map(|(&id, p)| (id, 0, f.hidden(p)))
        .collect();
    for (s, r) in f.srv.step_batch(prefill).into_iter().enumerate() {
        outs[s].push(r.unwrap());
    }
    for (i, &tok) in DECODE.iter().enumerate() {
        // Reverse the order on odd rounds: the result must not depend on it.
        let mut order: Vec<usize> = (0..ids.len()).collect();
        if i % 2 == 1 {
            order.reverse();
        }
        let steps = order
            .iter()
            .map(|&s| {
                let tok = (tok + s as u32 * 31) % 512;
                (ids[s], prompts[s].len() + i, f.hidden(&[tok]))
            })
            .collect();
        for (&s, r) in order.iter().zip(f.srv.step_batch(steps)) {
            outs[s].push(r.unwrap());
        }
    }
    (ids, outs)
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let d = max_abs_diff(a, b).unwrap();
    assert!(d <= tol, "{what}: max |Δ| = {d} > {tol}");
}

/// Bitwise equality of two f32 tensors.
fn assert_bitwise(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}");
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    assert!(bits(a) == bits(b), "{what}: not bitwise equal");
}

fn check_batched_matches_alone(f: &Fixture, tol: Option<f32>) {
    let reference = alone(f);
    let (ids, got) = batched(f);
    for (s, (r, g)) in reference.iter().zip(&got).enumerate() {
        assert_eq!(r.len(), g.len());
        for (i, (r, g)) in r.iter().zip(g).enumerate() {
            let what = format!("session {s} step {i}");
            match tol {
                Some(tol) => assert_close(r, g, tol, &what),
                None => assert_bitwise(r, g, &what),
            }
        }
    }
    // The caches the batches left behind are those of single steps: one more step on its own
    // (and a replay of the last position) gives what a session stepped alone gives.
    let prompts = prompts();
    for (s, &id) in ids.iter().enumerate() {
        let end = prompts[s].len() + DECODE.len();
        assert_eq!(f.srv.session_len(id).unwrap(), end);
    }
    let probe = f.hidden(&[99]);
    let mut next = Vec::new();
    for (s, &id) in ids.iter().enumerate() {
        next.push(
            f.srv
                .step(id, prompts[s].len() + DECODE.len(), &probe)
                .unwrap(),
        );
    }
    let refs: Vec<Tensor> = prompts
        .iter()
        .enumerate()
        .map(|(s, prompt)| {
            let id = f.srv.open(64).unwrap();
            f.srv.step(id, 0, &f.hidden(prompt)).unwrap();
            for (i, &tok) in DECODE.iter().enumerate() {
                let tok = (tok + s as u32 * 31) % 512;
                f.srv.step(id, prompt.len() + i, &f.hidden(&[tok])).unwrap();
            }
            let out = f.srv.step(id, prompt.len() + DECODE.len(), &probe).unwrap();
            f.srv.close(id).unwrap();
            out
        })
        .collect();
    for (s, (r, g)) in refs.iter().zip(&next).enumerate() {
        let what = format!("session {s}, step after the batches");
        match tol {
            Some(tol) => assert_close(r, g, tol, &what),
            None => assert_bitwise(r, g, &what),
        }
    }
}

#[test]
fn f32_batch_matches_sessions_alone() {
    check_batched_matches_alone(&f32_hf(), Some(1e-5));
}

/// Q8_0 (and Q4_0) on hearth's kernels: activations are quantized per row and every row's block
/// sums are exact integers scaled in the same order whatever the other rows are, and the rest of
/// a block (norms, RoPE, attention, MLP activations) is per row or per session, so a batched
/// session's hidden states are bitwise those of the session alone.
#[test]
fn q8_0_batch_is_bitwise_the_sessions_alone() {
    check_batched_matches_alone(&gguf(GgmlDType::Q8_0), None);
}

/// Qwen3's per-head q/k norms and Phi-3's fused projections are per-row too.
#[test]
fn new_families_batch_bitwise_like_the_sessions_alone() {
    for name in ["tiny-qwen3", "tiny-phi3"] {
        check_batched_matches_alone(&gguf_of(name, GgmlDType::Q8_0), None);
    }
}

#[test]
fn q4_0_batch_is_bitwise_the_sessions_alone() {
    check_batched_matches_alone(&gguf(GgmlDType::Q4_0), None);
}

/// F16 weights accumulate in f32 in an order that depends on how many rows share a tile, so a
/// batched row may differ from the row alone in the last bits (well below 1e-4 here).
#[test]
fn f16_batch_matches_sessions_alone() {
    check_batched_matches_alone(&gguf(GgmlDType::F16), Some(1e-4));
}

#[test]
fn bad_steps_fail_alone_and_leave_their_caches() {
    let f = gguf(GgmlDType::Q8_0);
    let srv = &f.srv;
    let (a, b, c, d, e) = (
        srv.open(64).unwrap(),
        srv.open(64).unwrap(),
        srv.open(64).unwrap(),
        srv.open(6).unwrap(),
        srv.open(64).unwrap(),
    );
    let prefill = |id| srv.step(id, 0, &f.hidden(&[1, 2, 3, 4, 5])).unwrap();
    for id in [a, b, c, d, e] {
        prefill(id);
    }
    let x = |tok| f.hidden(&[tok]);
    let steps = vec![
        (a, 5, x(10)),
        (999, 0, x(11)), // unknown session
        (
            b,
            5,
            Tensor::zeros((1, 1, 255), DType::F32, &Device::Cpu).unwrap(),
        ), // wrong width
        (a, 5, x(12)),   // a again
        (c, 7, x(13)),   // skips positions 5 and 6
        (d, 5, f.hidden(&[14, 15])), // 7 tokens > max_len 6
        (e, 3, f.hidden(&[16, 17])), // rewinds: replays positions 3 and 4
    ];
    let out = srv.step_batch(steps);
    assert_eq!(out.len(), 7);
    let err = |i: usize| match &out[i] {
        Err(e) => e.to_string(),
        Ok(_) => panic!("step {i} should have failed"),
    };
    assert!(
        matches!(out[1], Err(EngineError::UnknownSession(999))),
        "{}",
        err(1)
    );
    assert!(
        matches!(out[2], Err(EngineError::HiddenShape { hidden: 256, .. })),
        "{}",
        err(2)
    );
    assert!(
        matches!(out[3], Err(EngineError::DuplicateInBatch(id)) if id == a),
        "{}",
        err(3)
    );
    assert!(
        matches!(
            out[4],
            Err(EngineError::PositionGap {
                requested: 7,
                cached: 5,
                ..
            })
        ),
        "{}",
        err(4)
    );
    assert!(
        matches!(
            out[5],
            Err(EngineError::SessionFull {
                tokens: 7,
                max_len: 6,
                ..
            })
        ),
        "{}",
        err(5)
    );
    // The failed sessions kept their caches; the good steps ran.
    assert_eq!(srv.session_len(a).unwrap(), 6);
    assert_eq!(srv.session_len(b).unwrap(), 5);
    assert_eq!(srv.session_len(c).unwrap(), 5);
    assert_eq!(srv.session_len(d).unwrap(), 5);
    assert_eq!(srv.session_len(e).unwrap(), 5);

    // The good results are those of single steps.
    let reference = |id_steps: &[(usize, &[u32])]| {
        let id = srv.open(64).unwrap();
        prefill(id);
        let mut last = None;
        for &(start, ids) in id_steps {
            last = Some(srv.step(id, start, &f.hidden(ids)).unwrap());
        }
        srv.close(id).unwrap();
        last.unwrap()
    };
    assert_bitwise(out[0].as_ref().unwrap(), &reference(&[(5, &[10])]), "a");
    assert_bitwise(out[6].as_ref().unwrap(), &reference(&[(3, &[16, 17])]), "e");

    // Sessions that failed in the batch go on as if it had not happened.
    let b_next = srv.step(b, 5, &x(20)).unwrap();
    assert_bitwise(&b_next, &reference(&[(5, &[20])]), "b after the batch");
    let all_bad = srv.step_batch(vec![(12345, 0, x(1)), (c, 9, x(1))]);
    assert!(all_bad.iter().all(|r| r.is_err()));
    assert!(srv.step_batch(Vec::new()).is_empty());
}

#[test]
fn forward_batch_rejects_bad_shapes_before_touching_caches() {
    let f = f32_hf();
    let slice = f.srv.slice();
    let mut c1 = slice.new_cache();
    let mut c2 = slice.new_cache();
    let good = f.hidden(&[1, 2, 3]);
    let bad = Tensor::zeros((1, 2, 128), DType::F32, &Device::Cpu).unwrap();
    let err = slice
        .forward_batch(&mut [(&good, &mut c1), (&bad, &mut c2)])
        .unwrap_err();
    assert!(matches!(err, EngineError::HiddenShape { .. }), "{err}");
    assert_eq!((c1.len(), c2.len()), (0, 0));
    let out = slice
        .forward_batch(&mut [(&good, &mut c1), (&f.hidden(&[4]), &mut c2)])
        .unwrap();
    assert_eq!(out[0].dims(), &[1, 3, 256]);
    assert_eq!(out[1].dims(), &[1, 1, 256]);
    assert_eq!((c1.len(), c2.len()), (3, 1));
    assert!(slice.forward_batch(&mut []).unwrap().is_empty());
}

/// Batches over the same sessions listed in opposite orders, from several threads at once, do
/// not deadlock (sessions are locked in id order).
#[test]
fn concurrent_overlapping_batches_do_not_deadlock() {
    let f = f32_hf();
    let ids: Vec<SessionId> = (0..4).map(|_| f.srv.open(512).unwrap()).collect();
    let x = f.hidden(&[7]);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (srv, x) = (f.srv.clone(), x.clone());
            let mut ids = ids.clone();
            if t % 2 == 1 {
                ids.reverse();
            }
            std::thread::spawn(move || {
                for _ in 0..20 {
                    // Positions are whatever the session holds: append at the end.
                    let steps = ids
                        .iter()
                        .map(|&id| (id, srv.session_len(id).unwrap(), x.clone()))
                        .collect();
                    for r in srv.step_batch(steps) {
                        // Another thread may have stepped in between: a replay is fine, and a
                        // gap (its replay cut the cache below our start) is refused cleanly.
                        match r {
                            Ok(_) | Err(EngineError::PositionGap { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for &id in &ids {
        let len = f.srv.session_len(id).unwrap();
        assert!((1..=80).contains(&len), "{len}");
    }
}
