//! Many concurrent generation sessions on one slice, each with its own KV cache, position and
//! length limit, under a node-wide cache budget.
//!
//! Cache is reserved as a session grows, the way its buffers grow (doubling, from
//! [`INITIAL_RESERVED_POSITIONS`], never past its `max_len`): a session that asks for a long
//! `max_len` and then idles holds only what it used, so one client cannot make the node refuse
//! everyone else by opening sessions it never fills. A step that would take the reservations
//! past the budget is refused ([`EngineError::CacheBudget`]) and leaves the session as it was;
//! a swarm client then fails over to another server.
//!
//! Sessions may also draw from a [`CacheQuota`], a share of the budget that several sessions
//! of one owner hold together (a node gives one to each peer): many small sessions of one
//! client cannot add up to the whole budget either.

use crate::error::{EngineError, Result};
use crate::model::{ModelSlice, SliceCache};
use candle_core::Tensor;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Positions reserved when a session opens (or its `max_len`, if smaller); a session's KV
/// buffers start at this size too.
pub const INITIAL_RESERVED_POSITIONS: usize = 64;

/// Identifies a session on one server.
pub type SessionId = u64;

/// Node-wide limits on sessions.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Bytes of KV cache all sessions together may reserve.
    pub cache_budget_bytes: u64,
    /// Sessions that have not grown for this long are closed: steps that only replay or rewind
    /// do not keep a session (and its cache) alive.
    pub idle_timeout: Duration,
    /// Sessions open longer than this are closed, however they are used.
    pub max_lifetime: Duration,
    /// Most sessions open at once.
    pub max_sessions: usize,
    /// Longest `max_len` one session may ask for.
    pub max_len_cap: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            cache_budget_bytes: 2 << 30,
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(2 * 3600),
            max_sessions: 256,
            max_len_cap: 32_768,
        }
    }
}

/// A share of the cache budget that the sessions opened with it reserve together. Shared
/// (`Arc`) by those sessions; taken before the server's budget and given back with it.
#[derive(Debug)]
pub struct CacheQuota {
    limit: u64,
    used: AtomicU64,
}

impl CacheQuota {
    /// A share of at most `limit` bytes, none used.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes reserved now by the sessions that share it.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The most bytes the sessions that share it may reserve together.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Takes `bytes` more if they fit; else says how many were in use.
    fn try_take(&self, bytes: u64) -> std::result::Result<(), u64> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
    }

    fn take(&self, bytes: u64) -> Result<()> {
        self.try_take(bytes)
            .map_err(|used| EngineError::CacheQuota {
                requested: bytes,
                available: self.limit.saturating_sub(used),
                quota: self.limit,
            })
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

struct Session {
    cache: SliceCache,
    /// The share this session's reservation also counts against, if any.
    quota: Option<Arc<CacheQuota>>,
    max_len: usize,
    /// Cache bytes per position of this session's span.
    bytes_per_position: u64,
    /// Positions reserved (at least the cached length; at most `max_len`).
    reserved_positions: usize,
    opened: Instant,
    /// The longest the cache has been, and when it last got longer (or the session opened).
    longest: usize,
    last_progress: Instant,
}

impl Session {
    /// Notes the session's length after a step: progress only when it passes the longest yet.
    fn stepped(&mut self, now: Instant) {
        if self.cache.len() > self.longest {
            self.longest = self.cache.len();
            self.last_progress = now;
        }
    }

    /// Whether [`SliceServer::expire_idle`] closes it at `now`.
    fn expired(&self, now: Instant, limits: &SessionLimits) -> bool {
        now.saturating_duration_since(self.last_progress) > limits.idle_timeout
            || now.saturating_duration_since(self.opened) > limits.max_lifetime
    }

    fn reserved_bytes(&self) -> u64 {
        self.bytes_per_position
            .saturating_mul(self.reserved_positions as u64)
    }
}

struct Registry {
    sessions: HashMap<SessionId, Arc<Mutex<Session>>>,
    next_id: SessionId,
}

/// Serves one [`ModelSlice`] to many sessions. Cheap to share (`Arc`); sessions run concurrently,
/// a single session's steps run one at a time.
pub struct SliceServer {
    slice: Arc<ModelSlice>,
    limits: SessionLimits,
    registry: Mutex<Registry>,
    /// Cache bytes reserved by the open sessions, within the budget (`limits.cache_budget_bytes`).
    /// Atomic, not in the registry: a step grows its session's reservation while holding the
    /// session's lock, and the registry is locked before sessions elsewhere.
    budget: CacheQuota,
}

/// A snapshot of a server's load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerStats {
    /// Sessions open now.
    pub sessions: usize,
    /// Bytes of KV cache reserved by the open sessions (for the positions they hold, rounded
    /// up the way their buffers grow).
    pub reserved_bytes: u64,
    /// Bytes of KV cache all sessions together may reserve.
    pub budget_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a session half-updated in a way that matters
    // more than losing the server, so recover the guard.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SliceServer {
    /// A server of `slice` with no session open, admitting sessions within `limits`.
    pub fn new(slice: Arc<ModelSlice>, limits: SessionLimits) -> Self {
        Self {
            slice,
            budget: CacheQuota {
                limit: limits.cache_budget_bytes,
                used: AtomicU64::new(0),
            },
            limits,
            registry: Mutex::new(Registry {
                sessions: HashMap::new(),
                next_id: 1,
            }),
        }
    }

    /// The slice every session runs on.
    pub fn slice(&self) -> &Arc<ModelSlice> {
        &self.slice
    }

    /// The limits sessions are admitted under.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    /// Opens a session that may hold up to `max_len` positions, reserving cache for its first
    /// [`INITIAL_RESERVED_POSITIONS`] (more as it grows).
    pub fn open(&self, max_len: usize) -> Result<SessionId> {
        self.open_span(max_len, self.slice.range())
    }

    /// Opens a session that runs only blocks `span` (a contiguous part of the slice), reserving
    /// cache for those blocks only.
    pub fn open_span(&self, max_len: usize, span: hearth_core::BlockRange) -> Result<SessionId> {
        self.open_span_in(max_len, span, None)
    }

    /// [`Self::open_span`], with the session's reservation also counted against `quota` (shared
    /// with the owner's other sessions).
    pub fn open_span_in(
        &self,
        max_len: usize,
        span: hearth_core::BlockRange,
        quota: Option<Arc<CacheQuota>>,
    ) -> Result<SessionId> {
        let cache = self.slice.new_cache_for(span)?;
        if max_len == 0 || max_len > self.limits.max_len_cap {
            return Err(EngineError::MaxLenTooLarge {
                requested: max_len,
                limit: self.limits.max_len_cap,
            });
        }
        let bytes_per_position = self.slice.cache_bytes_per_token_for(span);
        let positions = max_len.min(INITIAL_RESERVED_POSITIONS);
        self.expire_idle(Instant::now());
        let mut reg = lock(&self.registry);
        if reg.sessions.len() >= self.limits.max_sessions {
            return Err(EngineError::TooManySessions(self.limits.max_sessions));
        }
        self.reserve(
            quota.as_deref(),
            bytes_per_position.saturating_mul(positions as u64),
        )?;
        let id = reg.next_id;
        reg.next_id += 1;
        reg.sessions.insert(
            id,
            Arc::new(Mutex::new(Session {
                cache,
                quota,
                max_len,
                bytes_per_position,
                reserved_positions: positions,
                opened: Instant::now(),
                longest: 0,
                last_progress: Instant::now(),
            })),
        );
        Ok(id)
    }

    /// Takes `bytes` more of `quota` (if any) and of the cache budget, or neither, and says
    /// how much is left.
    fn reserve(&self, quota: Option<&CacheQuota>, bytes: u64) -> Result<()> {
        if let Some(q) = quota {
            q.take(bytes)?;
        }
        self.budget.try_take(bytes).map_err(|reserved| {
            if let Some(q) = quota {
                q.give_back(bytes);
            }
            EngineError::CacheBudget {
                requested: bytes,
                available: self.budget.limit.saturating_sub(reserved),
                budget: self.budget.limit,
            }
        })
    }

    /// Gives back a closing session's reservation.
    fn release(&self, s: &Session) {
        let bytes = s.reserved_bytes();
        self.budget.give_back(bytes);
        if let Some(q) = &s.quota {
            q.give_back(bytes);
        }
    }

    /// Grows `s`'s reservation to cover `positions` (doubling, capped at its `max_len`).
    fn reserve_positions(&self, s: &mut Session, positions: usize) -> Result<()> {
        if positions <= s.reserved_positions {
            return Ok(());
        }
        let want = positions
            .next_power_of_two()
            .max(INITIAL_RESERVED_POSITIONS)
            .min(s.max_len)
            .max(positions);
        let extra = s
            .bytes_per_position
            .saturating_mul((want - s.reserved_positions) as u64);
        self.reserve(s.quota.as_deref(), extra)?;
        s.reserved_positions = want;
        Ok(())
    }

    fn session(&self, id: SessionId) -> Result<Arc<Mutex<Session>>> {
        lock(&self.registry)
            .sessions
            .get(&id)
            .cloned()
            .ok_or(EngineError::UnknownSession(id))
    }

    /// Runs one step: `hidden: [1, t, hidden]` at positions `start..start+t`.
    ///
    /// `start` may be below the cached length to replay or rewind (the cache is cut back), but not
    /// above it. Prefill is a step with many tokens, decode a step with one.
    pub fn step(&self, id: SessionId, start: usize, hidden: &Tensor) -> Result<Tensor> {
        let session = self.session(id)?;
        let mut s = lock(&session);
        let end = self.check_step(id, &s, start, hidden)?;
        self.reserve_positions(&mut s, end)?;
        s.cache.truncate(start);
        let out = self.slice.forward(hidden, &mut s.cache);
        if out.is_err() {
            // A failed step must not leave a half-written position behind.
            s.cache.truncate(start);
        }
        s.stepped(Instant::now());
        out
    }

    /// Runs the steps of several sessions, each `(id, start, hidden)` as in [`Self::step`], with
    /// one pass over the slice's weights for all of them ([`ModelSlice::forward_batch`]).
    /// Returns one result per step, in the order given.
    ///
    /// Each step is checked as `step` checks it; a step that fails its checks (unknown session,
    /// position gap, length limit, hidden shape, or a session that appears earlier in the batch)
    /// gets its own error and the others still run. If the batched pass itself fails,
    /// every cache is restored and the steps are run one by one, so each gets its own result.
    /// The sessions are locked in id order, so concurrent batches cannot deadlock.
    pub fn step_batch(&self, steps: Vec<(SessionId, usize, Tensor)>) -> Vec<Result<Tensor>> {
        let mut results: Vec<Option<Result<Tensor>>> = steps.iter().map(|_| None).collect();
        let mut seen = HashSet::with_capacity(steps.len());
        let mut found = Vec::with_capacity(steps.len());
        for (i, (id, _, _)) in steps.iter().enumerate() {
            if !seen.insert(*id) {
                results[i] = Some(Err(EngineError::DuplicateInBatch(*id)));
                continue;
            }
            match self.session(*id) {
                Ok(session) => found.push((*id, i, session)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        found.sort_unstable_by_key(|&(id, ..)| id);
        // Locked in id order (every batch does the same; `step` holds one lock at a time), and
        // never while holding the registry.
        let mut guards: Vec<(usize, MutexGuard<'_, Session>)> =
            found.iter().map(|(_, i, s)| (*i, lock(s))).collect();
        guards.retain_mut(|(i, s)| {
            let (id, start, hidden) = &steps[*i];
            let checked = self
                .check_step(*id, s, *start, hidden)
                .and_then(|end| self.reserve_positions(s, end));
            match checked {
                Ok(()) => {
                    s.cache.truncate(*start);
                    true
                }
                Err(e) => {
                    results[*i] = Some(Err(e));
                    false
                }
            }
        });

        let mut items: Vec<(&Tensor, &mut SliceCache)> = guards
            .iter_mut()
            .map(|(i, s)| (&steps[*i].2, &mut s.cache))
            .collect();
        let batch = self.slice.forward_batch(&mut items);
        drop(items);
        match batch {
            Ok(outs) => {
                for ((i, _), out) in guards.iter().zip(outs) {
                    results[*i] = Some(Ok(out));
                }
            }
            Err(e) if guards.len() == 1 => results[guards[0].0] = Some(Err(e)),
            Err(_) => {
                // `forward_batch` restored every cache; find out which step fails on its own.
                for (i, s) in guards.iter_mut() {
                    let (_, start, hidden) = &steps[*i];
                    let out = self.slice.forward(hidden, &mut s.cache);
                    if out.is_err() {
                        s.cache.truncate(*start);
                    }
                    results[*i] = Some(out);
                }
            }
        }
        let now = Instant::now();
        for (_, s) in guards.iter_mut() {
            s.stepped(now);
        }
        drop(guards);
        results
            .into_iter()
            .map(|r| r.expect("every step was given a result"))
            .collect()
    }

    /// The checks of a step of session `id` (locked as `s`), in the order `step` applies them;
    /// returns the session's length after the step.
    fn check_step(
        &self,
        id: SessionId,
        s: &Session,
        start: usize,
        hidden: &Tensor,
    ) -> Result<usize> {
        let cached = s.cache.len();
        if start > cached {
            return Err(EngineError::PositionGap {
                id,
                requested: start,
                cached,
            });
        }
        let t = crate::layers::check_hidden(hidden, self.slice.config().hidden_size)?;
        if start + t > s.max_len {
            return Err(EngineError::SessionFull {
                id,
                tokens: start + t,
                max_len: s.max_len,
            });
        }
        Ok(start + t)
    }

    /// Positions cached for a session.
    pub fn session_len(&self, id: SessionId) -> Result<usize> {
        let session = self.session(id)?;
        let len = lock(&session).cache.len();
        Ok(len)
    }

    /// Closes a session and releases its reservation.
    pub fn close(&self, id: SessionId) -> Result<()> {
        let mut reg = lock(&self.registry);
        let session = reg
            .sessions
            .remove(&id)
            .ok_or(EngineError::UnknownSession(id))?;
        self.release(&lock(&session));
        Ok(())
    }

    /// Closes every session that has not grown since before `now - idle_timeout`, or has been
    /// open longer than `max_lifetime`; returns how many.
    pub fn expire_idle(&self, now: Instant) -> usize {
        let mut reg = lock(&self.registry);
        let stale: Vec<SessionId> = reg
            .sessions
            .iter()
            .filter(|(_, s)| {
                // A session busy in a step is in use, not idle.
                s.try_lock()
                    .map(|s| s.expired(now, &self.limits))
                    .unwrap_or(false)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in &stale {
            if let Some(s) = reg.sessions.remove(id) {
                self.release(&lock(&s));
            }
        }
        stale.len()
    }

    /// Open sessions that grew within `window` before `now` (or are in a step now): the ones
    /// that load the server. Sessions held open without work are not load, so they must not
    /// make the server look busy (and turn clients away from it).
    pub fn active_sessions(&self, now: Instant, window: Duration) -> usize {
        let reg = lock(&self.registry);
        reg.sessions
            .values()
            .filter(|s| {
                s.try_lock()
                    .map(|s| {
                        now.saturating_duration_since(s.last_progress) <= window && s.longest > 0
                    })
                    .unwrap_or(true)
            })
            .count()
    }

    /// A snapshot of the open sessions and the cache they reserve.
    pub fn stats(&self) -> ServerStats {
        let reg = lock(&self.registry);
        ServerStats {
            sessions: reg.sessions.len(),
            reserved_bytes: self.budget.used(),
            budget_bytes: self.budget.limit,
        }
    }
}
