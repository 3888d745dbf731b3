//! What runs a generation for the gateway: the swarm (the normal case: this process holds only
//! the embeddings and the head, nodes run the blocks) or in-process slices (`--local`, one
//! machine, no network). Both are blocking and run on tokio's blocking pool.

use crate::trail::{trail_of, RouteHop, TokensOut, Trail};
use hearth_core::{BlockRange, ContentHash};
use hearth_engine::{
    generate_cancellable, ClientHead, EngineError, Generation, HeadBatchStats, HeadBatcher,
    HiddenStage, LoadOptions, LocalStage, ModelSource, Pipeline, SessionLimits, SliceServer,
};
use hearth_sampling::SamplingParams;
use hearth_swarm::SwarmClient;
use hearth_tokenizer::Tokenizer;
use std::sync::Arc;
use std::time::Duration;

/// A generation request after validation: prompt tokens and sampling parameters.
pub struct Job<'a> {
    /// The prompt's token ids; non-empty and shorter than the context.
    pub prompt: &'a [u32],
    /// Validated sampling parameters, `max_tokens` included.
    pub params: &'a SamplingParams,
    /// Called with each piece of final text as soon as it exists.
    pub on_text: &'a mut dyn FnMut(&str),
    /// Polled before every token; true stops the generation and frees its sessions.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// Something that can generate: blocking, called from the blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// The tokenizer (with the chat template) of the served model.
    fn tokenizer(&self) -> &Tokenizer;
    /// Longest prompt + completion, in tokens.
    fn context_len(&self) -> usize;
    /// The content-addressed model id.
    fn model_id(&self) -> ContentHash;
    /// Runs `job`. A swarm failure comes back inside [`EngineError::Remote`] as a
    /// `hearth_swarm::SwarmError` (see [`crate::failure`]).
    fn generate(&self, job: Job<'_>) -> (Result<Generation, EngineError>, Trail);
    /// Head products and the rows they covered, where the head is shared between generations.
    fn head_stats(&self) -> Option<HeadBatchStats> {
        None
    }
}

/// How long the shared head waits for other generations' rows before computing a batch.
const HEAD_GATHER: Duration = Duration::from_millis(3);
/// Most rows in one head product.
const HEAD_MAX_BATCH: usize = 64;

/// Generates through the swarm.
pub struct SwarmBackend {
    client: SwarmClient,
    head: Arc<ClientHead>,
    batcher: Option<HeadBatcher>,
    tokenizer: Tokenizer,
    model_id: ContentHash,
    n_blocks: u32,
    context_len: usize,
    /// Blocks run in this process at each end of the model (`with_private_edges`).
    edges: Option<PrivateEdges>,
}

/// The first and last blocks, run in the gateway so that no node sees the hidden states next to
/// the tokens (`--private-edges`); their slices are shared by every generation.
struct PrivateEdges {
    first: Arc<SliceServer>,
    last: Arc<SliceServer>,
    /// The blocks the swarm runs.
    remote: BlockRange,
}

impl SwarmBackend {
    /// A backend that runs the blocks of `model_id` through `client`'s swarm, computing
    /// embeddings and the head locally with `head` (shared between generations in batches).
    pub fn new(
        client: SwarmClient,
        head: Arc<ClientHead>,
        tokenizer: Tokenizer,
        model_id: ContentHash,
    ) -> Self {
        let cfg = head.config();
        Self {
            n_blocks: cfg.num_layers as u32,
            context_len: cfg.max_position_embeddings,
            batcher: Some(HeadBatcher::start(
                head.clone(),
                HEAD_GATHER,
                HEAD_MAX_BATCH,
            )),
            client,
            head,
            tokenizer,
            model_id,
            edges: None,
        }
    }
}

impl SwarmBackend {
    /// Every generation computes its own head (for measuring what batching gains).
    pub fn without_head_batching(mut self) -> Self {
        self.batcher = None;
        self
    }

    /// Runs the first and the last `n` blocks in this process, loaded from `src`, and only the
    /// blocks between them through the swarm. `n == 0` changes nothing; `2n` must leave the
    /// swarm at least one block.
    pub fn with_private_edges(mut self, src: &ModelSource, n: u32) -> anyhow::Result<Self> {
        if n == 0 {
            return Ok(self);
        }
        anyhow::ensure!(
            2 * u64::from(n) < u64::from(self.n_blocks),
            "--private-edges {n} leaves no blocks to the swarm ({} blocks)",
            self.n_blocks
        );
        let opts = LoadOptions::default();
        let load = |range: BlockRange| -> anyhow::Result<Arc<SliceServer>> {
            let slice = Arc::new(src.load_slice(range, &opts, None)?);
            Ok(Arc::new(SliceServer::new(slice, SessionLimits::default())))
        };
        self.edges = Some(PrivateEdges {
            first: load(BlockRange::new(0, n)?)?,
            last: load(BlockRange::new(self.n_blocks - n, self.n_blocks)?)?,
            remote: BlockRange::new(n, self.n_blocks - n)?,
        });
        Ok(self)
    }

    /// The blocks the swarm runs for this backend.
    pub fn remote_blocks(&self) -> BlockRange {
        self.edges.as_ref().map_or_else(
            || BlockRange::full(self.n_blocks.max(1)).expect("n_blocks >= 1"),
            |e| e.remote,
        )
    }
}

impl Backend for SwarmBackend {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn model_id(&self) -> ContentHash {
        self.model_id
    }

    fn head_stats(&self) -> Option<HeadBatchStats> {
        self.batcher.as_ref().map(HeadBatcher::stats)
    }

    fn generate(&self, job: Job<'_>) -> (Result<Generation, EngineError>, Trail) {
        let max_len = (job.prompt.len() + job.params.max_tokens).min(self.context_len);
        let chain =
            self.client
                .chain_range(self.model_id, self.n_blocks, self.remote_blocks(), max_len);
        let log = chain.log();
        let (prompt, params) = (job.prompt.to_vec(), job.params.clone());
        let stages: Result<Vec<Box<dyn HiddenStage>>, EngineError> = match &self.edges {
            None => Ok(vec![Box::new(chain)]),
            Some(e) => (|| {
                Ok(vec![
                    Box::new(LocalStage::open(e.first.clone(), max_len)?) as Box<dyn HiddenStage>,
                    Box::new(chain),
                    Box::new(LocalStage::open(e.last.clone(), max_len)?),
                ])
            })(),
        };
        let result = stages.and_then(|stages| {
            run_job(
                &self.head,
                self.batcher.as_ref(),
                &self.tokenizer,
                stages,
                job,
            )
        });
        let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut trail = trail_of(&self.model_id, &log, self.client.config().dtype);
        if let Ok(g) = &result {
            trail.tokens = Some(TokensOut::of(&prompt, g));
            trail.sampling = Some(params);
        }
        (result, trail)
    }
}

/// Runs `job` through the head and `stages`, sharing the head with concurrent generations when
/// a batcher is given. The stages are dropped before returning, which closes their sessions (on
/// a swarm chain: a `Close` to every node on the route).
fn run_job(
    head: &Arc<ClientHead>,
    batcher: Option<&HeadBatcher>,
    tokenizer: &Tokenizer,
    stages: Vec<Box<dyn HiddenStage>>,
    job: Job<'_>,
) -> Result<Generation, EngineError> {
    let _in_batch = batcher.map(HeadBatcher::register);
    let mut pipeline = Pipeline {
        head: head.clone(),
        stages,
        head_batch: batcher.cloned(),
    };
    let result = generate_cancellable(
        &mut pipeline,
        tokenizer,
        job.prompt,
        job.params,
        job.on_text,
        job.cancelled,
    );
    drop(pipeline);
    result
}

/// Runs every block in this process (no swarm): for a single machine, and for tests.
pub struct LocalBackend {
    server: Arc<SliceServer>,
    head: Arc<ClientHead>,
    batcher: HeadBatcher,
    tokenizer: Tokenizer,
    model_id: ContentHash,
    blocks: BlockRange,
    context_len: usize,
}

impl LocalBackend {
    /// Loads the whole model from `src` (head and every block); fails if it cannot be read.
    pub fn new(src: ModelSource, model_id: ContentHash) -> anyhow::Result<Self> {
        let opts = LoadOptions::default();
        let head = Arc::new(src.load_head(&opts, None)?);
        let tokenizer = src.tokenizer()?;
        let cfg = src.config();
        let blocks = BlockRange::full(cfg.num_blocks())?;
        let slice = Arc::new(src.load_slice(blocks, &opts, None)?);
        Ok(Self {
            server: Arc::new(SliceServer::new(slice, SessionLimits::default())),
            blocks,
            context_len: cfg.max_position_embeddings,
            batcher: HeadBatcher::start(head.clone(), HEAD_GATHER, HEAD_MAX_BATCH),
            head,
            tokenizer,
            model_id,
        })
    }
}

impl Backend for LocalBackend {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn model_id(&self) -> ContentHash {
        self.model_id
    }

    fn head_stats(&self) -> Option<HeadBatchStats> {
        Some(self.batcher.stats())
    }

    fn generate(&self, job: Job<'_>) -> (Result<Generation, EngineError>, Trail) {
        let trail = Trail {
            model_id: self.model_id.to_hex(),
            route: vec![RouteHop {
                node: "local".into(),
                blocks: self.blocks.to_string(),
            }],
            all_verified: true,
            ..Trail::default()
        };
        let max_len = (job.prompt.len() + job.params.max_tokens).min(self.context_len);
        let stage = match LocalStage::open(self.server.clone(), max_len) {
            Ok(stage) => stage,
            Err(e) => return (Err(e), trail),
        };
        let result = run_job(
            &self.head,
            Some(&self.batcher),
            &self.tokenizer,
            vec![Box::new(stage)],
            job,
        );
        (result, trail)
    }
}
