//! The part of a staging version's report about generated answers (`llm`
//! mode): the distribution of the similarity of its texts to production's,
//! and the output tokens each side's server reported.

use hdrhistogram::Histogram;

use super::compare::LlmFacts;

/// Similarities are kept in thousandths.
const SCALE: f64 = 1000.0;

pub struct LlmDetails {
    similarity: Histogram<u64>,
    primary_tokens: Histogram<u64>,
    shadow_tokens: Histogram<u64>,
}

impl LlmDetails {
    pub fn new() -> LlmDetails {
        let histogram = |high| {
            Histogram::new_with_bounds(1, high, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
        };
        LlmDetails {
            // Shifted by one: hdrhistogram's lowest value is 1.
            similarity: histogram(SCALE as u64 + 1),
            primary_tokens: histogram(10_000_000),
            shadow_tokens: histogram(10_000_000),
        }
    }

    pub fn record(&mut self, facts: &LlmFacts) {
        if let Some(similarity) = facts.similarity {
            let thousandths = (similarity.clamp(0.0, 1.0) * SCALE).round() as u64;
            self.similarity.saturating_record(thousandths + 1);
        }
        let tokens = [
            (&mut self.primary_tokens, facts.primary_tokens),
            (&mut self.shadow_tokens, facts.shadow_tokens),
        ];
        for (histogram, count) in tokens {
            if let Some(count) = count {
                histogram.saturating_record(count.max(1));
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let similarity = (!self.similarity.is_empty()).then(|| {
            let at = |q: f64| (self.similarity.value_at_quantile(q) - 1) as f64 / SCALE;
            serde_json::json!({ "p10": at(0.10), "p50": at(0.50), "p90": at(0.90),
                                "compared": self.similarity.len() })
        });
        let tokens = |h: &Histogram<u64>| {
            (!h.is_empty()).then(|| {
                serde_json::json!({ "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9),
                                    "mean": (h.mean() * 10.0).round() / 10.0 })
            })
        };
        serde_json::json!({
            "similarity": similarity,
            "output_tokens": { "primary": tokens(&self.primary_tokens), "shadow": tokens(&self.shadow_tokens) },
        })
    }
}
