//! Noise cancellation, as Diffy does it: on a sample of requests the monolith is asked twice;
//! whatever differs between its own two answers (timestamps, generated ids, tokens) is noise for
//! that endpoint. A candidate difference at a noisy place is shown but not counted as a
//! regression.
//!
//! Places are generalised (`$.messages[*].createdAt`), so one noisy message teaches the whole
//! array. The model is per endpoint template (`GET /users/{id}`), bounded in endpoints and
//! places, and pure: the caller decides when to sample.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::diff::{compare, Difference, Exchange, Rules};

/// Bounds, so a pathological endpoint cannot grow the model without limit.
pub const MAX_ENDPOINTS: usize = 10_000;
pub const MAX_PLACES_PER_ENDPOINT: usize = 512;

#[derive(Debug, Clone, Default, Serialize)]
pub struct EndpointNoise {
    /// Legacy-vs-legacy comparisons seen.
    pub samples: u64,
    pub places: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NoiseModel {
    pub endpoints: BTreeMap<String, EndpointNoise>,
}

impl NoiseModel {
    /// Learns from two monolith answers to the same request; returns the places newly found noisy.
    pub fn learn(&mut self, endpoint: &str, first: &Exchange, second: &Exchange, rules: &Rules) -> Vec<String> {
        if !self.endpoints.contains_key(endpoint) && self.endpoints.len() >= MAX_ENDPOINTS {
            return Vec::new();
        }
        let e = self.endpoints.entry(endpoint.to_string()).or_default();
        e.samples += 1;
        let mut new = Vec::new();
        for d in compare(first, second, rules) {
            let key = d.place.key();
            if e.places.len() < MAX_PLACES_PER_ENDPOINT && e.places.insert(key.clone()) {
                new.push(key);
            }
        }
        new
    }

    pub fn is_noise(&self, endpoint: &str, d: &Difference) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| e.places.contains(&d.place.key()))
    }

    /// Splits a comparison into (regressions, noise).
    pub fn split(&self, endpoint: &str, diffs: Vec<Difference>) -> (Vec<Difference>, Vec<Difference>) {
        diffs.into_iter().partition(|d| !self.is_noise(endpoint, d))
    }
}
