//! The canary split: which requests a canary version answers.
//!
//! A request's sticky key (a header, a cookie, or an OpenAI-style call's
//! `user`, in that order) is hashed with the canary's salt
//! into one of 10,000 buckets; buckets below `weight * 100` go to the candidate.
//! The same key always lands in the same bucket while the canary lasts, so it sees
//! the same version at a given weight, and raising the weight only adds buckets:
//! no key moves from the candidate back to stable. Requests without a key get a
//! random bucket, so the share stays the configured weight either way.
//!
//! The hash is FNV-1a then a splitmix64 finalizer, written out here because it
//! must never change between builds: the salt is journaled and stickiness must
//! survive an upgrade.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, header};

use super::VersionRoute;
use crate::vocab::policy::StickyPolicy;
use crate::vocab::rollout::BUCKETS;
use crate::vocab::rollout::Canary;

/// A model's canary, resolved for the request path.
pub struct CanarySplit {
    pub route: Arc<VersionRoute>,
    threshold: u32,
    salt: u64,
    header: Option<HeaderName>,
    cookie: Option<String>,
    /// Whether an OpenAI-style call's `user` is a key, after the header and
    /// the cookie.
    openai_user: bool,
}

impl CanarySplit {
    pub fn new(route: Arc<VersionRoute>, canary: &Canary, sticky: &StickyPolicy) -> CanarySplit {
        CanarySplit {
            route,
            threshold: canary.threshold(),
            salt: canary.salt,
            header: sticky.header.as_ref().map(|h| h.name().clone()),
            cookie: sticky.cookie.clone(),
            openai_user: sticky.openai_user,
        }
    }

    /// Whether this request goes to the canary; `user` is an OpenAI-style
    /// call's end-user id, if it gives one.
    pub fn chooses_canary(&self, headers: &HeaderMap, user: Option<&[u8]>) -> bool {
        let key = self
            .sticky_key(headers)
            .or(user.filter(|_| self.openai_user));
        let bucket = match key {
            Some(key) => bucket(self.salt, key),
            None => rand::random_range(0..BUCKETS),
        };
        bucket < self.threshold
    }

    fn sticky_key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        if let Some(value) = self.header.as_ref().and_then(|name| headers.get(name)) {
            return Some(value.as_bytes());
        }
        let name = self.cookie.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (key == name.as_bytes()).then(|| &value[1..])
            })
    }
}

/// The bucket, in `0..BUCKETS`, of a sticky key under a salt.
pub fn bucket(salt: u64, key: &[u8]) -> u32 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for byte in salt.to_le_bytes().iter().chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // splitmix64: FNV's low bits are weak; mix before taking the remainder.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash % u64::from(BUCKETS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::rollout::weight_buckets;
    use proptest::prelude::*;

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Pinned values: a change here would move users between versions on upgrade.
        assert_eq!(bucket(0, b""), bucket(0, b""));
        assert_eq!(bucket(42, b"user-1"), 2289);
        assert_eq!(bucket(42, b"user-2"), 6538);
    }

    #[test]
    fn shares_over_many_keys_match_the_weight() {
        for (salt, weight) in [(1u64, 10.0), (2, 25.5), (3, 50.0), (4, 1.0)] {
            let threshold = weight_buckets(weight);
            let keys = 100_000;
            let chosen = (0..keys)
                .filter(|i| bucket(salt, format!("user-{i}").as_bytes()) < threshold)
                .count();
            let share = chosen as f64 * 100.0 / keys as f64;
            assert!(
                (share - weight).abs() < 0.5,
                "weight {weight}: share {share:.2}"
            );
        }
    }

    proptest! {
        #[test]
        fn raising_the_weight_never_moves_a_key_back_to_stable(salt: u64, key in ".{0,40}", w1 in 0.0f64..=100.0, w2 in 0.0f64..=100.0) {
            let (low, high) = if w1 <= w2 { (w1, w2) } else { (w2, w1) };
            let b = bucket(salt, key.as_bytes());
            if b < weight_buckets(low) {
                prop_assert!(b < weight_buckets(high));
            }
        }
    }
}
