//! The part of a staging version's report about generated answers (`llm`
//! mode): the distribution of the similarity of its texts to production's, and
//! per side (production, shadow) the output tokens its server reported, the
//! time to its first event (the first token of a streamed answer) and the time
//! per output token after it (to the last byte, over the tokens after the first).

use std::time::Duration;

use hdrhistogram::Histogram;

use super::compare::LlmFacts;

/// Similarities are kept in thousandths.
const SCALE: f64 = 1000.0;

pub struct LlmDetails {
    similarity: Histogram<u64>,
    /// Production's, then the shadow's.
    sides: [SideDetails; 2],
}

/// One side's histograms: tokens, and microseconds.
struct SideDetails {
    tokens: Histogram<u64>,
    time_to_first_token: Histogram<u64>,
    time_per_output_token: Histogram<u64>,
}

/// How one side's answer went.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub first_frame: Option<Duration>,
    pub whole: Duration,
    pub tokens: Option<u64>,
}

impl LlmDetails {
    pub fn new() -> LlmDetails {
        let histogram = |high| {
            Histogram::new_with_bounds(1, high, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
        };
        let side = || SideDetails {
            tokens: histogram(10_000_000),
            time_to_first_token: histogram(3_600_000_000),
            time_per_output_token: histogram(3_600_000_000),
        };
        LlmDetails {
            // Shifted by one: hdrhistogram's lowest value is 1.
            similarity: histogram(SCALE as u64 + 1),
            sides: [side(), side()],
        }
    }

    pub fn record(&mut self, facts: &LlmFacts, sides: [Side; 2]) {
        if let Some(similarity) = facts.similarity {
            let thousandths = (similarity.clamp(0.0, 1.0) * SCALE).round() as u64;
            self.similarity.saturating_record(thousandths + 1);
        }
        for (details, side) in self.sides.iter_mut().zip(sides) {
            details.record(side);
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let similarity = (!self.similarity.is_empty()).then(|| {
            let at = |q: f64| (self.similarity.value_at_quantile(q) - 1) as f64 / SCALE;
            serde_json::json!({ "p10": at(0.10), "p50": at(0.50), "p90": at(0.90),
                                "compared": self.similarity.len() })
        });
        let [primary, shadow] = &self.sides;
        let both = |f: fn(&SideDetails) -> serde_json::Value| serde_json::json!({ "primary": f(primary), "shadow": f(shadow) });
        serde_json::json!({
            "similarity": similarity,
            "output_tokens": both(|s| counts(&s.tokens)),
            "time_to_first_token_ms": both(|s| millis(&s.time_to_first_token)),
            "time_per_output_token_ms": both(|s| millis(&s.time_per_output_token)),
        })
    }
}

impl SideDetails {
    fn record(&mut self, side: Side) {
        if let Some(tokens) = side.tokens {
            self.tokens.saturating_record(tokens.max(1));
        }
        let Some(first) = side.first_frame else {
            return;
        };
        self.time_to_first_token.saturating_record(micros(first));
        if let Some(after_first) = side.tokens.filter(|t| *t > 1).map(|t| t - 1) {
            let rest = side.whole.saturating_sub(first);
            let per_token = rest / u32::try_from(after_first).unwrap_or(u32::MAX);
            self.time_per_output_token
                .saturating_record(micros(per_token));
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn counts(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::json!({ "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                        "mean": (h.mean() * 10.0).round() / 10.0 })
}

fn millis(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({ "p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99) })
}
