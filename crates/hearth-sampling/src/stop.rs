//! Streaming, text-level stop-sequence detection.

/// Result of feeding one chunk of decoded text to a [`StopMatcher`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to show now. Never contains (any part of) a matched
    /// stop sequence; may be empty while a possible stop prefix is held back.
    pub emit: String,
    /// Whether a stop sequence has been hit. Once `true`, generation should end
    /// and every later [`StopMatcher::push`] returns an empty `emit`.
    pub stopped: bool,
}

/// Detects stop sequences in a stream of decoded text chunks.
///
/// Text is held back only while its tail could still be the beginning of a
/// stop sequence (at most `longest stop - 1` bytes), so output latency is
/// minimal. A stop sequence split across any number of chunks is found, the
/// text before it is emitted, and the stop text itself is never emitted.
///
/// When several stop sequences occur, the one that *starts* earliest wins; for
/// equal starts the one listed first wins (the emitted text is the same).
/// Empty stop strings are ignored (and rejected by
/// [`crate::SamplingParams::validate`]).
#[derive(Clone, Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Longest stop sequence, in bytes.
    max_len: usize,
    /// Text received but not yet emitted.
    held: String,
    /// Index into `stops` of the matched stop sequence, once stopped.
    matched: Option<usize>,
}

impl StopMatcher {
    /// A matcher for the given stop sequences (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let max_len = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            max_len,
            held: String::new(),
            matched: None,
        }
    }

    /// Feed the next chunk of decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.matched.is_some() {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);

        // Earliest-starting stop sequence anywhere in the unemitted text.
        let mut best: Option<(usize, usize)> = None;
        for (i, stop) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(stop.as_str()) {
                if best.is_none_or(|(p, _)| pos < p) {
                    best = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = best {
            self.held.truncate(pos);
            self.matched = Some(i);
            return StopOutcome {
                emit: std::mem::take(&mut self.held),
                stopped: true,
            };
        }

        let keep_from = self.holdback_start();
        let emit = self.held[..keep_from].to_string();
        self.held.drain(..keep_from);
        StopOutcome {
            emit,
            stopped: false,
        }
    }

    /// End of stream: return the held-back text (which turned out not to be a
    /// stop sequence). Empty if a stop sequence was hit.
    pub fn flush(self) -> String {
        if self.matched.is_some() {
            String::new()
        } else {
            self.held
        }
    }

    /// Whether a stop sequence has been hit.
    pub fn is_stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop sequence that was hit, if any.
    pub fn matched(&self) -> Option<&str> {
        self.matched
            .and_then(|i| self.stops.get(i))
            .map(String::as_str)
    }

    /// Start of the longest suffix of `held` that is a proper prefix of some
    /// stop sequence (`held.len()` if none).
    fn holdback_start(&self) -> usize {
        let len = self.held.len();
        let lo = len.saturating_sub(self.max_len.saturating_sub(1));
        (lo..len)
            .filter(|&s| self.held.is_char_boundary(s))
            .find(|&s| {
                let tail = &self.held[s..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(len)
    }
}
